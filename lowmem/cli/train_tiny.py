"""`lowmem train-tiny`: train the tiny SpatialEdit on rendered scenes into a model folder (seeded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowmem.errors import LowmemError

HELP = "train the tiny SpatialEdit (VAE, then DiT) on rendered scenes into a model folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lowmem.tiny.training import TrainingSettings  # here, not at the top: `lowmem --help` must not import torch

    defaults = TrainingSettings()
    parser.add_argument("--out", type=Path, required=True, help="new model folder to write (absent or empty)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of everything (default: %(default)s)")
    parser.add_argument("--size", type=int, default=defaults.size, help="rendered image size in pixels (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=defaults.pairs, help="rendered training pairs (default: %(default)s)")
    parser.add_argument("--vae-width", type=int, default=defaults.vae_width,
                        help="VAE base width (AutoencoderKLWan base_dim; the real VAE's is 96) (default: %(default)s)")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps, help="VAE batches (default: %(default)s)")
    parser.add_argument("--vae-batch", type=int, default=defaults.vae_batch, help="images per VAE batch (default: %(default)s)")
    parser.add_argument("--dit-steps", type=int, default=defaults.dit_steps, help="DiT batches (default: %(default)s)")
    parser.add_argument("--dit-batch", type=int, default=defaults.dit_batch, help="pairs per DiT batch (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    for name in ("pairs", "vae_width", "vae_steps", "vae_batch", "dit_steps", "dit_batch"):
        if getattr(args, name) < 1:
            raise LowmemError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.size < 64 or args.size % 16:
        raise LowmemError(f"--size must be a multiple of 16 and at least 64 (the smallest edit resolution), got {args.size}")
    import torch

    from lowmem.tiny.training import TrainingSettings, train_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainingSettings(seed=args.seed, size=args.size, pairs=args.pairs, vae_width=args.vae_width, vae_steps=args.vae_steps,
                                vae_batch=args.vae_batch, dit_steps=args.dit_steps, dit_batch=args.dit_batch)
    record = train_tiny_model(args.out, settings)
    seconds = record["seconds"]
    print(f"wrote {args.out}: VAE loss {record['vae_loss'][0]:.4f} -> {record['vae_loss'][-1]:.4f}, "
          f"DiT loss {record['dit_loss'][0]:.4f} -> {record['dit_loss'][-1]:.4f}")
    print("time: " + ", ".join(f"{phase} {value:.0f} s" for phase, value in seconds.items()))
    return 0
