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


_SCALES = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def format_bytes(n: float, rounding: str = "nearest") -> str:
    """Human readable, SI (matches how budgets are written): 1.23 GB, 45.6 MB, 789 B.

    `rounding` is "up" for a size the user must give (a need, a smallest budget): giving the printed
    figure is then enough; "down" for what the user gave when it is compared with such a need, so
    the two never print as the same figure when they differ."""
    n = round(n)
    for unit, scale in _SCALES:
        if abs(n) >= scale:
            step = scale // 100  # two decimals, counted in whole bytes: no float rounding surprises
            hundredths = {"nearest": (2 * n + step) // (2 * step), "up": -(-n // step), "down": n // step}[rounding]
            sign, hundredths = ("-" if hundredths < 0 else ""), abs(hundredths)
            return f"{sign}{hundredths // 100}.{hundredths % 100:02d} {unit}"
    return f"{n} B"


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
