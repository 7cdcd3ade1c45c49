"""SpotEdit benchmark: DiT forward time and activation memory against the active-token fraction.

Builds a medium random SpatialEdit DiT (float32, CPU by default), records the K/V caches with one
full forward, then times the full forward and SpotEdit partial forwards with 10/30/60/100% of the
target tokens active, all in this one run (CFG batch of 2, one condition image). Activation memory
is the peak of bytes allocated during the forward, from torch.profiler's memory events (weights
and the K/V caches exist before the forward and are not counted; the cache size is printed apart).

    python bench/spotedit.py            # hidden 768, 4 blocks, 64x64 latent grid
    python bench/spotedit.py --fast     # a small model, seconds
    python bench/spotedit.py --out spot.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.spotedit import DiTSpotModel, fusion_alpha

FRACTIONS = (0.1, 0.3, 0.6, 1.0)


def make_model(hidden: int, blocks: int, heads: int, device: str) -> torch.nn.Module:
    head_dim = hidden // heads
    t_dim = head_dim // 4 // 2 * 2
    rest = head_dim - t_dim
    rope = (t_dim, rest // 2 // 2 * 2, rest - rest // 2 // 2 * 2)
    config = DiTConfig(hidden_size=hidden, heads_num=heads, mm_double_blocks_depth=blocks, text_states_dim=256, rope_dim_list=rope)
    torch.manual_seed(0)
    model = build_dit(config, device=device, dtype=torch.float32)
    for name, p in model.named_parameters():  # default init leaves modulation at zero; make it matter
        if name.endswith("modulate_table"):
            p.normal_(std=0.1)
    return model


def peak_forward_bytes(fn) -> int:
    """Peak bytes allocated (and not yet freed) while `fn` runs, from the profiler's memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def interleaved_best(fns: list, repeats: int) -> list[float]:
    """Best-of-`repeats` seconds of each fn, the repeats interleaved across fns so that load from
    other processes hits every mode alike (after one warm-up call each)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> dict:
    torch.set_grad_enabled(False)
    model = make_model(args.hidden, args.blocks, args.heads, args.device)
    spot = DiTSpotModel(model)
    g = torch.Generator().manual_seed(1)
    h = w = args.latent
    latents = torch.randn(1, 2, 16, 1, h, w, generator=g).expand(2, -1, -1, -1, -1, -1).contiguous().to(args.device)
    text = torch.randn(2, args.text_tokens, 256, generator=g).to(args.device)
    mask = torch.ones(2, args.text_tokens, dtype=torch.bool, device=args.device)
    t = torch.tensor([500.0, 500.0], device=args.device)
    n = (h // 2) * (w // 2)
    cache = spot.new_cache()
    spot.full(latents, t, text, mask, cache)
    order = torch.randperm(n, generator=g).to(args.device)  # which tokens are edited does not change the cost

    def full():
        return spot.full(latents, t, text, mask)

    fns = [full]
    rows = [{"mode": "full", "active_fraction": 1.0, "image_queries": 2 * n}]
    for fraction in args.fractions:
        active = order[: max(1, round(fraction * n))].sort().values

        def partial(active=active):
            return spot.partial(latents, t, text, mask, active, cache, fusion_alpha(0.5))

        fns.append(partial)
        rows.append({"mode": "spot", "active_fraction": fraction, "image_queries": int(active.numel())})
    for row, fn, seconds in zip(rows, fns, interleaved_best(fns, args.repeats)):
        row["seconds"], row["peak_activation_bytes"] = seconds, peak_forward_bytes(fn)
    base_s, base_mem = rows[0]["seconds"], rows[0]["peak_activation_bytes"]
    for row in rows:
        row["speedup"] = base_s / row["seconds"]
        row["memory_ratio"] = row["peak_activation_bytes"] / base_mem
    return {
        "config": {"hidden": args.hidden, "blocks": args.blocks, "heads": args.heads, "latent": [h, w], "tokens_per_item": n,
                   "batch": 2, "text_tokens": args.text_tokens, "device": args.device, "dtype": "float32",
                   "threads": torch.get_num_threads(), "repeats": args.repeats},
        "cache_bytes": cache.nbytes,
        "rows": rows,
    }


def table(result: dict) -> str:
    c = result["config"]
    lines = [
        f"SpotEdit DiT forward: hidden {c['hidden']}, {c['blocks']} blocks, latent {c['latent'][0]}x{c['latent'][1]} "
        f"({c['tokens_per_item']} target + {c['tokens_per_item']} condition tokens), batch {c['batch']}, {c['device']} "
        f"{c['dtype']}, {c['threads']} threads, best of {c['repeats']}; K/V cache {result['cache_bytes'] / 2**20:.1f} MiB",
        f"{'mode':<5} {'active':>7} {'img queries':>11} {'forward ms':>11} {'speed-up':>9} {'peak act MiB':>13} {'vs full':>8}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['mode']:<5} {r['active_fraction'] * 100:6.0f}% {r['image_queries']:>11} {r['seconds'] * 1e3:11.1f} "
                     f"{r['speedup']:8.2f}x {r['peak_activation_bytes'] / 2**20:13.1f} {r['memory_ratio']:8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small model and grid, a smoke run in seconds")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--latent", type=int, default=64, help="latent grid side (tokens: (N/2)^2 per image)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.fast:
        args.hidden, args.heads, args.blocks, args.latent, args.text_tokens, args.repeats = 128, 4, 2, 16, 8, 3
    result = run(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
