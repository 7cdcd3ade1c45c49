"""`lowmem edit`: one geometric edit of one image with a model folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lowmem.cli import option_types
from lowmem.common.paths import check_distinct, check_output_path
from lowmem.cli.quantize import SCHEME_CHOICES
from lowmem.edits import COMPUTE_CHOICES, COMPUTE_HELP, add_edit_arguments, edit_spec
from lowmem.errors import OutputPathError

if TYPE_CHECKING:
    from PIL import Image

    from lowmem.edits import EditSpec
    from lowmem.parallel import CFGParallel

HELP = "edit an image with a SpatialEdit model folder (original or quantized)"
REPORT_KEYS = {"device", "steps", "phase_seconds"}  # what marks a file as an earlier run report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (official layout or `lowmem quantize` output)")
    parser.add_argument("--image", required=True, type=Path, help="input image")
    parser.add_argument("--out", required=True, type=Path, help="output image path")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (and --report, when that file is an earlier run report)")
    parser.add_argument("--report", type=Path, help="also write the run report as JSON here")
    parser.add_argument("--device", type=option_types.device, help="compute device (default: cuda when available, else cpu)")
    parser.add_argument("--budget", type=option_types.budget, help="memory budget of the compute device, e.g. 24GB, or 'auto' for what is free now: "
                                         "plan what stays resident and what streams (default on a GPU: auto)")
    parser.add_argument("--preset", type=option_types.preset, help="hardware preset from offload_plans/ (e.g. rtx4090-24gb)")
    parser.add_argument("--quantization", choices=SCHEME_CHOICES,
                        help="quantize an original model folder while loading (a `lowmem quantize` folder needs no flag)")
    parser.add_argument("--compute", choices=COMPUTE_CHOICES, default="auto", help=COMPUTE_HELP)
    parser.add_argument("--parallel", choices=("cfg",),
                        help="cfg: the unconditional and conditional branches on two processes (GPUs) exchanging "
                             "velocities each step; launch with `torchrun --nproc-per-node 2 -m lowmem edit ...`")
    add_edit_arguments(parser)


def is_run_report(path: Path) -> bool:
    """Whether `path` holds a run report an earlier `lowmem edit --report` wrote (and nothing else)."""
    try:
        if path.stat().st_size > 1 << 20:
            return False
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and REPORT_KEYS <= data.keys()


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: --out and --report are writable, distinct from each other and from the input,
    and --overwrite replaces only --out (or an earlier run report)."""
    check_distinct(**{"--image": args.image, "--out": args.out, "--report": args.report})
    check_output_path(args.out, args.overwrite)
    if args.report is not None:
        if args.report.is_file() and not is_run_report(args.report):
            raise OutputPathError(f"--report {args.report} exists and is not a lowmem run report; "
                                  "choose a new file name (--overwrite never replaces other files)")
        check_output_path(args.report, args.overwrite)


def run(args: argparse.Namespace) -> int:
    from lowmem.common.images import open_image
    from lowmem.models.layout import open_model_folder

    # Everything that needs no torch first: a mistake is reported in a fraction of a second.
    spec = edit_spec(args)
    check_outputs(args)
    open_model_folder(args.model)
    image = open_image(args.image)  # read as RGB by the pipeline, which says what that changed
    spec.instruction.check_box_inside(image.size)  # --move-box is in the input image's pixels
    if args.parallel != "cfg":
        return edit_one(args, spec, image)
    from lowmem.parallel import cfg_parallel

    with cfg_parallel(args.device, args.guidance) as cfg:
        return edit_one(args, spec, image, cfg)


def edit_one(args: argparse.Namespace, spec: "EditSpec", image: "Image.Image", cfg: Optional["CFGParallel"] = None) -> int:
    """One edit; with `cfg`, this process's CFG row of it (rank 0 prints and saves)."""
    from lowmem.common import validation

    device = cfg.device if cfg else validation.device(args.device) if args.device else None  # imports torch only
    from lowmem.common.images import encode_image
    from lowmem.common.paths import write_files_atomic
    from lowmem.pipeline import SpatialEditPipeline, default_device

    device = device or default_device()
    leader = cfg is None or cfg.rank == 0
    if args.preset is not None and device.type == "cpu":
        from lowmem.planning.presets import load_preset

        preset = load_preset(args.preset)
        if preset.device == "cuda":  # its budget is GPU memory: it says nothing about this machine's RAM
            print(f"notice: preset {preset.name} is for a CUDA GPU and this run is on the CPU, so it is ignored; "
                  "use --preset cpu-16gb or --budget to bound RAM", file=sys.stderr)
            args.preset = None
    if args.budget is None and args.preset is None and device.type == "cuda":
        args.budget = "auto"  # on a GPU, plan for the memory that is free instead of failing with out-of-memory
    pipe = SpatialEditPipeline.from_folder(args.model, device=device, memory_budget=args.budget, preset=args.preset,
                                           resolution=args.resolution, quantization=args.quantization,
                                           spot=args.spot, compute=args.compute,
                                           guidance=1.0 if cfg else args.guidance)  # a CFG-parallel rank runs one row
    if cfg:
        pipe.cfg_strategy = cfg
    if leader:
        for choice in pipe.choices:
            print(choice)
        if pipe.offload is not None:
            print(f"plan: {pipe.offload.plan.summary()}")
    result = pipe.edit(image, resolution=args.resolution, progress=leader, **spec.edit_arguments(pipe.spot))
    if not leader:
        return 0
    outputs = {args.out: encode_image(result.image, args.out.suffix or ".png")}
    if args.report:
        outputs[args.report] = result.report.to_json().encode("utf-8")
    write_files_atomic(outputs)  # the image and its report, or neither (checked writable before the edit ran)
    print(result.report.format())
    print(f"saved {args.out}")
    return 0
