"""Tiled vs untiled Wan VAE decode: how far tiles drift from the untiled image, and what they save.

Tiling has no counterpart in the official pipeline, and its tiles differ from the untiled decode
(the decoder's convolutions see zero padding at tile edges and its mid-block attention sees one
tile, not the whole latent; diffusers blends neighbours linearly over the overlap). This decodes
one random latent with a seeded random Wan VAE (the Wan2.1 architecture, narrower by default so
a CPU run takes minutes), untiled and at each tile size and overlap, all in this one run, and prints:

- PSNR (dB) of each tiled image against the untiled one, both in [0, 1]; and the largest pixel
  difference in 8-bit levels;
- decode time relative to the untiled decode;
- the live-byte peak of the full-width Wan2.1 VAE decode at --peak-resolution, traced on the `meta`
  device (lowmem.planning.live_bytes), relative to untiled: what the planner saves by tiling.

Random weights are not the trained VAE: the PSNR shows where tiles' seams start to matter, not the
trained model's exact numbers.

    python bench/vae_tiling.py                 # base_dim 16, 512 px, tiles 128..384, overlaps 1/8..1/2
    python bench/vae_tiling.py --fast          # the tiny VAE (base_dim 4), 128 px, seconds
    python bench/vae_tiling.py --out vae.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from lowmem.models.vae import FULL_VAE_CONFIG, WanVAE
from lowmem.planning.live_bytes import trace_peak


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def seeded_vae(base_dim: int, device: str = "cpu") -> WanVAE:
    config = {**copy.deepcopy(FULL_VAE_CONFIG), "base_dim": base_dim}
    if device == "meta":
        with torch.device("meta"):
            return WanVAE(AutoencoderKLWan(**config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return WanVAE(AutoencoderKLWan(**config))


def timed(fn) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="a narrow VAE on a small image (seconds)")
    parser.add_argument("--base-dim", type=int, default=16, help="VAE width (96 is Wan2.1's; default %(default)s)")
    parser.add_argument("--resolution", type=int, default=512, help="decoded image side in pixels (default %(default)s)")
    parser.add_argument("--tiles", default="128,192,256,384", help="tile sides in pixels, comma-separated")
    parser.add_argument("--overlaps", default="0.125,0.25,0.5", help="overlap fractions, comma-separated")
    parser.add_argument("--peak-resolution", type=int, default=1024,
                        help="resolution of the traced full-width peaks (0: skip; default %(default)s)")
    parser.add_argument("--threads", type=int, help="CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fast:
        args.base_dim, args.resolution, args.tiles, args.overlaps, args.peak_resolution = 4, 128, "64,96", "0.25,0.5", 0
    tiles = [int(t) for t in args.tiles.split(",")]
    overlaps = [float(o) for o in args.overlaps.split(",")]
    if args.resolution % 8 or any(t % 8 or t >= args.resolution for t in tiles):
        parser.error("--resolution and every tile must be multiples of 8, each tile smaller than the image")

    vae = seeded_vae(args.base_dim)
    side = args.resolution // 8
    latents = torch.randn(1, 16, 1, side, side, generator=torch.Generator().manual_seed(1))
    vae.decode(latents[..., :8, :8])  # warm-up: the first call's one-off costs are nobody's
    full, full_s = timed(lambda: vae.decode(latents))
    meta_vae, meta_latents = None, None
    if args.peak_resolution:
        meta_vae = seeded_vae(FULL_VAE_CONFIG["base_dim"], "meta")
        meta_latents = torch.empty(1, 16, 1, args.peak_resolution // 8, args.peak_resolution // 8, device="meta")
        full_peak = trace_peak(lambda: meta_vae.decode(meta_latents))

    rows = []
    for tile in tiles:
        for overlap in overlaps:
            image, seconds = timed(lambda: vae.decode(latents, tiled=True, tile=tile, overlap=overlap))
            row = {"tile": tile, "overlap": overlap, "psnr_db": psnr(image, full),
                   "max_diff_8bit": float((image - full).abs().max() * 255), "time_ratio": seconds / full_s}
            if meta_vae is not None:
                peak = trace_peak(lambda: meta_vae.decode(meta_latents, tiled=True, tile=tile, overlap=overlap))
                row["peak_ratio"] = peak / full_peak
            rows.append(row)
            print(f"  tile {tile} overlap {overlap:g}: {row['psnr_db']:.1f} dB", file=sys.stderr)

    print(f"\nWan VAE decode, tiled vs untiled: random weights, base_dim {args.base_dim}, {args.resolution}x"
          f"{args.resolution} px (untiled {full_s:.2f} s)")
    peak_note = f", peak = traced live bytes of the full-width VAE at {args.peak_resolution} px" if meta_vae else ""
    if meta_vae is not None:
        print(f"untiled full-width peak at {args.peak_resolution} px: {full_peak / 2**30:.2f} GiB")
    print(f"(PSNR against the untiled image; time and peak relative to untiled{peak_note})")
    header = f"{'tile px':>8} {'overlap':>8} {'PSNR dB':>8} {'max diff /255':>14} {'time x':>7}"
    print(header + (f" {'peak x':>7}" if meta_vae else ""))
    for r in rows:
        line = (f"{r['tile']:>8} {r['overlap']:>8g} {r['psnr_db']:>8.1f} {r['max_diff_8bit']:>14.1f} "
                f"{r['time_ratio']:>7.2f}")
        print(line + (f" {r['peak_ratio']:>7.3f}" if meta_vae else ""))
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "untiled_seconds": full_s,
                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
