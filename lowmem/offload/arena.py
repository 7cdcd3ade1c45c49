"""One pinned host allocation sized exactly to what is planned, carved into aligned views.

The CUDA pinned allocator rounds every request up to a power of two (an 805.6 MB bf16 block takes
1 GiB), and frees only when its cache is emptied. An arena is one ordinary (pageable) tensor of
exactly `arena_bytes(sizes)` bytes that is page-locked in place with `cudaHostRegister` and
unregistered by `close()`, so the pinned bytes are the planned bytes and they are given back.
Without a GPU it is a plain tensor (nothing to pin). The planner counts pinned memory with
`arena_bytes`, the streamer and the resident-weight host copy allocate it with `PinnedArena`.
"""

from __future__ import annotations

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


class PinnedArena:
    """Buffers of `sizes` bytes (uint8 views, in order) in one allocation, page-locked when `pin`."""

    def __init__(self, sizes: Iterable[int], pin: bool):
        sizes = list(sizes)
        self.nbytes = arena_bytes(sizes)
        self.flat = torch.empty(self.nbytes, dtype=torch.uint8)
        self._unpin: weakref.finalize | None = None
        if pin and self.nbytes:
            torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(self.flat.data_ptr(), self.nbytes, 0))
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
