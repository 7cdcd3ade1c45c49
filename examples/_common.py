"""Shared argument handling for the examples: a real model folder, or the tiny seeded one."""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from lowmem.commands.demo import test_scene
from lowmem.images import load_image
from lowmem.testing import write_tiny_model


def example_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, help="SpatialEdit model folder (default: the tiny seeded model)")
    parser.add_argument("--image", type=Path, help="input image (default: a generated test scene)")
    parser.add_argument("--out", type=Path, default=Path("example-output.png"), help="where to save the edit")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 30, or 4 on the tiny model)")
    parser.add_argument("--resolution", type=int, help="working resolution (default: 1024, or 64 on the tiny model)")
    return parser


def model_and_image(args: argparse.Namespace) -> tuple[Path, Image.Image]:
    """The model folder to use (writing the tiny one into a temp folder if none was given) and the input."""
    tiny = args.model is None
    model = args.model
    if tiny:
        scratch = tempfile.mkdtemp(prefix="lowmem-example-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        model = write_tiny_model(Path(scratch) / "tiny")
    if args.steps is None:
        args.steps = 4 if tiny else 30
    if args.resolution is None:
        args.resolution = 64 if tiny else 1024
    image = load_image(args.image) if args.image else test_scene()
    return model, image
