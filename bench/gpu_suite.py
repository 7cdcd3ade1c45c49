"""One command for an H100/H200 that checks the 24 GB claim at full scale.

    python bench/gpu_suite.py --out-dir results        # on a CUDA machine, < 9 minutes
    python bench/gpu_suite.py --cpu-smoke              # the same code path on a small model, on the CPU

Builds the full-size SpatialEdit DiT (40 blocks, hidden 4096) from seeded random weights, block by
block directly in its run precision (a bf16 block exists only briefly on the GPU while it is
quantized), caps the process at 24 GiB with torch.cuda.set_per_process_memory_fraction to emulate
a 4090, and runs 1024x1024 denoising steps with CFG (batch 2, target + condition items) under the
planner's plan, with the text the conditioner really hands the DiT at that resolution (~1.1K tokens
at 1024²; the unconditional row shorter by the instruction and zero-padded, as in an edit).
Measured side by side in one run:
  - peak allocated and peak reserved vs the cap, and the allocator's retries (a retry means it had
    to free its cache to satisfy a request: the cap was nearly hit), for each configuration;
  - step time streamed (capped) vs all-resident (uncapped) for bf16, and nf4 capped vs bf16 resident;
  - with and without SpotEdit at 30% active tokens.
Each case runs on its own: one that fails (out of memory, refused, or any error) is recorded with its
error and traceback and the suite goes on. With --out-dir, gpu_suite.json and gpu_suite.txt are
rewritten (atomically) after every case, so a crash or a timeout loses at most the case running.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from lowmem.models.dit import SpatialEditDiT, build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.models.joint_attention import TextPadding
from lowmem.offload import BudgetError, apply_plan, format_bytes
from lowmem.planning import plan_for
from lowmem.planning.planner import INSTRUCTION_TOKENS, dit_text_tokens
from lowmem.spotedit import DiTSpotModel, fusion_alpha
from quantize import swap_linears
from quantize.schemes import DEFAULT_BACKEND, quantize_linear_weight

GIB = 2**30
CAP_BYTES = 24 * GIB
TIME_LIMIT_S = 9 * 60
SPOT_FRACTION = 0.3
SMOKE_CONFIG = DiTConfig(hidden_size=256, heads_num=4, mm_double_blocks_depth=4, text_states_dim=256, rope_dim_list=(16, 24, 24))


@dataclass
class Case:
    name: str
    precision: str  # bf16 | nf4
    capped: bool
    spot: bool


CASES = [
    Case("bf16 streamed, 24 GiB cap", "bf16", True, False),
    Case("bf16 streamed + SpotEdit 30%, 24 GiB cap", "bf16", True, True),
    Case("nf4, 24 GiB cap", "nf4", True, False),
    Case("nf4 + SpotEdit 30%, 24 GiB cap", "nf4", True, True),
    Case("bf16 all resident, uncapped", "bf16", False, False),
    Case("bf16 all resident + SpotEdit 30%, uncapped", "bf16", False, True),
]


def seeded_(tensor: torch.Tensor, seed: int, std: float) -> None:
    generator = torch.Generator(tensor.device).manual_seed(seed)
    tensor.normal_(0.0, std, generator=generator)


def fill_random(module: nn.Module, seed: int, device: torch.device, scheme: Optional[str]) -> None:
    """Give a meta-built module real seeded weights on `device`; quantized Linears are filled by
    quantizing a transient bf16 weight made on `device` (the bf16 copy is dropped at once)."""
    from quantize.linear import QuantizedLinear

    for index, (name, sub) in enumerate(module.named_modules()):
        if isinstance(sub, QuantizedLinear):
            weight = torch.empty(sub.out_features, sub.in_features, dtype=torch.bfloat16, device=device)
            seeded_(weight, seed * 1000 + index, sub.in_features**-0.5)
            for key, value in quantize_linear_weight(weight, scheme, sub.backend).items():
                sub._buffers[key] = value
            del weight
            if sub.bias is not None:
                sub.bias = nn.Parameter(torch.zeros(sub.out_features, dtype=torch.bfloat16, device=device), requires_grad=False)
    for name, param in list(module.named_parameters()):
        if param.is_meta:
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            leaf = name.rpartition(".")[2]
            value = torch.empty(param.shape, dtype=param.dtype, device=device)
            if leaf == "weight" and param.dim() == 1:
                value.fill_(1.0)  # RMSNorm scales
            elif param.dim() == 1:
                value.zero_()
            else:
                seeded_(value, seed * 1000 + zlib.crc32(name.encode()) % 997, param.shape[-1] ** -0.5 if param.dim() == 2 else 0.02)
            setattr(owner, leaf, nn.Parameter(value, requires_grad=False))


def build_model(config: DiTConfig, precision: str, device: torch.device, plan_budget: int, spot: bool,
                resolution: int, max_resident: Optional[int] = None) -> tuple[SpatialEditDiT, object, object]:
    """The DiT under the planner's plan: resident parts built on the device, streamed blocks built
    on the device and handed to the streamer (which packs them into pinned host memory)."""
    dit = build_dit(config, device="meta", dtype=torch.bfloat16)
    scheme = None if precision == "bf16" else precision
    if scheme:
        names = [f"double_blocks.{i}.{n}" for i, block in enumerate(dit.double_blocks)
                 for n, m in block.named_modules() if isinstance(m, nn.Linear)]
        swap_linears(dit, names, scheme, DEFAULT_BACKEND[scheme])
    plan = plan_for(dit, budget=plan_budget, resolution=resolution, quantization=precision, spotedit=spot,
                    device=device.type, host_ram="96GiB", max_resident_blocks=max_resident)
    for name, child in dit.named_children():
        if name != "double_blocks":
            fill_random(child, seed=zlib.crc32(name.encode()) % 1000, device=device, scheme=scheme)
    for i in plan.dit.resident_blocks:
        fill_random(dit.double_blocks[i], seed=i + 1, device=device, scheme=scheme)

    def source(index: int, block: nn.Module) -> None:
        fill_random(block, seed=index + 1, device=device, scheme=scheme)
        block.to("cpu")

    offloaded = apply_plan(dit, plan, device, source=source)
    return dit, plan, offloaded


def text_lengths(resolution: int) -> tuple[int, int]:
    """(unconditional, conditional) text tokens the conditioner hands the DiT for one image: the
    planner's count for the conditional prompt; the negative prompt lacks the instruction."""
    conditional = dit_text_tokens(resolution)
    return conditional - INSTRUCTION_TOKENS, conditional


