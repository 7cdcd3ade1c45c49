"""Where streamed blocks wait between their turns: host RAM (one pinned arena on CUDA) or disk files.

Both stores hold each block as one flat byte image laid out by its `BlockLayout`. The host store
keeps every image in one `PinnedArena` sized exactly to the streamed blocks (the streamer copies
from it on the copy stream); the disk store writes one file per block and reads it back with
`os.preadv` straight into a given buffer (a staging buffer on CUDA, the slot itself on the CPU) and
keeps no mmap alive, so the process's resident memory stays bounded by the slots, not by the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Optional

import torch

from lowmem.common.paths import atomic_file
from lowmem.offload.arena import PinnedArena
from lowmem.offload.packing import BlockLayout


class HostStore:
    """Every streamed block's image in one host arena, page-locked when `pin`."""

    def __init__(self, sizes: dict[int, int], pin: bool):
        self.arena = PinnedArena(sizes.values(), pin=pin)
        self.images = dict(zip(sizes, self.arena.views))
        self.tier = "pinned" if self.arena.pinned else "pageable"

    def put(self, index: int, layout: BlockLayout) -> None:
        layout.pack_into(self.images[index])

    def host_bytes(self) -> int:
        return self.arena.nbytes

    def close(self) -> None:
        self.images.clear()
        self.arena.close()


class DiskStore:
    """One raw file per block in `folder` (a private temporary folder by default, removed on close)."""

    tier = "disk"

    def __init__(self, folder: Optional[str | Path] = None):
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="lowmem-blocks-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[int, int] = {}
        # A private folder holds a copy of every streamed block (GBs for the real model): it goes when
        # the store is closed, collected, or the interpreter exits, whichever comes first.
        self._remove = weakref.finalize(self, shutil.rmtree, self.folder, True) if folder is None else None

    def path(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}.bin"

    def put(self, index: int, layout: BlockLayout) -> None:
        flat = torch.zeros(layout.nbytes, dtype=torch.uint8)
        layout.pack_into(flat)
        with atomic_file(self.path(index), needed=layout.nbytes) as tmp, open(tmp, "wb") as f:
            f.write(memoryview(flat.numpy()))
        self.sizes[index] = layout.nbytes

    def host_bytes(self) -> int:
        return 0

    def read_into(self, index: int, target: torch.Tensor) -> None:
        """Read block `index`'s image into the first bytes of `target` (a host uint8 tensor)."""
        size = self.sizes[index]
        view = memoryview(target.numpy())[:size]
        fd = os.open(self.path(index), os.O_RDONLY)
        try:
            done = 0
            while done < size:
                got = os.preadv(fd, [view[done:]], done)
                if got <= 0:
                    raise OSError(f"{self.path(index)} ended after {done} of {size} bytes")
                done += got
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._remove is not None:
            self._remove()
