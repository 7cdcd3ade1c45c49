"""`lowmem demo`: the whole flow on the shipped trained tiny model (or on --model), for a first run.

quantize (nf4) -> plan for a small budget (half the DiT blocks streamed) -> a geometric edit with
SpotEdit on a held-out rendered scene -> input | output | edited-region mask saved side by side,
with the run report. The tiny model was trained in this repository (`lowmem train-tiny`) on scenes
like the default one; on other images it does what it can.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional

from PIL import Image

from lowmem.cli import option_types
from lowmem import instructions
from lowmem.common.disk_space import out_of_space_is_an_error
from lowmem.common.images import encode_image
from lowmem.common.paths import check_output_path, check_writable_folder, made_folder, same_file, write_files_atomic
from lowmem.edits import COMPUTE_CHOICES, COMPUTE_HELP, add_edit_arguments, edit_spec, instruction_from_args
from lowmem.errors import OutputPathError
from lowmem.instructions import EditInstruction
from lowmem.tiny.scenes import HELD_OUT_SEEDS, OBJECT_NAME, EditPair, render_pair
from lowmem.tiny.trained_model import TINY_SPOT_DILATION

HELP = "quantize, plan and run a geometric edit end to end (on the shipped trained tiny model when no --model is given)"
TINY_RESOLUTION = 64
# The default input and edit: a scene no training run renders (training seeds stay below
# HELD_OUT_SEEDS), scaled up 1.5x: scale and zoom are the edits the tiny model gets right most
# often (README, "A tiny SpatialEdit trained here"), and this scene is one it gets right.
DEMO_SEED, DEMO_KIND = HELD_OUT_SEEDS, "scale"
DEFAULT_ROTATION = "front left"  # the edit when --image is given without one
EDIT_FLAGS = ("instruction", "rotate", "move_box", "scale", "camera_yaw", "camera_pitch", "zoom")
OUTPUT_NAMES = ("input.png", "output.png", "spot_mask.png", "side_by_side.png", "report.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model folder (default: the shipped trained tiny model)")
    parser.add_argument("--image", type=Path, help="input image (default: a rendered scene the tiny model never saw)")
    parser.add_argument("--out-dir", type=Path, default=Path("lowmem-demo"),
                        help=f"where results go: {', '.join(OUTPUT_NAMES)} (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace those files when --out-dir already has them")
    parser.add_argument("--quantization", choices=("nf4", "int8", "fp8", "none"), default="nf4", help="quantize first (default: %(default)s)")
    parser.add_argument("--compute", choices=COMPUTE_CHOICES, default="auto", help=COMPUTE_HELP)
    parser.add_argument("--budget", type=option_types.budget, help="memory budget to plan for (default: 256MB on the CPU, 2GB on a GPU: the tiny model's)")
    add_edit_arguments(parser)
    # Sampled as the tiny model was trained: guidance 1 (its unconditional branch saw 10% of the rows).
    parser.set_defaults(steps=16, guidance=1.0, resolution=TINY_RESOLUTION, object=OBJECT_NAME, spot="on",
                        spot_dilation=TINY_SPOT_DILATION)


def default_edit(args: argparse.Namespace, scene: Optional[EditPair]) -> EditInstruction:
    """The edit when no edit flag is given: the demo scene's own, or a rotation of another image
    (the scene's move box, say, is in the scene's pixels)."""
    return scene.instruction if scene is not None else instructions.rotate(args.object, DEFAULT_ROTATION)


def side_by_side(*images: Image.Image) -> Image.Image:
    """The images in one row, each resized to the first one's height."""
    height = images[0].height
    resized = [im.convert("RGB").resize((round(im.width * height / im.height), height)) for im in images]
    row = Image.new("RGB", (sum(im.width for im in resized), height), (255, 255, 255))
    x = 0
    for im in resized:
        row.paste(im, (x, 0))
        x += im.width
    return row


