"""`lowmem plan`: the offload plan for a memory budget, as a table (the full 16B model, built on meta)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from lowmem.cli import option_types
from lowmem.common import validation
from lowmem.common.validation import cli_type
from lowmem.edits import COMPUTE_CHOICES

HELP = ("show how a run would use a memory budget: what stays resident, what streams, the memory estimate "
        "(with the traced peaks behind it) and, for a preset, the predicted step time of each compute mode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lowmem.planning.presets import PRECISIONS, available_presets

    parser.add_argument("--budget", type=option_types.budget, help="compute-device memory budget, e.g. 24GB, 24GiB, 512MB")
    parser.add_argument("--preset", type=option_types.preset, help=f"hardware preset: {', '.join(available_presets())} (or a .toml path)")
    parser.add_argument("--resolution", type=cli_type(validation.resolution, "resolution"), help="working resolution, N x N pixels (default: 1024 or the preset's)")
    parser.add_argument("--quantization", choices=PRECISIONS, help="DiT weight precision (default: bf16 or the preset's)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="compute device kind (default: cuda or the preset's)")
    parser.add_argument("--host-ram", help="host RAM the runtime may hold/pin, e.g. 64GB")
    parser.add_argument("--spot", dest="spot", action="store_true", default=None, help="plan for SpotEdit K/V caches")
    parser.add_argument("--no-spot", dest="spot", action="store_false", help="no SpotEdit caches")
    parser.add_argument("--guidance", type=cli_type(validation.guidance, "guidance"), default=5.0,
                        help="guidance scale the edit will use (default 5.0); 1 or less plans a batch of one")
    parser.add_argument("--steps", type=cli_type(validation.steps, "steps"), default=30,
                        help="denoising steps to price (default: %(default)s; SpatialEdit-Bench runs 50)")
    parser.add_argument("--model", type=Path, help="plan for this model folder's DiT config instead of the full 16B one")
    parser.add_argument("--compute", choices=COMPUTE_CHOICES, default="auto",
                        help="the DiT's GEMMs: bf16, or W8A8 in fp8 / int8 on cards that run them (default auto: "
                             "the fastest the preset's card runs; bf16 without a preset's figures)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from lowmem.models.dit import build_dit
    from lowmem.models.dit_config import FULL_DIT_CONFIG
    from lowmem.planning import time_model
    from lowmem.planning.compute_choice import choose_compute
    from lowmem.planning.planner import plan_for
    from lowmem.planning.presets import load_preset

    config = FULL_DIT_CONFIG
    if args.model is not None:
        from lowmem.models.dit_loading import read_dit_config
        from lowmem.models.layout import open_model_folder

        config = read_dit_config(open_model_folder(args.model))
    model = build_dit(config, device="meta")
    preset = load_preset(args.preset) if args.preset else None
    # Nothing runs here: a GPU is planned for on meta (its modes are the preset's), the CPU as itself.
    cpu = (args.device or (preset.device if preset else "cuda")) == "cpu"
    where = "cpu" if cpu else "meta"
    compute, why = choose_compute(args.compute, where, preset, config.hidden_size)
    auto = compute if args.compute == "auto" else choose_compute("auto", where, preset, config.hidden_size)[0]
    plan = plan_for(model, args.budget, args.resolution, args.quantization, args.spot, preset=preset,
                    device=args.device, host_ram=args.host_ram, guidance=args.guidance, compute=compute)
    timed = time_model.has_device_figures(preset) and plan.device == "cuda"
    steps = time_model.predict(plan, preset, config, compute) if timed else []
    modes = time_model.mode_times(plan, preset, config, args.steps) if timed else []
    if args.json:
        data = plan.to_dict()
        data["compute_choice"] = {"requested": args.compute, "mode": compute, "auto": auto, "reason": why}
        data["time_model"] = [{**asdict(s), "seconds": s.seconds} for s in steps]
        data["compute_modes"] = [{**asdict(m), "auto": m.mode == auto, "chosen": m.mode == compute} for m in modes]
        print(json.dumps(data, indent=2))
        return 0
    print(plan.format_table())
    print(f"compute: {why}")
    if steps:
        print(time_model.format_steps(steps, preset, args.steps))
        print(time_model.format_modes(modes, preset, auto=auto, chosen=compute))
    else:
        print("time model: give a --preset with device figures (bf16_tflops, sustained, h2d_gbps) to predict step times")
    return 0
