"""Step time of the block streamer against fully resident blocks, and against diffusers' group offloading.

For each block size (DiT hidden width) and plan (all resident / half resident / all streamed) it
times one DiT forward (a denoising step, CFG batch 2) and reports
  * slowdown      = streamed step time / resident step time
  * overlap eff.  = streamed step time / max(compute-only, copy-only time); 1.0 means the copies are
                    completely hidden behind compute, 2.0 means none of them are (fully serial).
compute-only is the resident step; copy-only is the time to bring every streamed block of one step
into a slot with no compute. On CPU the storage tier is disk (per-block files read with preadv into
the slot, synchronous); on CUDA it is pinned host RAM on a side stream. The peer is diffusers'
`apply_group_offloading` (block level, one block per group, use_stream on CUDA; on CPU it reads
per-group files from disk), on the same blocks.

    python bench/streaming.py [--fast] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.offload import apply_plan, format_bytes
from lowmem.planning import plan_for


def make_dit(hidden: int, depth: int, dtype: torch.dtype) -> torch.nn.Module:
    config = DiTConfig(hidden_size=hidden, heads_num=max(1, hidden // 64), mm_double_blocks_depth=depth,
                       text_states_dim=64, rope_dim_list=(16, 24, 24))
    torch.manual_seed(0)
    dit = build_dit(config, device="cpu", dtype=torch.float32)
    for p in dit.parameters():
        p.data.normal_(0, 0.02)
    return dit.to(dtype)


def make_inputs(latent: int, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 2, 16, 1, latent, latent, generator=g).to(device, dtype)
    return latents, torch.tensor([500.0, 500.0], device=device), torch.randn(2, 32, 64, generator=g).to(device, dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(runners: dict, inputs, device, steps: int) -> dict:
    """Median seconds per step of each runner, the runners taking turns step by step, so drift of
    the machine (frequency, other processes, page cache) hits every runner alike."""
    times = {name: [] for name in runners}
    with torch.inference_mode():
        for model in runners.values():
            model(*inputs)  # warm-up (first ring fill, allocator)
        sync(device)
        for _ in range(steps):
            for name, model in runners.items():
                start = time.perf_counter()
                model(*inputs)
                sync(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_only(streamer, device, steps: int) -> float:
    if not streamer.streamed:
        return 0.0
    streamer.reset()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        for _ in streamer.streamed:
            streamer._issue(streamer.k)
            streamer.k += 1
    streamer.reset()  # waits for the disk tier's reader thread
    sync(device)
    return (time.perf_counter() - start) / steps


def diffusers_offloaded(dit, device, scratch: Path):
    """A copy of `dit` under diffusers' group offloading, or (None, why) when it cannot run here."""
    try:
        from diffusers.hooks import apply_group_offloading
    except ImportError as exc:
        return None, f"diffusers hooks unavailable: {exc}"
    try:
        model = copy.deepcopy(dit)
        kwargs = dict(onload_device=device, offload_type="block_level", num_blocks_per_group=1)
        if device.type == "cuda":
            kwargs.update(offload_device=torch.device("cpu"), use_stream=True)
        else:
            kwargs.update(offload_device=torch.device("cpu"), offload_to_disk_path=str(scratch))
        apply_group_offloading(model, **kwargs)
        return model, None
    except Exception as exc:  # noqa: BLE001 - the peer is reported as not runnable, with why
        return None, f"{type(exc).__name__}: {exc}"[:160]


def run(fast: bool, device: torch.device) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # one thread: OpenMP spin-waits make shared cores too noisy to compare
    sizes = [(256, 8, 8)] if fast else [(256, 12, 16), (512, 12, 16), (1024, 8, 16)]
    steps = 3 if fast else 7
    storage = "pinned" if device.type == "cuda" else "disk"
    rows = []
    for hidden, depth, latent in sizes:
        base = make_dit(hidden, depth, dtype)
        inputs = make_inputs(latent, device, dtype)
        block_bytes = sum(p.numel() * p.element_size() for p in base.double_blocks[0].parameters())
        plans = {"half resident": dict(max_resident_blocks=depth // 2), "all streamed": dict(max_resident_blocks=0)}
        with tempfile.TemporaryDirectory() as scratch:
            runners = {"all resident": copy.deepcopy(base).to(device)}
            offloaded = {}
            for name, kw in plans.items():
                dit = copy.deepcopy(base)
                plan = plan_for(dit, "1TB", 256, device=device.type, storage=storage, slots=3, prefetch_depth=2, **kw)
                offloaded[name] = apply_plan(dit, plan, device, disk_dir=Path(scratch) / name.replace(" ", "-"))
                runners[name] = dit
            peer, why = diffusers_offloaded(base, device, Path(scratch) / "diffusers")
            if peer is not None:
                runners["diffusers group"] = peer
            step = time_interleaved(runners, inputs, device, steps)
            compute = step["all resident"]
            rows.append(dict(hidden=hidden, blocks=depth, block_bytes=block_bytes, plan="all resident", runner="lowmem",
                             step_s=compute, compute_s=compute, copy_s=0.0, slowdown=1.0, overlap=1.0))
            for name, off in offloaded.items():
                copy_s = copy_only(off.streamer, device, steps)
                off.close()
                rows.append(dict(hidden=hidden, blocks=depth, block_bytes=block_bytes, plan=name, runner="lowmem",
                                 step_s=step[name], compute_s=compute, copy_s=copy_s, slowdown=step[name] / compute,
                                 overlap=step[name] / max(compute, copy_s)))
            peer_s = step.get("diffusers group")
            rows.append(dict(hidden=hidden, blocks=depth, block_bytes=block_bytes, plan="all streamed",
                             runner="diffusers group", step_s=peer_s, compute_s=compute, copy_s=None,
                             slowdown=(peer_s / compute) if peer_s else None, overlap=None, note=why))
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "storage": storage, "steps": steps,
            "torch_threads": torch.get_num_threads(), "rows": rows}


def table(result: dict) -> str:
    head = f"{'hidden':>6} {'blocks':>6} {'block':>10} {'plan':<14} {'runner':<16} {'step s':>8} {'copy s':>8} {'slowdown':>8} {'overlap':>7}"
    lines = [f"streaming bench on {result['device']} ({result['dtype']}, storage {result['storage']})", head]
    for r in result["rows"]:
        f = lambda v, spec: format(v, spec) if v is not None else "n/a"  # noqa: E731
        lines.append(f"{r['hidden']:>6} {r['blocks']:>6} {format_bytes(r['block_bytes']):>10} {r['plan']:<14} "
                     f"{r['runner']:<16} {f(r['step_s'], '8.4f'):>8} {f(r['copy_s'], '8.4f'):>8} "
                     f"{f(r['slowdown'], '8.2f'):>8} {f(r['overlap'], '7.2f'):>7}" + (f"  ({r['note']})" if r.get("note") else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="one small size, three steps (for tests)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    results = [run(args.fast, torch.device(args.device))]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print("\n\n".join(table(r) for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
