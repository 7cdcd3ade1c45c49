"""`lowmem download`: the SpatialEdit release from the Hugging Face Hub to a model folder, ready to edit."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowmem.cli.quantize import SCHEME_CHOICES

HELP = ("download SpatialEdit-16B (the DiT + LoRA, Qwen3-VL-8B, the Wan2.1 VAE) through the Hugging Face cache "
        "and make a model folder of it, quantized with --quantize")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="model folder to write (default: $LOWMEM_HOME or ~/.cache/lowmem/models, "
                                                 "EasonXiao-888--SpatialEdit[-SCHEME])")
    parser.add_argument("--quantize", choices=SCHEME_CHOICES,
                        help="write the quantized folder (nf4 ~17 GB: fits a 24 GB card) instead of the bf16 one")
    parser.add_argument("--revision", help="branch, tag or commit of the release repository (default: main)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds something (it is kept "
                                                                   "until the new folder is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lowmem.hub.download import download_model
    from lowmem.hub.models import default_folder
    from lowmem.hub.release import RELEASE_REPO

    out = args.out or default_folder(RELEASE_REPO, args.quantize)
    if args.out is None:
        out.parent.mkdir(parents=True, exist_ok=True)
    record = download_model(out, args.quantize, args.revision, args.overwrite, progress=not args.no_progress)
    commits = ", ".join(f"{repo}@{commit[:12]}" for repo, commit in record["revisions"].items())
    print(f"wrote {out} ({args.quantize or 'bf16'}; {commits})")
    print(f"edit with it: lowmem edit --model {RELEASE_REPO} ... (or --model {out})")
    return 0
