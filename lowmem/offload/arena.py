"""One pinned host allocation sized exactly to what is planned, carved into aligned views.

The CUDA pinned allocator rounds every request up to a power of two (an 805.6 MB bf16 block takes
1 GiB), and frees only when its cache is emptied. An arena is one ordinary (pageable) tensor of
exactly `arena_bytes(sizes)` bytes that is page-locked in place with `cudaHostRegister` and
unregistered by `close()`, so the pinned bytes are the planned bytes and they are given back.
Without a GPU it is a plain tensor (nothing to pin); where CUDA refuses to pin it, a warning says so
and it stays pageable. The planner counts pinned memory with `arena_bytes`, the streamer and the
resident-weight host copy allocate it with `PinnedArena`.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Iterable

import torch

ALIGN = 256  # every view starts on a 256-byte boundary (any dtype, and the copy engines' preference)


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def arena_bytes(sizes: Iterable[int]) -> int:
    """The exact host bytes an arena holding buffers of these sizes takes."""
    return sum(aligned(n) for n in sizes)


def _unregister(flat: torch.Tensor) -> None:
    torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(flat.data_ptr()))


def _forget_cuda_error() -> None:
    """Clear the error a refused cudaHostRegister leaves as CUDA's last error, which PyTorch would
    otherwise report at its next kernel launch. PyTorch does not expose cudaGetLastError, but its
    launch check reads (and so clears) it: launch one tiny kernel and drop what it reports."""
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError:
        pass


def _page_lock(flat: torch.Tensor) -> bool:
    """Page-lock `flat` in place; where CUDA refuses (a container's locked-memory limit, say), say so and
    go on with pageable memory: copies from it are correct, only not overlapped with compute."""
    cudart = torch.cuda.cudart()
    error = cudart.cudaHostRegister(flat.data_ptr(), flat.numel(), 0)
    if error == cudart.cudaError.success:
        return True
    _forget_cuda_error()
    warnings.warn(f"CUDA could not page-lock {flat.numel() / 2**30:.2f} GiB of host memory "
                  f"({cudart.cudaGetErrorString(error)}); this run copies from pageable memory, so streaming does "
                  "not overlap compute. Raise the locked-memory limit (`ulimit -l unlimited`, or a container's "
                  "`--ulimit memlock=-1`) to stream at full speed.", RuntimeWarning, stacklevel=3)
    return False


class PinnedArena:
    """Buffers of `sizes` bytes (uint8 views, in order) in one allocation, page-locked when `pin`."""

    def __init__(self, sizes: Iterable[int], pin: bool):
        sizes = list(sizes)
        self.nbytes = arena_bytes(sizes)
        self.flat = torch.empty(self.nbytes, dtype=torch.uint8)
        self._unpin: weakref.finalize | None = None
        if pin and self.nbytes and _page_lock(self.flat):
            # An arena dropped without close() (an exception on the way out) is still unpinned, before
            # its memory is freed: the finaliser holds the memory until it has run. At exit the process's
            # pages go anyway, and CUDA may already be torn down.
            self._unpin = weakref.finalize(self, _unregister, self.flat)
            self._unpin.atexit = False
        self.offsets: list[int] = []
        offset = 0
        for n in sizes:
            self.offsets.append(offset)
            offset += aligned(n)
        self.views: list[torch.Tensor] = [self.flat[o : o + n] for o, n in zip(self.offsets, sizes)]

    @property
    def pinned(self) -> bool:
        return self._unpin is not None and self._unpin.alive

    def close(self) -> None:
        """Unpin and drop the memory. Only once no copy reads or writes it any more."""
        if self._unpin is not None:
            self._unpin()  # runs once
        self.views, self.offsets = [], []
        self.flat = torch.empty(0, dtype=torch.uint8)
        self.nbytes = 0
