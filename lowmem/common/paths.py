"""Output paths: checked before any heavy work, written atomically (temporary name, then rename).

Every file lowmem writes goes through `atomic_file` (or a `staged_folder`, or the lock), so a write
that fails, is interrupted or finds the disk full leaves the old file as it was and no temporary
behind; a full disk is one OutOfSpaceError (`common.disk_space`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

from lowmem.common.disk_space import out_of_space_is_an_error
from lowmem.errors import OutputPathError


def check_output_path(path: Path, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Raise OutputPathError when the file `path` cannot be written: its folder is missing or not
    writable, its name is too long, it is a folder, or it exists and `overwrite` is off (`flag` is
    what the user passes to allow replacing it)."""
    path = Path(path)
    check_writable_folder(path.parent)
    if len(os.fsencode(path.name)) > _name_max(path.parent):
        raise OutputPathError(f"the file name {path.name[:40]}... is longer than this file system allows; choose a shorter one")
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{path} already exists; pass {flag} to replace it" if flag else
                              f"{path} already exists; choose a new file name")


def check_writable_folder(folder: Path) -> None:
    """Raise OutputPathError unless `folder` is an existing folder this process may write into."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist; create it first"
        raise OutputPathError(f"output folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {folder} is not writable; choose another place")
    # Permissions are not the whole story (/proc, /sys, a read-only mount, a full inode table): create
    # the kind of temporary file the output will be written through, before any work is done.
    try:
        fd, probe = tempfile.mkstemp(prefix=".lowmem-write-check.", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"cannot create files in {folder} ({exc.strerror or exc}); choose another place") from None
    os.close(fd)
    os.unlink(probe)


def check_output_folder(folder: Path, flag: str = "--out") -> None:
    """Raise OutputPathError unless `folder` (made by the command, or there from an earlier run) can
    take new files: an existing folder, or an absent one inside a folder that can."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{flag} {folder} is a file; give a folder")
    check_writable_folder(folder if folder.is_dir() else folder.parent)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file (after resolving links and `..`, or as hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(**paths: Optional[Path]) -> None:
    """Raise OutputPathError when two of the named paths (flag name -> path) are one file."""
    given = [(name, Path(p)) for name, p in paths.items() if p is not None]
    for i, (name_a, a) in enumerate(given):
        for name_b, b in given[i + 1:]:
            if same_file(a, b):
                raise OutputPathError(f"{name_a} and {name_b} are the same file ({a}); give each its own path")


def process_umask() -> int:
    """This process's umask, read without changing it where the system says it (Linux); elsewhere set
    and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def new_file_mode() -> int:
    """The mode open() gives a new file (0666 less the umask): tempfile makes its files 0600, and an
    output renamed from one must look like any other tool's output."""
    return 0o666 & ~process_umask()


def new_folder_mode() -> int:
    """The mode mkdir() gives a new folder (0777 less the umask), for folders made by mkdtemp (0700)."""
    return 0o777 & ~process_umask()


@contextmanager
def atomic_file(path: Path, needed: Optional[int] = None, prefix: Optional[str] = None, suffix: str = "") -> Iterator[Path]:
    """A temporary file beside `path` (named `prefix`...`suffix`, default .NAME.*, with the mode a new
    file gets under the umask) for the block to write; renamed over `path` when the block succeeds,
    removed when it fails. A full disk is one OutOfSpaceError naming `path` and the `needed` bytes."""
    path = Path(path)
    with out_of_space_is_an_error(path, needed):
        fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=suffix, dir=path.parent)
        try:
            os.fchmod(fd, new_file_mode())
        finally:
            os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_bytes_atomic(path: Path, data: bytes, prefix: Optional[str] = None, suffix: str = "") -> Path:
    """Write `data` to a temporary file beside `path` (see `atomic_file`), then rename it over `path`."""
    with atomic_file(path, needed=len(data), prefix=prefix, suffix=suffix) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return path


def write_files_atomic(files: dict[Path, bytes]) -> None:
    """Write every file or none: each goes to its temporary name first, and the files are renamed over
    their paths only once all are written (a full disk on the last one leaves none of them new)."""
    with ExitStack() as written:
        for path, data in files.items():
            with open(written.enter_context(atomic_file(path, needed=len(data))), "wb") as handle:
                handle.write(data)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it over `path`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_atomic(source: Path, path: Path) -> Path:
    """Copy `source` to a temporary file beside `path` (bytes, then mode and times, as shutil.copy2
    does), then rename it over `path`."""
    with atomic_file(path, needed=Path(source).stat().st_size) as tmp:
        shutil.copy2(source, tmp)
    return path


def remove_temporaries(path: Path) -> None:
    """Remove what a killed atomic write of `path` left beside it: the temporary names of
    `write_text_atomic` and `copy_atomic` (.NAME.*) and of `save_image_atomic` (.STEM.*SUFFIX)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for pattern in (f".{path.name}.*", f".{path.stem}.*{path.suffix}"):
        for leftover in path.parent.glob(pattern):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)


def check_new_folder(target: Path) -> None:
    """Raise OutputPathError unless `target` is absent or an empty folder, in a writable folder."""
    target = Path(target)
    check_writable_folder(target.parent)
    if len(os.fsencode(target.name)) + len(".partial") > _name_max(target.parent):
        raise OutputPathError(f"the folder name {target.name[:40]}... is longer than this file system allows; choose a shorter one")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputPathError(f"{target} already holds something (it is not empty); choose a new folder (nothing was changed)")


@contextmanager
def staged_folder(target: Path, needed: Optional[int] = None) -> Iterator[Path]:
    """Build a new folder beside `target` and rename it to `target` when the block succeeds; on any
    failure the half-built folder is removed. `target` must be absent or an empty folder. A full disk
    inside the block is one OutOfSpaceError (with `needed`, the bytes the whole folder takes)."""
    target = Path(target)
    check_new_folder(target)
    with out_of_space_is_an_error(target, needed, what="the folder"):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            os.chmod(staging, new_folder_mode())  # what mkdir would have made, not mkdtemp's 0700
            yield staging
            if target.exists():
                target.rmdir()
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextmanager
def made_folder(folder: Path) -> Iterator[Path]:
    """`folder`, made with its missing parents for the block; when the block fails, those of them it
    left empty are removed again (a failed run leaves no empty folder behind)."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the deepest first
    with out_of_space_is_an_error(folder):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in made:
            try:
                path.rmdir()
            except OSError:  # not empty: something else lives there now
                break
        raise


@contextmanager
def exclusive_lock(lock_file: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created, and removed on exit) for the block; raise
    OutputPathError(`busy`) at once when another process holds it. The lock dies with its process,
    so a killed run never leaves a stale lock behind."""
    import fcntl

    lock_file = Path(lock_file)
    while True:
        with out_of_space_is_an_error(lock_file):
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputPathError(busy) from None
        try:  # the previous holder may have removed the file after we opened it: lock the one there now
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        pid = f"{os.getpid()}\n".encode()
        with out_of_space_is_an_error(lock_file, len(pid)):
            os.ftruncate(fd, 0)
            os.write(fd, pid)
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        os.close(fd)
