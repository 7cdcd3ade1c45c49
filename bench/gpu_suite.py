"""The GPU proof: whole edits of the full-size model on one card, under the plan a preset makes.

    bash bench/gpu_run.sh                              # on a lent H100/H200: wheels, pytest -m cuda, this suite
    python bench/gpu_suite.py --out-dir DIR            # this suite alone, on a CUDA machine
    python bench/gpu_suite.py --cpu --out-dir DIR      # the same code on the tiny configuration (CI runs it)

Each case (a precision, with or without SpotEdit; on the CPU "bf16" runs in float32, as the pipeline
does there) builds SpatialEdit at full size with seeded random
weights made on the card (bench/random_models.py: the 16B DiT, Qwen3-VL-8B, the Wan2.1 VAE), plans it
as `lowmem edit --preset rtx4090-24gb --quantization P [--spot]` does, caps the process at what that
card leaves PyTorch (the preset's budget less the CUDA context this device really takes, read at the
start), and runs two whole edits in a row through SpatialEditPipeline: the second meets the pipeline
as a batch job does, the conditioner evicted and brought back, the DiT's part placed again.

Measured per phase: the planned device bytes beside the allocator's peak (allocated; reserved plus
the context is what the card would hold). Per edit: the denoise time beside the time model's
prediction for this device, the bytes the streamers really copied, and the synchronizing CUDA calls
of the second denoise (torch.cuda.set_sync_debug_mode "warn").

A case FAILS when it runs out of memory, when the planner refuses it, when a phase held more device
memory than its plan, or on any error; the suite then exits 1. The reference case is bf16 with every
weight resident and no cap. gpu_suite.json and gpu_suite.txt are rewritten after every case.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image
from random_models import (
    FULL,
    TINY,
    Sizes,
    block_filler,
    fill_dit_outside_blocks,
    random_conditioner,
    random_dit,
    random_vae,
    tiny_qwen3vl_folder,
)

from lowmem import instructions
from lowmem.offload import BudgetError, OffloadRuntime, format_bytes
from lowmem.pipeline import SpatialEditPipeline, default_dtype
from lowmem.pipeline.planned_load import plan_models
from lowmem.planning import load_preset, time_model
from lowmem.planning.preflight import DTYPE_PRECISION
from lowmem.planning.presets import Preset
from lowmem.spotedit import SpotConfig
from quantize.plan import use_compute
from quantize.schemes import SCHEMES

PRESET = "rtx4090-24gb"
PHASES = ("encode prompt", "encode image", "denoise", "decode")
EDITS = 2
GUIDANCE = 5.0
# Device name -> the preset whose figures (bf16 TFLOP/s, host-to-device GB/s) the time model uses for it.
# The H200 computes as the H100 (same tensor cores and clocks); only its memory is larger and faster.
TIMING_PRESETS = {"H100": "h100-80gb", "H200": "h100-80gb", "A100": "a100-80gb"}


@dataclass(frozen=True)
class Case:
    precision: str
    spot: bool
    capped: bool = True  # on the emulated card (on the CPU: streamed from disk); else all resident, no cap
    compute: str = "bf16"  # the DiT's GEMM mode (quantize.compute); int8 / fp8 read their own scheme's codes

    @property
    def name(self) -> str:
        spot = " + SpotEdit" if self.spot else ""
        gemm = f" ({self.compute} W8A8)" if self.compute != "bf16" else ""
        return f"{self.precision}{gemm}{spot}, {'capped' if self.capped else 'all resident, uncapped'}"


# Most telling first, so that a time limit drops the least: the 24 GB default (nf4 + SpotEdit), the
# reference, the W8A8 modes the plan's auto picks on a 4090 (int8) and an H100 (int8 = fp8 peaks),
# bf16 streamed, then the rest.
CASES = [Case("nf4", True), Case("nf4", False), Case("bf16", False, capped=False),
         Case("int8", True, compute="int8"), Case("fp8", True, compute="fp8"), Case("bf16", False),
         Case("bf16", True), Case("int8", False), Case("int8", True)]


@dataclass
class Setup:
    """What every case of one run shares."""

    device: torch.device
    sizes: Sizes
    resolution: int
    steps: int
    folder: Path  # the tiny Qwen3-VL folder (tokenizer and processor)
    preset: Optional[Preset]  # the card emulated (None on the CPU)
    timing: Optional[Preset]  # this device's figures, for the time model's prediction
    context: int = 0  # device bytes the CUDA context takes outside PyTorch's allocator
    total: int = 0  # device bytes in all
    image: Optional[Image.Image] = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return default_dtype(self.device)


class MeasuredRuntime(OffloadRuntime):
    """The runtime, recording the synchronizing CUDA calls made while the DiT denoises."""

    syncs: tuple[str, ...] = ()

    @contextmanager
    def denoising(self, spot: bool = False) -> Iterator[None]:
        with super().denoising(spot), sync_warnings(self.device) as seen:
            yield
        self.syncs = tuple(seen)


@contextmanager
def sync_warnings(device: torch.device) -> Iterator[list[str]]:
    """The messages of CUDA calls that make the host wait for the device, while the block runs."""
    seen: list[str] = []
    if device.type != "cuda":
        yield seen
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode("default")
    seen.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))


def cuda_context(device: torch.device) -> tuple[int, int]:
    """(context bytes, total bytes): what the device holds outside PyTorch's allocator once CUDA and
    cuBLAS are initialised (read, not assumed), and its total memory."""
    x = torch.ones(256, 256, device=device)
    (x @ x).sum().item()
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device), total


def test_image(resolution: int) -> Image.Image:
    ramp = np.linspace(0, 255, resolution, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def planning_budget(case: Case, setup: Setup) -> tuple[Optional[int], Optional[str], Optional[int]]:
    """(memory budget, preset, most resident DiT blocks) as `lowmem edit` would pass them. On the CPU
    there is no card to emulate: a capped case streams every DiT block from disk instead."""
    if setup.cuda:
        return (None, PRESET, None) if case.capped else (setup.total, None, None)
    return (256 * 2**20, None, 0) if case.capped else (2**36, None, None)


def cap(setup: Setup, case: Optional[Case]) -> Optional[int]:
    """Limit PyTorch's allocator to what the emulated card leaves it (None: the whole device)."""
    if not setup.cuda:
        return None
    limit = setup.preset.budget - setup.context if case is not None and case.capped else setup.total
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / setup.total), setup.device)
    return limit


