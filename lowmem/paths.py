"""Output paths: checked before any heavy work, written atomically (temporary name, then rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Build a new folder beside `target` and rename it to `target` when the block succeeds; on any
    failure the half-built folder is removed. `target` must be absent or an empty folder."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputPathError(f"{target} already holds something; choose a new folder")
    if not target.parent.is_dir():
        raise OutputPathError(f"output folder {target.parent} does not exist; create it first")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
