"""SpotEdit benchmark: DiT forward time and activation memory against the active-token fraction,
and the speed-up with SpotEdit's selector counted.

For each latent size, builds a random SpatialEdit DiT (float32, CPU by default), records the K/V
caches with one full forward, then times the full forward and SpotEdit partial forwards with
10/30/60/100% of the target tokens active, and the selector's token score on a random Wan2.1 VAE
(real width): as before (the VAE's own 3-D stages in float32, `WanVAE.decoder_features`) and as now
(`ScoreStages`: one-frame 2-D stages in the compute dtype), all interleaved in this one run (CFG
batch of 2, one condition image). Speed-ups, full step over:
  dit        the partial step alone;
  +sel old   partial step + the old selector, run after every step (what the loop did);
  +sel       partial step + the new selector at the official schedule's rate (once per spot
             segment: SpotConfig().selection_steps over --steps steps), amortised per spot step;
  run        the whole --steps loop: full steps (initial, resets) + spot steps + selector calls.
Activation memory is the peak of bytes allocated during the forward, from torch.profiler's memory
events (weights and K/V caches exist before and are not counted; the cache size is printed apart).
Last, the FLOPs of one full-size DiT step and of the selector at 1024², counted on the meta device.

    python bench/spotedit.py            # hidden 1024, 4 blocks, latent grids 32 and 64 (256, 1024 tokens)
    python bench/spotedit.py --latent 128 --repeats 2   # 4096 tokens (minutes on a CPU)
    python bench/spotedit.py --fast     # a small model and VAE, seconds
    python bench/spotedit.py --out spot.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from timing import interleaved_best
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.models.vae import FULL_VAE_CONFIG, TINY_VAE_CONFIG, WanVAE
from lowmem.spotedit import DiTSpotModel, SpotConfig, fusion_alpha
from lowmem.spotedit.score_stages import ScoreStages
from lowmem.spotedit.selector import SpotSelector

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


def random_vae(config: dict, device: str) -> WanVAE:
    torch.manual_seed(0)
    return WanVAE(AutoencoderKLWan(**config)).to(device)


def schedule_counts(steps: int) -> dict[str, int]:
    """Full steps, spot steps and selector calls of a `steps`-step run at SpotEdit's default schedule."""
    config = SpotConfig()
    initial, resets = config.schedule(steps)
    full = initial + len(resets)
    return {"steps": steps, "full": full, "spot": steps - full, "selections": len(config.selection_steps(steps))}


def run_size(args: argparse.Namespace, model: torch.nn.Module, vae: WanVAE, latent: int, counts: dict) -> dict:
    spot = DiTSpotModel(model)
    g = torch.Generator().manual_seed(1)
    h = w = latent
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

    condition = latents[:1, 0]
    x0_hat = condition + 0.5 * torch.randn(condition.shape, generator=g).to(args.device)
    selector = SpotSelector(vae, condition, SpotConfig().threshold, dtype=torch.float32)
    old_reference = [f.float() for f in vae.decoder_features(condition)]

    def selector_old():  # the VAE's own stages in float32 for X0_hat (the condition's were cached)
        return [f.float() for f in vae.decoder_features(x0_hat)], old_reference

    def selector_new():
        return selector.select(x0_hat)

    times = interleaved_best(fns + [selector_old, selector_new], args.repeats)
    sel_old, sel_new = times[-2:]
    for row, fn, seconds in zip(rows, fns, times):
        row["seconds"], row["peak_activation_bytes"] = seconds, peak_forward_bytes(fn)
    base_s, base_mem = rows[0]["seconds"], rows[0]["peak_activation_bytes"]
    per_spot_step = sel_new * counts["selections"] / max(1, counts["spot"])
    for row in rows:
        spot_s = row["seconds"]
        row["speedup"] = base_s / spot_s
        row["memory_ratio"] = row["peak_activation_bytes"] / base_mem
        if row["mode"] == "spot":
            row["speedup_selector_old_every_step"] = base_s / (spot_s + sel_old)
            row["speedup_selector_every_step"] = base_s / (spot_s + sel_new)
            row["speedup_with_selector"] = base_s / (spot_s + per_spot_step)
            spot_run = counts["full"] * base_s + counts["spot"] * spot_s + counts["selections"] * sel_new
            row["run_speedup"] = counts["steps"] * base_s / spot_run
    return {"latent": [h, w], "tokens_per_item": n, "cache_bytes": cache.nbytes, "selector_old_s": sel_old,
            "selector_s": sel_new, "rows": rows}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_at_1024(text_tokens: int) -> dict:
    """FLOPs of one full-size DiT step (CFG batch 2) and of the selector at 1024², on the meta device."""
    side = 1024 // 8
    dit = build_dit(FULL_DIT_CONFIG, device="meta", dtype=torch.bfloat16)
    latents = torch.empty(2, 2, FULL_DIT_CONFIG.in_channels, 1, side, side, device="meta", dtype=torch.bfloat16)
    text = torch.empty(2, text_tokens, FULL_DIT_CONFIG.text_states_dim, device="meta", dtype=torch.bfloat16)
    timestep = torch.empty(2, device="meta")
    with torch.device("meta"):
        vae = WanVAE(AutoencoderKLWan(**FULL_VAE_CONFIG))
    z = torch.empty(1, 16, 1, side, side, device="meta")
    stages = ScoreStages(vae, torch.bfloat16, "meta")
    result = {"resolution": 1024, "text_tokens": text_tokens,
              "dit_step": count_flops(lambda: dit(latents, timestep, text)),
              "selector_old": count_flops(lambda: vae.decoder_features(z)),
              "selector": count_flops(lambda: stages(z))}
    result["selector_fraction_of_step"] = result["selector"] / result["dit_step"]
    return result