def compact(setup: Setup) -> None:
    gc.collect()  # the DiT and its streamer, the conditioner and its hooks, reference each other
    if setup.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(setup.device)
        torch.cuda.reset_accumulated_memory_stats(setup.device)


def measure(case: Case, setup: Setup, row: dict) -> None:
    """Build the case's models on the device, plan, run two edits; results go into `row`."""
    device, dtype = setup.device, setup.dtype
    dit = random_dit(setup.sizes.dit, case.precision, dtype)
    use_compute(dit, case.compute)
    conditioner = random_conditioner(setup.sizes, setup.folder, case.precision, device, dtype)
    vae = random_vae(setup.sizes, device)
    budget, preset, most_resident = planning_budget(case, setup)
    # What the weights really are, as the loader tells the planner: unquantized ones in the compute dtype.
    precision = case.precision if case.precision in SCHEMES else DTYPE_PRECISION[dtype]
    plan = plan_models(dit, vae, conditioner, device, budget, preset, setup.resolution, precision, case.spot,
                       most_resident, GUIDANCE, case.compute)
    row.update(plan=plan.summary(), resident_blocks=len(plan.dit.resident_blocks), blocks=plan.dit.num_blocks,
               planned={phase: plan.estimate.phase_total(phase) for phase in PHASES if phase in plan.estimate.phases},
               planned_streamed_per_step=plan.dit.streamed_bytes_per_step)
    fill = block_filler(device, dtype)
    fill_dit_outside_blocks(dit, device, dtype)
    for index in plan.dit.resident_blocks:
        fill(index, dit.double_blocks[index])
    pipe = SpatialEditPipeline(dit, vae, conditioner, device, dtype, case.compute)
    pipe.offload = MeasuredRuntime(plan, dit, vae, conditioner, device, block_source=fill)
    del dit, vae, conditioner
    try:
        compact(setup)
        row["cap_bytes"] = cap(setup, case)
        row["edits"] = [one_edit(pipe, case, setup) for _ in range(EDITS)]
        if setup.timing is not None:
            steps = time_model.predict(plan, setup.timing, setup.sizes.dit)
            row["denoise_predicted_s"] = time_model.denoise_seconds(steps, setup.steps)[2]
    finally:
        pipe.close()
    judge(row, setup)


