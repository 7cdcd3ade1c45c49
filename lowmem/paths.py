"""Output paths: checked before any heavy work, written atomically (temporary name, then rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lowmem.errors import OutputPathError


def check_output_path(path: Path, overwrite: bool = False) -> None:
    """Raise OutputPathError when `path` cannot be written: its folder is missing, or it exists."""
    if not path.parent.is_dir():
        raise OutputPathError(f"output folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{path} already exists; pass --overwrite to replace it")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