def run(args: argparse.Namespace) -> dict:
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args.hidden, args.blocks, args.heads, args.device)
    vae = random_vae(TINY_VAE_CONFIG if args.fast else FULL_VAE_CONFIG, args.device)
    counts = schedule_counts(args.steps)
    from lowmem.planning.planner import dit_text_tokens

    return {
        "config": {"hidden": args.hidden, "blocks": args.blocks, "heads": args.heads, "batch": 2,
                   "text_tokens": args.text_tokens, "device": args.device, "dtype": "float32",
                   "vae": "tiny" if args.fast else "Wan2.1 width", "threads": torch.get_num_threads(),
                   "repeats": args.repeats},
        "schedule": counts,
        "sizes": [run_size(args, model, vae, latent, counts) for latent in args.latent],
        "flops": flops_at_1024(dit_text_tokens(1024)),
    }


def table(result: dict) -> str:
    c, k = result["config"], result["schedule"]
    lines = [
        f"SpotEdit: DiT hidden {c['hidden']}, {c['blocks']} blocks, batch {c['batch']}, {c['device']} {c['dtype']}, "
        f"{c['threads']} threads, best of {c['repeats']}; selector on a random {c['vae']} VAE; a {k['steps']}-step run at "
        f"the default schedule has {k['full']} full steps, {k['spot']} spot steps, {k['selections']} selector calls",
    ]
    for size in result["sizes"]:
        lines += [
            f"latent {size['latent'][0]}x{size['latent'][1]} ({size['tokens_per_item']} target + {size['tokens_per_item']} "
            f"condition tokens): K/V cache {size['cache_bytes'] / 2**20:.1f} MiB; selector {size['selector_s'] * 1e3:.1f} ms "
            f"(before: {size['selector_old_s'] * 1e3:.1f} ms, {size['selector_old_s'] / size['selector_s']:.1f}x)",
            f"{'mode':<5} {'active':>7} {'img queries':>11} {'forward ms':>11} {'dit':>6} {'+sel old':>9} {'+sel':>6} "
            f"{'run':>6} {'peak act MiB':>13} {'vs full':>8}",
        ]
        for r in size["rows"]:
            sel = (f"{r['speedup_selector_old_every_step']:8.2f}x {r['speedup_with_selector']:5.2f}x {r['run_speedup']:5.2f}x"
                   if r["mode"] == "spot" else f"{'':>9} {'':>6} {'':>6}")
            lines.append(f"{r['mode']:<5} {r['active_fraction'] * 100:6.0f}% {r['image_queries']:>11} {r['seconds'] * 1e3:11.1f} "
                         f"{r['speedup']:5.2f}x {sel} {r['peak_activation_bytes'] / 2**20:13.1f} {r['memory_ratio']:8.2f}")
    f = result["flops"]
    lines.append(f"FLOPs at {f['resolution']}² (meta device): full-size DiT step (CFG 2, {f['text_tokens']} text tokens) "
                 f"{f['dit_step'] / 1e12:.1f} TFLOP; selector {f['selector'] / 1e12:.3f} TFLOP "
                 f"({f['selector_fraction_of_step'] * 100:.2f}% of a step; before: {f['selector_old'] / 1e12:.3f} TFLOP)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small model, tiny VAE, one small grid: a smoke run in seconds")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--latent", type=int, nargs="+", default=[32, 64], help="latent grid sides (tokens: (N/2)^2 per image)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="steps of the run whose schedule sets the selector's rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.fast:
        args.hidden, args.heads, args.blocks, args.latent, args.text_tokens, args.repeats = 128, 4, 2, [16], 8, 3
    result = run(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
