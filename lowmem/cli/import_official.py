"""`lowmem import`: the official SpatialEdit release (DiT .pt + LoRA folder) -> a lowmem model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "turn the official release (DiT .pt, LoRA folder, Wan2.1_VAE.pth, Qwen3-VL folder) into a model folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dit", required=True, type=Path, help="the official DiT checkpoint (.pt state dict)")
    parser.add_argument("--lora", type=Path, help="the post-training LoRA folder (adapter_config.json + adapter_model.safetensors), merged in")
    parser.add_argument("--vae", required=True, type=Path, help="Wan2.1_VAE.pth")
    parser.add_argument("--text-encoder", required=True, type=Path, help="the Qwen3-VL-8B-Instruct folder")
    parser.add_argument("--out", required=True, type=Path, help="new model folder to write")
    parser.add_argument("--config", type=Path, help="DiT config.json to use instead of the one inferred from the shapes")
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from lowmem.common.paths import check_new_folder
    from lowmem.errors import ModelFolderError
    from lowmem.models.dit_config import DiTConfig

    # The checks that need no torch first: a wrong path is reported at once.
    check_new_folder(args.out)
    for flag, path in (("--dit", args.dit), ("--vae", args.vae)):
        if not path.is_file():
            raise ModelFolderError(f"{flag} {path} does not exist (or is not a file); pass the official file")
    if not (args.text_encoder / "config.json").is_file():
        raise ModelFolderError(f"--text-encoder {args.text_encoder} holds no config.json; pass the Qwen3-VL-8B-Instruct folder")
    config = DiTConfig.from_file(args.config) if args.config else None

    from lowmem.models.official_import import import_official
    from lowmem.offload import parse_bytes

    out = import_official(args.dit, args.vae, args.text_encoder, args.out, lora=args.lora, config=config,
                          shard_bytes=parse_bytes(args.shard_size), progress=not args.no_progress)
    print(f"wrote {out}: use it as --model, or quantize it first with `lowmem quantize {out} --scheme nf4 --out ...`")
    return 0
