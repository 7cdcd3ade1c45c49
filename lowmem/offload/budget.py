"""Byte sizes as people write them ("24GB", "24GiB", "512MB") and back.

One rule everywhere (the CLI, jobs files, presets, the Python API): text needs a unit, because "24"
could mean bytes or GB; a Python number (int, or a whole float such as 24e9) is a count of bytes.
"""

from __future__ import annotations

import math
import re
from numbers import Real

from lowmem.common.disk_space import format_bytes  # noqa: F401  (one formatter; offload's name for it)
from lowmem.errors import LowmemError


class BudgetError(LowmemError, ValueError):
    """A memory budget that cannot be read, or one too small for any plan."""


_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
HOW_TO_WRITE = "write a number and a unit, e.g. 24GB, 24GiB or 512MB"  # the end of every size error


def parse_bytes(text: str | int | float) -> int:
    """'24GB' -> 24e9 (SI), '24GiB' -> 24 * 2**30, a Python int (or whole float) is bytes. Raises BudgetError."""
    if isinstance(text, bool) or not isinstance(text, (str, Real)):
        raise BudgetError(f"memory size must be text such as '24GB' (or a number of bytes), got "
                          f"{type(text).__name__} {text!r}; {HOW_TO_WRITE}")
    if isinstance(text, Real):
        if not math.isfinite(text):
            raise BudgetError(f"memory size {text!r} is not a finite number; {HOW_TO_WRITE}")
        if text >= 1 and text != int(text):
            raise BudgetError(f"memory size {text!r} is not a whole number of bytes; {HOW_TO_WRITE}")
        value = math.floor(text)  # 0.5 is refused below as less than a byte
    else:
        match = _PATTERN.match(text)
        if match is None or match.group(2).lower() not in _UNITS:
            if match is not None and not match.group(2):  # "24": bytes or GB? Refused, not guessed
                raise BudgetError(f"memory size {text!r} has no unit (it could mean bytes or GB); {HOW_TO_WRITE}")
            raise BudgetError(f"cannot read memory size {text!r}; {HOW_TO_WRITE}")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 1:
        raise BudgetError(f"memory size must be at least 1 byte, got {text!r}; {HOW_TO_WRITE}")
    return value
