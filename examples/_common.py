"""Shared argument handling for the examples: a real model folder, or the shipped trained tiny one."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from lowmem.common.images import open_image
from lowmem.tiny.scenes import HELD_OUT_SEEDS, OBJECT_NAME, render_pair
from lowmem.tiny.trained_model import trained_tiny_model


def example_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, help="SpatialEdit model folder (default: the shipped trained tiny model)")
    parser.add_argument("--image", type=Path, help="input image (default: a rendered scene the tiny model never saw)")
    parser.add_argument("--object", help=f"what to edit (default: {OBJECT_NAME!r} on the tiny model, else 'object')")
    parser.add_argument("--out", type=Path, default=Path("example-output.png"), help="where to save the edit")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 30, or 16 on the tiny model)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (default: 5.0, or 1.0 on the tiny model)")
    parser.add_argument("--resolution", type=int, help="working resolution (default: 1024, or 64 on the tiny model)")
    return parser


def model_and_image(args: argparse.Namespace, kind: str) -> tuple[Path, Image.Image]:
    """The model folder (the shipped tiny model if none was given), the input (a held-out rendered
    scene for an edit of `kind` if none was given), and the sampling defaults filled into `args`."""
    tiny = args.model is None
    model = trained_tiny_model() if tiny else args.model
    if args.steps is None:
        args.steps = 16 if tiny else 30
    if args.resolution is None:
        args.resolution = 64 if tiny else 1024
    if args.guidance is None:
        args.guidance = 1.0 if tiny else 5.0
    if args.object is None:
        args.object = OBJECT_NAME if tiny else "object"
    image = open_image(args.image) if args.image else render_pair(HELD_OUT_SEEDS, kind).source.image
    return model, image
