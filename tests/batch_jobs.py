"""Helpers of the `lowmem batch` tests: a jobs file, the command line, the report, the expected images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image


def batch_command(jobs: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lowmem", "batch", str(jobs), "--out", str(out), "--model", str(model),
            "--steps", "2", "--resolution", "64", "--device", "cpu", *extra]


def write_jobs(folder: Path, scene: Optional[Image.Image], jobs: list) -> Path:
    if scene is not None:
        scene.save(folder / "scene.png")
    path = folder / "jobs.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in jobs))
    return path


def read_report(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]


def expected_image(pipeline, folder: Path, job: dict) -> np.ndarray:
    """The image `lowmem edit` makes for this job (the same pipeline call)."""
    from lowmem.cli.edit import add_arguments
    from lowmem.edits.fields import instruction_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--model", "m", "--image", "i", "--out", "o"]
    for key, value in job.items():
        if key not in ("image", "name"):
            argv += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    args = parser.parse_args(argv)
    result = pipeline.edit(folder / job["image"], instruction_from_args(args), steps=job.get("steps", 2),
                           seed=job["seed"], resolution=64, progress=False)
    return np.asarray(result.image)
