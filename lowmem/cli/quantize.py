"""`lowmem quantize`: convert a model folder to int8 / fp8 / nf4, streaming one block at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "quantize a SpatialEdit model folder to int8, fp8 or nf4 (a new folder usable as --model)"
SCHEME_CHOICES = ("int8", "fp8", "nf4")  # quantize.SCHEMES, written out: importing quantize imports torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # No quantize import here: it brings torch, transformers and bitsandbytes, and `lowmem quantize
    # --help` or a mistyped flag must answer at once. convert() checks scheme and backend again.
    parser.add_argument("model", type=Path, help="original model folder (transformer/, vae/, text_encoder/)")
    parser.add_argument("--scheme", required=True, choices=SCHEME_CHOICES,
                        help="int8 (1 byte per weight, int8 compute reads it directly), fp8 (e4m3, 1 byte, fp8 compute "
                             "reads it directly) or nf4 (4 bits: the smallest)")
    parser.add_argument("--component", choices=("dit", "vlm", "all"), default="all",
                        help="which model to quantize (default: all = the DiT and the Qwen3-VL text decoder)")
    parser.add_argument("--backend", choices=("bnb", "quanto"), default=None,
                        help="quantization backend (default: the best one per scheme in bench/quant.py: bitsandbytes for "
                             "int8 and nf4; fp8 is quanto's only)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="PATTERN",
                        help="extra fnmatch patterns of layers kept in bf16; embeddings, norms, modulation, the final "
                             "projection and the Qwen3-VL vision tower always are (quantize/plan.py)")
    parser.add_argument("--out", required=True, type=Path, help="new output folder (must not exist or be empty)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lowmem.common.paths import check_new_folder
    from lowmem.models.layout import open_model_folder

    open_model_folder(args.model)  # the cheap checks first, before torch is imported
    check_new_folder(args.out)
    from quantize.convert import convert

    components = ("dit", "vlm") if args.component == "all" else (args.component,)
    manifest = convert(args.model, args.out, args.scheme, backend=args.backend, components=components,
                       skip=args.skip, progress=not args.no_progress)
    print(f"wrote {args.out} ({manifest['scheme']}/{manifest['backend']}, components: {', '.join(manifest['components'])})")
    return 0