def check_out_dir(args: argparse.Namespace) -> None:
    """Before any work: the demo's files may be written into --out-dir, and none of them is the input
    image or (without --overwrite) a file already there."""
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise OutputPathError(f"--out-dir {args.out_dir} is a file; give a folder")
    existing = next(p for p in (args.out_dir, *args.out_dir.parents) if p.exists())
    check_writable_folder(existing)  # where the missing folders of --out-dir will be made
    for name in OUTPUT_NAMES:
        target = args.out_dir / name
        if args.image is not None and same_file(args.image, target):
            raise OutputPathError(f"--image {args.image} would be replaced by the demo's {name}; choose another --out-dir")
        if args.out_dir.is_dir():  # a missing --out-dir is created, with its parents
            check_output_path(target, args.overwrite)


def save_outputs(out_dir: Path, images: dict[str, Image.Image], report: str) -> None:
    """All of the demo's files or none: each is written to its temporary name first and the names
    are swapped in only when every one was written (a full disk replaces none of them), in `out_dir`,
    made only now, and removed again when it is left empty."""
    files = {name: encode_image(picture) for name, picture in images.items()}
    files["report.json"] = report.encode("utf-8")
    needed = sum(map(len, files.values()))
    with made_folder(out_dir), out_of_space_is_an_error(out_dir, needed, what="writing the demo's files"):
        write_files_atomic({out_dir / name: data for name, data in files.items()})


def run(args: argparse.Namespace) -> int:
    from lowmem.common.images import open_image
    from lowmem.models.layout import open_model_folder

    # Everything that needs no torch first: a mistake is reported in a fraction of a second.
    check_out_dir(args)
    scene = None if args.image else render_pair(DEMO_SEED, DEMO_KIND, size=TINY_RESOLUTION)
    edit_given = any(getattr(args, flag) not in (None, False) for flag in EDIT_FLAGS)
    spec = edit_spec(args, instruction_from_args(args) if edit_given else default_edit(args, scene))
    if args.model is not None:
        open_model_folder(args.model)
    image = open_image(args.image) if args.image else scene.source.image
    spec.instruction.check_box_inside(image.size)  # --move-box is in the input image's pixels

    from lowmem.models.dit_loading import read_dit_config
    from lowmem.pipeline import SpatialEditPipeline, default_device
    from lowmem.tiny.random_model import tiny_model_budget
    from lowmem.tiny.trained_model import trained_tiny_model

    with tempfile.TemporaryDirectory(prefix="lowmem-demo-") as scratch:
        source = model = args.model or trained_tiny_model()
        print(f"model: {model}")
        if args.quantization != "none":
            from quantize import convert

            print(f"\n== quantize to {args.quantization}")
            model = Path(scratch) / f"model-{args.quantization}"
            convert(source, model, scheme=args.quantization)
        # Stream half the DiT blocks so the demo shows the streamer at work even on the tiny model.
        half = read_dit_config(open_model_folder(model)).mm_double_blocks_depth // 2
        budget = args.budget or tiny_model_budget(default_device())
        pipe = SpatialEditPipeline.from_folder(model, memory_budget=budget, resolution=args.resolution,
                                               spot=args.spot, max_resident_blocks=half,
                                               guidance=args.guidance, compute=args.compute)
        print("\n".join(["", "== plan", *pipe.choices, pipe.offload.plan.format_table()]))
        print(f"\n== edit: {spec.instruction.text}")
        result = pipe.edit(image, resolution=args.resolution, **spec.edit_arguments(pipe.spot))
    mask = result.spot_mask or Image.new("L", result.image.size, 255)
    outputs = {
        "input.png": result.input_image,
        "output.png": result.image,
        "spot_mask.png": mask,
        "side_by_side.png": side_by_side(result.input_image, result.image, mask),
    }
    save_outputs(args.out_dir, outputs, result.report.to_json())
    print(f"\n== report\n{result.report.format()}")
    print(f"\nsaved {', '.join(outputs)} and report.json in {args.out_dir}/ (input | output | regenerated region)")
    return 0
