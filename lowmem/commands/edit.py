"""`lowmem edit`: one geometric edit of one image with a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from lowmem.commands.edit_args import add_edit_arguments, instruction_from_args, spot_from_args
from lowmem.images import load_image, save_image_atomic
from lowmem.paths import check_output_path, write_text_atomic
from lowmem.pipeline import SpatialEditPipeline, default_device

if TYPE_CHECKING:
    from lowmem.parallel import CFGParallel

HELP = "edit an image with a SpatialEdit model folder (original or quantized)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (official layout or `lowmem quantize` output)")
    parser.add_argument("--image", required=True, type=Path, help="input image")
    parser.add_argument("--out", required=True, type=Path, help="output image path")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--report", type=Path, help="also write the run report as JSON here")
    parser.add_argument("--device", help="compute device (default: cuda when available, else cpu)")
    parser.add_argument("--budget", help="memory budget of the compute device, e.g. 24GB, or 'auto' for what is free now: "
                                         "plan what stays resident and what streams (default on a GPU: auto)")
    parser.add_argument("--preset", help="hardware preset from offload_plans/ (e.g. rtx4090-24gb)")
    parser.add_argument("--quantization", choices=("int8", "nf4"),
                        help="quantize an original model folder while loading (a `lowmem quantize` folder needs no flag)")
    parser.add_argument("--parallel", choices=("cfg",),
                        help="cfg: the unconditional and conditional branches on two processes (GPUs) exchanging "
                             "velocities each step; launch with `torchrun --nproc-per-node 2 -m lowmem edit ...`")
    add_edit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.parallel != "cfg":
        return edit_one(args)
    from lowmem.parallel import cfg_parallel

    with cfg_parallel(args.device, args.guidance) as cfg:
        return edit_one(args, cfg)


def edit_one(args: argparse.Namespace, cfg: Optional["CFGParallel"] = None) -> int:
    """One edit; with `cfg`, this process's CFG row of it (rank 0 prints and saves)."""
    instruction = instruction_from_args(args)
    check_output_path(args.out, args.overwrite)  # fail before any heavy work
    if args.report:
        check_output_path(args.report, args.overwrite)
    image = load_image(args.image)
    device = cfg.device if cfg else torch.device(args.device) if args.device else default_device()
    leader = cfg is None or cfg.rank == 0
    if args.budget is None and args.preset is None and device.type == "cuda":
        args.budget = "auto"  # on a GPU, plan for the memory that is free instead of failing with out-of-memory
    pipe = SpatialEditPipeline.from_folder(args.model, device=device, memory_budget=args.budget, preset=args.preset,
                                           resolution=args.resolution, quantization=args.quantization, spot=bool(args.spot),
                                           guidance=1.0 if cfg else args.guidance)  # a CFG-parallel rank runs one row
    if cfg:
        pipe.cfg_strategy = cfg
    if pipe.offload is not None and leader:
        print(f"plan: {pipe.offload.plan.summary()}")
    result = pipe.edit(image, instruction, steps=args.steps, guidance=args.guidance, seed=args.seed, resolution=args.resolution,
                       spot=spot_from_args(args), progress=leader)
    if not leader:
        return 0
    save_image_atomic(result.image, args.out, overwrite=args.overwrite)
    if args.report:
        write_text_atomic(args.report, result.report.to_json())
    print(result.report.format())
    print(f"saved {args.out}")
    return 0
