"""`lowmem doctor`: what this machine has, and which precision/plan of SpatialEdit-16B fits on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lowmem.common import validation
from lowmem.common.paths import check_output_path, write_text_atomic
from lowmem.common.validation import cli_type
from lowmem.errors import LowmemError

if TYPE_CHECKING:
    from lowmem.common.machine import MachineInfo

HELP = "show this machine (GPU, memory, disk, libraries) and which plan for SpatialEdit-16B fits here"
PRECISIONS = ("bf16", "int8", "fp8", "nf4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=cli_type(validation.resolution, "resolution"), default=1024, help="resolution to plan for (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the findings as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")


def fitting_plans(machine: MachineInfo, resolution: int) -> list[dict]:
    """One row per precision: the plan the planner makes for this machine's memory, or why none fits."""
    from lowmem.models.dit_config import FULL_DIT_CONFIG
    from lowmem.planning import plan_for

    device = "cuda" if machine.has_gpu else "cpu"
    budget = machine.gpu_total_bytes if machine.has_gpu else machine.host_available_bytes
    rows = []
    for precision in PRECISIONS:
        try:
            plan = plan_for(FULL_DIT_CONFIG, budget=budget, resolution=resolution, quantization=precision,
                            spotedit=True, device=device, host_ram=machine.host_available_bytes)
            rows.append({"precision": precision, "fits": True, "plan": plan.summary(),
                         "streams": plan.streams, "peak_bytes": plan.estimate.peak})
        except LowmemError as exc:
            rows.append({"precision": precision, "fits": False, "plan": str(exc), "streams": None, "peak_bytes": None})
    return rows


def recommendation(rows: list[dict]) -> str:
    """Prefer the most precise setting that fits without streaming, then the most precise that fits at all."""
    for want_resident in (True, False):
        for row in rows:
            if row["fits"] and (not row["streams"] or not want_resident):
                how = "all resident" if not row["streams"] else "with block streaming"
                return f"use --quantization {row['precision']} ({how})" if row["precision"] != "bf16" else f"bf16 runs here ({how})"
    return "nothing fits at this resolution: lower --resolution, or add memory"


# The release's sizes as the project's design notes and the model cards give them (the DiT ~33 GB in
# bf16, Qwen3-VL-8B ~17.5 GB, the VAE ~0.5 GB): a guide for this machine; `lowmem download` itself
# checks the exact sizes of the Hub's listing before it fetches anything.
RELEASE_BYTES = {"dit": 32.5e9, "qwen": 17.5e9, "vae": 0.5e9}


def download_space() -> str:
    """What `lowmem download` needs where: the Hugging Face cache and the model folder, with free space."""
    from lowmem.common.disk_space import format_bytes, free_bytes
    from lowmem.hub.fetch import cache_dir
    from lowmem.hub.models import models_home

    def free(path):
        return format_bytes(free_bytes(path))

    cache, home = cache_dir(), models_home()
    return (f"download   the Hugging Face cache ({cache}, {free(cache)} free) takes "
            f"{format_bytes(int(sum(RELEASE_BYTES.values())))}; the model folder ({home}, {free(home)} free) takes "
            f"{format_bytes(int(RELEASE_BYTES['dit']))} more in bf16 (the rest hard-linked), or ~17 GB with --quantize nf4 "
            "(plus the bf16 DiT while it is made)")


def compute_modes(device: str) -> dict:
    """The GEMM modes this machine's compute device runs, and the one `--compute auto` takes there for
    SpatialEdit-16B."""
    from lowmem.models.dit_config import FULL_DIT_CONFIG
    from lowmem.planning.compute_choice import choose_compute
    from quantize.compute import supported_modes

    return {"runs": list(supported_modes(device)),
            "auto": choose_compute("auto", device, width=FULL_DIT_CONFIG.hidden_size)[0]}


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output_path(args.json, args.overwrite)
    from lowmem.common.machine import inspect_machine
    from lowmem.offload import format_bytes

    machine = inspect_machine()
    if machine.has_gpu:
        print(f"GPU        {machine.gpu_name}: {format_bytes(machine.gpu_total_bytes)} total, {format_bytes(machine.gpu_free_bytes)} free")
    else:
        print("GPU        none found: the CPU is the compute device and disk the storage tier (slow, but the same code path)")
    print(f"host RAM   {format_bytes(machine.host_ram_bytes)} total, {format_bytes(machine.host_available_bytes)} available")
    print(f"disk free  {format_bytes(machine.disk_free_bytes)} (a quantized model folder needs about 17 GB in nf4, 27 GB in int8 or fp8)")
    print(download_space())
    print("libraries  " + ", ".join(f"{k} {v}" for k, v in machine.versions.items()))
    compute = compute_modes("cuda" if machine.has_gpu else "cpu")
    print(f"compute    {', '.join(compute['runs'])} (--compute auto: {compute['auto']})")
    rows = fitting_plans(machine, args.resolution)
    print(f"\nSpatialEdit-16B at {args.resolution}x{args.resolution} on this machine:")
    for row in rows:
        print(f"  {row['precision']:<5} {'fits' if row['fits'] else 'no  '}  {row['plan']}")
    advice = recommendation(rows)
    print(f"\nrecommendation: {advice}")
    if args.json:
        write_text_atomic(args.json, json.dumps({"machine": machine.to_dict(), "compute": compute, "plans": rows,
                                                 "recommendation": advice}, indent=2))
    return 0