def one_edit(pipe: SpatialEditPipeline, case: Case, setup: Setup) -> dict:
    runtime = pipe.offload
    streamed = streamed_bytes(runtime)
    result = pipe.edit(setup.image, instructions.rotate("chair", "front left"), steps=setup.steps, guidance=GUIDANCE,
                       seed=0, resolution=setup.resolution, progress=False, spot=SpotConfig() if case.spot else None)
    report = result.report
    return {"seconds": {k: round(v, 3) for k, v in report.phase_seconds.items()},
            "allocated": report.phase_peak_allocated, "reserved": report.phase_peak_reserved,
            "bytes_streamed": streamed_bytes(runtime) - streamed, "syncs_in_denoise": len(runtime.syncs),
            "sync_examples": sorted(set(runtime.syncs))[:3],
            "spot_active_fraction": report.extra.get("spot_active_fraction"),
            "alloc_retries": torch.cuda.memory_stats(setup.device).get("num_alloc_retries", 0) if setup.cuda else 0}


def streamed_bytes(runtime: OffloadRuntime) -> int:
    vlm = runtime.vlm.stats()["bytes_streamed"] if hasattr(runtime.vlm, "stats") else 0
    return runtime.dit.stats()["bytes_streamed"] + vlm


def judge(row: dict, setup: Setup) -> None:
    """Per phase, the most the card held (reserved + context) against the plan; a phase over its
    plan fails the case."""
    edits = row.get("edits", [])
    row["phases"] = {}
    for phase, planned in row.get("planned", {}).items():
        allocated = max((e["allocated"].get(phase, 0) for e in edits), default=0)
        reserved = max((e["reserved"].get(phase, 0) for e in edits), default=0)
        held = reserved + setup.context if setup.cuda else None
        row["phases"][phase] = {"planned": planned, "allocated": allocated, "reserved": reserved, "held": held}
        if held is not None and held > planned and "failed" not in row:
            row["failed"] = (f"{phase} held {format_bytes(held)} of device memory (reserved {format_bytes(reserved)} + "
                             f"context {format_bytes(setup.context)}), over its plan of {format_bytes(planned)}")
    if edits:
        last = edits[-1]
        row["denoise_measured_s"] = last["seconds"].get("denoise")
        row["streamed_per_step"] = last["bytes_streamed"] // setup.steps


