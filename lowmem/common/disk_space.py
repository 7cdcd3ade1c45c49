"""A full disk: free space checked before writing what has a known size, and a write that finds the
disk full turned into one OutOfSpaceError naming the path, the bytes needed and those free.

Every writer of lowmem goes through `common.paths` (atomic files, staged folders, the lock file),
which wraps its writes in `out_of_space_is_an_error`; Python raises ENOSPC / EDQUOT as OSError, and
Rust libraries (safetensors) as their own exception whose message ends in "(os error 28)".
"""

from __future__ import annotations

import errno
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from lowmem.errors import OutOfSpaceError

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def format_bytes(n: float) -> str:
    """Human readable, SI (matches how budgets are written): 1.23 GB, 45.6 MB, 789 B."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def is_out_of_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota) is full."""
    if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE_ERRNOS:
        return True
    match = _RUST_OS_ERROR.search(str(exc))
    return match is not None and int(match.group(1)) in OUT_OF_SPACE_ERRNOS


def existing_parent(path: Path) -> Path:
    """`path`, or its nearest parent that exists (a folder about to be made lives on its file system)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes free for this user on the file system that holds (or will hold) `path`."""
    return shutil.disk_usage(existing_parent(path)).free


def out_of_space(path: Path, needed: Optional[int] = None, what: Optional[str] = None, note: str = "") -> OutOfSpaceError:
    """The error for a disk found full while writing `path` (`what`, when it is a whole job's output,
    e.g. "the conversion"), which needs `needed` bytes when known."""
    try:
        free = f"{format_bytes(free_bytes(path))} is free"
    except OSError:
        free = "the free space is unknown"
    need = f"{what or 'writing it'} needs {format_bytes(needed)}, " if needed is not None else ""
    return OutOfSpaceError(f"no space left on the disk for {path} ({need}{free}): free some space or write somewhere "
                           f"else, then run it again ({note or 'nothing half-written was left behind'})")


@contextmanager
def out_of_space_is_an_error(path: Path, needed: Optional[int] = None, what: Optional[str] = None,
                             note: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into one OutOfSpaceError about writing `path` (`needed`
    bytes, when known). With `what`, the block is a whole job writing into `path` (a folder): an
    OutOfSpaceError of one of its files becomes the job's, naming `path`, `needed` and `note` (what
    was kept)."""
    try:
        yield
    except OutOfSpaceError as exc:
        if what is None:
            raise
        raise out_of_space(path, needed, what, note) from exc.__cause__
    except Exception as exc:
        if not is_out_of_space(exc):
            raise
        raise out_of_space(path, needed, what, note) from exc


def check_free_space(needs: dict[Path, int], what: str, fix: str) -> None:
    """Refuse before any byte is written when a file system has less free space than `what` will
    write to it (`needs`: a path on each file system -> bytes), naming both numbers and `fix`."""
    by_device: dict[int, tuple[list[Path], int]] = {}
    for folder, nbytes in needs.items():
        existing = existing_parent(folder)
        device = existing.stat().st_dev
        folders, total = by_device.get(device, ([], 0))
        by_device[device] = (folders + [existing], total + nbytes)
    for folders, nbytes in by_device.values():
        free = shutil.disk_usage(folders[0]).free
        if nbytes > free:
            raise OutOfSpaceError(f"not enough disk space where {' and '.join(map(str, folders))} live: {what} needs "
                                  f"{format_bytes(nbytes)} there, {format_bytes(free)} is free; {fix} (nothing was "
                                  "written)")
