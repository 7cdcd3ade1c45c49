"""Byte sizes as people write them ("24GB", "24GiB", "512MB") and back."""

from __future__ import annotations

import re

from lowmem.common.disk_space import format_bytes  # noqa: F401  (one formatter; offload's name for it)
from lowmem.errors import LowmemError


class BudgetError(LowmemError, ValueError):
    """A memory budget that cannot be read, or one too small for any plan."""


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float) -> int:
    """'24GB' -> 24e9 (SI), '24GiB' -> 24 * 2**30, plain numbers are bytes. Raises BudgetError."""
    if isinstance(text, bool):
        raise BudgetError(f"memory size must be a string like '24GB', got {text!r}")
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        match = _PATTERN.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise BudgetError(
                f"cannot read memory size {text!r}: write a number and a unit, e.g. 24GB, 24GiB, 512MB"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise BudgetError(f"memory size must be positive, got {text!r}")
    return value