def run_case(case: Case, setup: Setup) -> dict:
    """One case, measured; one that fails is recorded with its reason and the suite goes on."""
    row = {"case": case.name, "precision": case.precision, "spot": case.spot, "capped": case.capped,
           "compute": case.compute}
    started = time.perf_counter()
    try:
        compact(setup)
        cap(setup, None)  # built without the cap: the models are made on the card, then placed by the plan
        measure(case, setup, row)
    except torch.OutOfMemoryError as exc:
        row["failed"] = f"out of memory: {str(exc).splitlines()[0]}"
    except BudgetError as exc:
        row["failed"] = f"planner refused: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken case must not lose the others: record it and go on
        row["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row["traceback"] = traceback.format_exc()
    finally:
        compact(setup)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def table(result: dict) -> str:
    lines = [f"{result['device']}, capped = {result['preset'] or 'streamed from disk'}, CUDA context {format_bytes(result['context_bytes'])}, "
             f"PYTORCH_CUDA_ALLOC_CONF={result['alloc_conf'] or '-'}, {result['resolution']}px, {result['steps']} steps, "
             f"guidance {GUIDANCE:g}, {EDITS} edits per case", ""]
    lines.append(f"{'case':<40} {'resident':>9} {'denoise s':>9} {'predicted':>9} {'streamed/step':>13} "
                 f"{'planned/step':>12} {'syncs':>5}  result")
    for r in result["rows"]:
        resident = f"{r.get('resident_blocks', '-')}/{r.get('blocks', '-')}"
        measured = f"{r['denoise_measured_s']:.2f}" if r.get("denoise_measured_s") is not None else "-"
        predicted = f"{r['denoise_predicted_s']:.2f}" if r.get("denoise_predicted_s") is not None else "-"
        streamed = format_bytes(r["streamed_per_step"]) if "streamed_per_step" in r else "-"
        planned = format_bytes(r["planned_streamed_per_step"]) if "planned_streamed_per_step" in r else "-"
        syncs = r["edits"][-1]["syncs_in_denoise"] if r.get("edits") else "-"
        lines.append(f"{r['case']:<40} {resident:>9} {measured:>9} {predicted:>9} {streamed:>13} {planned:>12} "
                     f"{syncs:>5}  {'FAILED: ' + r['failed'] if 'failed' in r else 'ok'}")
    lines += ["", f"{'case':<40} {'phase':<14} {'planned':>10} {'allocated':>10} {'reserved':>10} {'held':>10}"]
    for r in result["rows"]:
        for phase, p in r.get("phases", {}).items():
            held = format_bytes(p["held"]) if p["held"] is not None else "-"
            lines.append(f"{r['case']:<40} {phase:<14} {format_bytes(p['planned']):>10} {format_bytes(p['allocated']):>10} "
                         f"{format_bytes(p['reserved']):>10} {held:>10}")
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, result: dict) -> None:
    """NAME.json and NAME.txt as they stand, each written aside and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, text in ((f"{name}.json", json.dumps(result, indent=2)), (f"{name}.txt", table(result) + "\n")):
        part = out_dir / f".{file}.part"
        part.write_text(text)
        os.replace(part, out_dir / file)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, help="write NAME.json and NAME.txt here")
    parser.add_argument("--name", default="gpu_suite", help="file name stem of the results (default: %(default)s)")
    parser.add_argument("--cases", help="run only the cases whose name contains this text")
    parser.add_argument("--steps", type=int, default=6, help="denoising steps per edit (default: %(default)s)")
    parser.add_argument("--time-limit", type=float, default=420, help="seconds; cases that would start later are "
                                                                      "skipped (default: %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="the same code on the tiny configuration, on the CPU")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_suite needs a CUDA GPU (an H100/H200 emulates a 24 GB card at full size) and found none; run it "
              "there, or use --cpu for the tiny configuration", file=sys.stderr)
        return 2
    cases = [c for c in CASES if args.cases is None or args.cases in c.name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as scratch:
        setup = make_setup(args, Path(scratch))
        result = {"device": torch.cuda.get_device_name(setup.device) if setup.cuda else "cpu",
                  "torch": torch.__version__, "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                  "context_bytes": setup.context, "total_bytes": setup.total, "preset": PRESET if setup.cuda else None,
                  "resolution": setup.resolution, "steps": setup.steps, "rows": []}
        for case in cases:
            if time.perf_counter() - started > args.time_limit:
                result["rows"].append({"case": case.name, "skipped": "the time limit was reached"})
            else:
                print(f"running: {case.name}", file=sys.stderr, flush=True)
                result["rows"].append(run_case(case, setup))
            result["seconds"] = round(time.perf_counter() - started, 1)
            if args.out_dir:
                write_results(args.out_dir, args.name, result)
    print(table(result))
    return 1 if any("failed" in r for r in result["rows"]) else 0


def make_setup(args: argparse.Namespace, scratch: Path) -> Setup:
    if args.cpu:
        device, sizes, resolution, preset, timing = torch.device("cpu"), TINY, 64, None, None
    else:
        device, sizes, resolution = torch.device("cuda"), FULL, 1024
        preset = load_preset(PRESET)
        name = torch.cuda.get_device_name(device)
        timing = next((load_preset(p) for key, p in TIMING_PRESETS.items() if key in name), None)
    setup = Setup(device, sizes, resolution, args.steps, tiny_qwen3vl_folder(scratch / "qwen3vl"), preset, timing)
    if setup.cuda:
        setup.context, setup.total = cuda_context(device)
    setup.image = test_image(resolution)
    return setup


if __name__ == "__main__":
    sys.exit(main())
