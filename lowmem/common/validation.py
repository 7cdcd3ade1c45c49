"""Checks of the numbers a user passes, shared by the CLI (as argparse types) and the Python API.

Each check returns the value or raises ArgumentError with a message naming the argument and the
range it takes. They run before any model is read, so a bad number costs nothing. This module
imports nothing heavy: the CLI builds its parser from it in well under a second.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, Optional

from lowmem.errors import ArgumentError, LowmemError

RESOLUTION_RANGE = (64, 4096)  # below 64 px the DiT sees a 2x2 token grid; above, nothing was trained
RESOLUTION_MULTIPLE = 16  # VAE 8x, DiT patch 2x2
STEPS_RANGE = (1, 1000)  # the scheduler has 1000 training timesteps
SEED_RANGE = (0, 2**63 - 1)  # what torch.Generator.manual_seed accepts
GUIDANCE_RANGE = (0.0, 100.0)
MAX_DILATION = 64


def finite(value: float, name: str, error: type[LowmemError] = ArgumentError) -> float:
    """`value` (a number or the text of one: flags and jobs files give text) as a float, refused with
    `error` when it is not a finite number (nan, inf, None, True)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise error(f"{name} must be a finite number, got {value!r}")
    return number


def integer(value: int, name: str, low: int, high: Optional[int] = None) -> int:
    """`value` as an int in [low, high] (no upper end when `high` is None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 10)
        except ValueError:
            raise ArgumentError(f"{name} must be a whole number, got {value!r}") from None
    if high is None and value < low:
        raise ArgumentError(f"{name} must be a whole number of at least {low}, got {value}")
    if high is not None and not low <= value <= high:
        raise ArgumentError(f"{name} must be between {low} and {high}, got {value}")
    return value


def guidance(value: float) -> float:
    number = finite(value, "guidance")
    low, high = GUIDANCE_RANGE
    if not low <= number <= high:
        raise ArgumentError(f"guidance must be between {low:g} and {high:g} (5.0 is the released default), got {value!r}")
    return number


def resolution(value: int) -> int:
    low, high = RESOLUTION_RANGE
    number = integer(value, "resolution", low, high)
    if number % RESOLUTION_MULTIPLE:
        raise ArgumentError(f"resolution must be a multiple of {RESOLUTION_MULTIPLE} (e.g. 64, 512, 1024), got {number}")
    return number


def steps(value: int) -> int:
    return integer(value, "steps", *STEPS_RANGE)


def seed(value: int) -> int:
    return integer(value, "seed", *SEED_RANGE)


def spot_threshold(value: float | str) -> float | str:
    """A finite number, or 'auto' (a 2-means split of each step's scores)."""
    if value == "auto":
        return value
    return finite(value, "SpotEdit threshold (a number or 'auto')")


def spot_dilation(value: int) -> int:
    return integer(value, "SpotEdit dilation", 0, MAX_DILATION)


def text(value: str, name: str, error: type[LowmemError] = ArgumentError) -> str:
    """`value` as given when it is a string (empty allowed), else `error`."""
    if not isinstance(value, str):
        raise error(f"{name} must be text, got {type(value).__name__} {value!r}")
    return value


def flag(value: bool, name: str) -> bool:
    """A yes/no argument: True or False, not a value that is merely truthy ("no" is)."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def path(value: str | os.PathLike, name: str) -> Path:
    """A file or folder path given as text or a path object."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ArgumentError(f"{name} must be a path (text or pathlib.Path), got {type(value).__name__} {value!r}")
    return Path(value)


def check_edit_arguments(steps_: int, guidance_: float, seed_: int, resolution_: int) -> tuple[int, float, int, int]:
    """The sampling arguments of one edit, all at once (the Python API's door), as the numbers to use."""
    return steps(steps_), guidance(guidance_), seed(seed_), resolution(resolution_)


def cli_type(check: Callable, metavar_name: str) -> Callable[[str], object]:
    """An argparse `type` from a check: argparse prints its message as `argument --x: ...`."""

    def parse(text: str):
        try:
            return check(text)
        except ArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = metavar_name  # argparse names the type in some messages
    return parse


def device(text: str, allow_meta: bool = False):
    """A torch.device this machine has: 'cpu', 'cuda' or 'cuda:N' with N an existing GPU (or such a torch.device).
    `allow_meta`: also 'meta', the shape-only device the Python API runs the full model on to trace it."""
    import torch

    if not isinstance(text, (str, torch.device)):
        raise ArgumentError(f"device must be a device name such as 'cpu' or 'cuda', got {type(text).__name__} {text!r}")
    try:
        chosen = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"device {text!r} is not a device name; use cpu or cuda (cuda:N for GPU N)") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ArgumentError(f"device {text!r}: no CUDA GPU is available here; use --device cpu")
        if chosen.index is not None and chosen.index >= count:
            raise ArgumentError(f"device {text!r}: this machine has {count} CUDA GPU(s), numbered from 0")
    elif chosen.type != "cpu" and not (allow_meta and chosen.type == "meta"):
        raise ArgumentError(f"device {text!r} is not supported; use cpu or cuda")
    return chosen


def dtype(value):
    """A torch floating-point dtype for the weights (torch.bfloat16, torch.float32, ...)."""
    import torch

    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ArgumentError(f"dtype must be a torch floating-point dtype such as torch.bfloat16 or torch.float32, "
                            f"got {type(value).__name__} {value!r}")
    return value