def inputs(config: DiTConfig, resolution: int, device: torch.device):
    """[uncond ; cond] inputs of one CFG step: latents, text states (the uncond row zero-padded),
    the padding read once (as the pipeline does per edit) and the timesteps."""
    g = torch.Generator().manual_seed(0)
    side = resolution // 8
    latents = torch.randn(1, 2, config.in_channels, 1, side, side, generator=g).expand(2, -1, -1, -1, -1, -1)
    uncond, cond = text_lengths(resolution)
    text = torch.randn(2, cond, config.text_states_dim, generator=g)
    text[0, uncond:] = 0
    return (latents.to(device, torch.bfloat16), text.to(device, torch.bfloat16), TextPadding((cond - uncond, 0)),
            torch.tensor([600.0, 600.0], device=device))


def timed(step: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    step()  # warm-up: kernels, allocator, the streamer's first ring fill
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def run_case(case: Case, config: DiTConfig, resolution: int, device: torch.device, repeats: int) -> dict:
    """One configuration, measured; every tensor it made is freed before the next one is built."""
    cuda = device.type == "cuda"
    total = torch.cuda.get_device_properties(device).total_memory if cuda else 0
    cap = (CAP_BYTES if case.capped else total) if cuda else 0
    if cuda:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.reset_accumulated_memory_stats(device)  # num_alloc_retries counts this case only
    row = {"case": case.name, "precision": case.precision, "capped": case.capped, "spot": case.spot,
           "cap_bytes": cap if case.capped else None}
    try:
        measure(case, config, resolution, device, repeats, cap, row)
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    except BudgetError as exc:
        row["error"] = f"planner refused: {exc}"
    except Exception as exc:  # one broken case must not lose the others: record it and go on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row["traceback"] = traceback.format_exc()
    if cuda:  # measured for failed cases too: how far an out-of-memory case got
        row["peak_allocated"] = torch.cuda.max_memory_allocated(device)
        row["peak_reserved"] = torch.cuda.max_memory_reserved(device)
        row["alloc_retries"] = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
        row["within_cap"] = row["peak_reserved"] <= cap
    # The DiT and its streamer reference each other (dit.block_runner -> streamer -> blocks): only
    # the cycle collector frees the case's GPU memory, once `measure`'s frame is gone.
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def measure(case: Case, config: DiTConfig, resolution: int, device: torch.device, repeats: int, cap: int, row: dict) -> None:
    """Build the case's model under its plan and time its step; results go into `row`."""
    cuda = device.type == "cuda"
    # On the CPU smoke run there is no cap to emulate: "capped" cases stream half the blocks instead.
    budget = cap if cuda else 64 * GIB
    max_resident = None if cuda or not case.capped else config.mm_double_blocks_depth // 2
    dit, plan, offloaded = build_model(config, case.precision, device, budget, case.spot, resolution, max_resident)
    cache = None
    try:
        row.update(plan=plan.summary(), resident_blocks=len(plan.dit.resident_blocks), blocks=plan.dit.num_blocks)
        latents, text, padding, t = inputs(config, resolution, device)
        spot = DiTSpotModel(dit)
        with torch.inference_mode():
            if case.spot:
                cache = spot.new_cache(device if plan.spotedit.cache_placement != "host" else "cpu")
                spot.full(latents, t, text, padding, cache)
                n = (latents.shape[-1] // 2) * (latents.shape[-2] // 2)
                order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
                active = order[: round(SPOT_FRACTION * n)].sort().values  # on the host, as the loop hands it
                row["cache_bytes"], row["cache_on"] = cache.nbytes, str(cache.device)
                step = lambda: spot.partial(latents, t, text, padding, active, cache, fusion_alpha(0.5))  # noqa: E731
            else:
                step = lambda: dit(latents, t, text, padding)  # noqa: E731
            row["step_s"] = timed(step, device, repeats)
        row["bytes_streamed_per_step"] = plan.dit.streamed_bytes_per_step
    finally:
        if cache is not None:
            cache.release()
        offloaded.close()


def ratios(rows: list[dict]) -> dict[str, float]:
    by = {r["case"]: r.get("step_s") for r in rows}

    def ratio(a: str, b: str) -> Optional[float]:
        return by[a] / by[b] if by.get(a) and by.get(b) else None

    return {
        "bf16 streamed (capped) / bf16 resident (uncapped)": ratio(CASES[0].name, CASES[4].name),
        "nf4 (capped) / bf16 resident (uncapped)": ratio(CASES[2].name, CASES[4].name),
        "SpotEdit speed-up, bf16 streamed capped": ratio(CASES[0].name, CASES[1].name),
        "SpotEdit speed-up, nf4 capped": ratio(CASES[2].name, CASES[3].name),
        "SpotEdit speed-up, bf16 resident": ratio(CASES[4].name, CASES[5].name),
    }


def table(result: dict) -> str:
    lines = [f"{'case':<44} {'resident':>9} {'step s':>8} {'peak alloc':>11} {'peak resv':>11} {'retries':>7} "
             f"{'cap':>9}  note"]
    for r in result["rows"]:
        resident = f"{r.get('resident_blocks', '-')}/{r.get('blocks', '-')}"
        step = f"{r['step_s']:.3f}" if "step_s" in r else "-"
        allocated = format_bytes(r["peak_allocated"]) if "peak_allocated" in r else "-"
        reserved = format_bytes(r["peak_reserved"]) if "peak_reserved" in r else "-"
        cap = format_bytes(r["cap_bytes"]) if r.get("cap_bytes") else "none" if r.get("capped") is False else "-"
        note = r.get("error", "reserved within cap" if r.get("within_cap") else "")
        lines.append(f"{r['case']:<44} {resident:>9} {step:>8} {allocated:>11} {reserved:>11} "
                     f"{r.get('alloc_retries', '-'):>7} {cap:>9}  {note}")
    lines.append("")
    for name, value in result["ratios"].items():
        lines.append(f"{name:<52} {'-' if value is None else f'{value:.2f}x'}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, help="write gpu_suite.json and gpu_suite.txt here")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per case (after one warm-up)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the same code on a small model on the CPU")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        device, config, resolution = torch.device("cpu"), SMOKE_CONFIG, 64
    elif not torch.cuda.is_available():
        print("gpu_suite needs a CUDA GPU (an H100/H200 to emulate a 24 GB card at full scale) and found none; "
              "run it there, or use --cpu-smoke to exercise the code path on a small model", file=sys.stderr)
        return 2
    else:
        device, config, resolution = torch.device("cuda"), FULL_DIT_CONFIG, args.resolution
    started = time.perf_counter()
    uncond, cond = text_lengths(resolution)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": {"hidden": config.hidden_size, "blocks": config.mm_double_blocks_depth, "resolution": resolution,
                   "text_tokens": {"unconditional": uncond, "conditional": cond}, "batch": 2,
                   "spot_fraction": SPOT_FRACTION},
        "rows": [],
    }
    for case in CASES:
        if time.perf_counter() - started > TIME_LIMIT_S - 60:
            result["rows"].append({"case": case.name, "error": "skipped: the 9 minute limit is near"})
        else:
            print(f"running: {case.name}", file=sys.stderr, flush=True)
            result["rows"].append(run_case(case, config, resolution, device, args.repeats))
        result["ratios"], result["seconds"] = ratios(result["rows"]), time.perf_counter() - started
        if args.out_dir:
            write_results(args.out_dir, result)
    print(table(result))
    return 0


def write_results(out_dir: Path, result: dict) -> None:
    """gpu_suite.json and gpu_suite.txt as they stand, each written aside and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_suite.json", json.dumps(result, indent=2)), ("gpu_suite.txt", table(result) + "\n")):
        part = out_dir / f"{name}.part"
        part.write_text(text)
        os.replace(part, out_dir / name)


if __name__ == "__main__":
    sys.exit(main())
