"""`lowmem demo`: the whole flow on the embedded tiny model (or on --model), for a first run."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lowmem.commands.edit_args import add_edit_arguments, instruction_from_args, spot_from_args
from lowmem.images import load_image, save_image_atomic
from lowmem.pipeline import SpatialEditPipeline
from lowmem.testing import write_tiny_model

HELP = "run a geometric edit end to end on the embedded tiny model (no download needed)"
TINY_RESOLUTION = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model folder (default: write the tiny seeded model)")
    parser.add_argument("--image", type=Path, help="input image (default: a generated test scene)")
    parser.add_argument("--out-dir", type=Path, default=Path("lowmem-demo"), help="where results go (default: %(default)s)")
    add_edit_arguments(parser)
    parser.set_defaults(steps=8, resolution=TINY_RESOLUTION, rotate="front left")


def test_scene(size: int = TINY_RESOLUTION) -> Image.Image:
    """A plain background with one coloured object, so the edit region is easy to see."""
    canvas = np.full((size, size, 3), (200, 210, 225), dtype=np.uint8)
    lo, hi = size // 3, 2 * size // 3
    canvas[lo:hi, lo:hi] = (180, 60, 40)
    return Image.fromarray(canvas)


def run(args: argparse.Namespace) -> int:
    if args.instruction or args.move_box or args.scale or args.camera_yaw is not None or args.camera_pitch is not None or args.zoom:
        args.rotate = None  # an explicit edit flag replaces the default rotation
    instruction = instruction_from_args(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    image = load_image(args.image) if args.image else test_scene()
    with tempfile.TemporaryDirectory(prefix="lowmem-tiny-") as scratch:
        model = args.model or write_tiny_model(Path(scratch) / "tiny-spatialedit")
        print(f"model: {model}")
        pipe = SpatialEditPipeline.from_folder(model)
        result = pipe.edit(image, instruction, steps=args.steps, guidance=args.guidance, seed=args.seed, resolution=args.resolution,
                           spot=spot_from_args(args))
    save_image_atomic(result.input_image, args.out_dir / "input.png", overwrite=True)
    save_image_atomic(result.image, args.out_dir / "output.png", overwrite=True)
    if result.spot_mask is not None:
        save_image_atomic(result.spot_mask, args.out_dir / "spot_mask.png", overwrite=True)
    (args.out_dir / "report.json").write_text(result.report.to_json())
    print(f"instruction: {instruction.text}")
    print(result.report.format())
    print(f"saved {args.out_dir / 'input.png'} and {args.out_dir / 'output.png'}")
    return 0
