"""Where streamed blocks wait between their turns: host RAM (pinned on CUDA) or per-block disk files.

Both stores hold each block as one flat byte image laid out by its `BlockLayout`, and both fill a
device slot with `load(index, slot, stream)`. The disk store reads with `os.preadv` straight into
the destination (or into a pinned staging buffer when the slot is on a GPU); it keeps no mmap
alive, so the process's resident memory stays bounded by the slots, not by the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from lowmem.offload.packing import BlockLayout


class HostStore:
    """One flat host buffer per block; pinned when the compute device is a GPU."""

    tier = "pinned"

    def __init__(self, pin: bool):
        self.pin = pin and torch.cuda.is_available()
        self.tier = "pinned" if self.pin else "pageable"
        self.buffers: dict[int, torch.Tensor] = {}

    def put(self, index: int, layout: BlockLayout) -> None:
        flat = torch.empty(layout.nbytes, dtype=torch.uint8, pin_memory=self.pin)
        layout.pack_into(flat)
        self.buffers[index] = flat

    def host_bytes(self) -> int:
        return sum(b.numel() for b in self.buffers.values())

    def load(self, index: int, slot: torch.Tensor, staging: Optional[torch.Tensor]) -> None:
        src = self.buffers[index]
        slot[: src.numel()].copy_(src, non_blocking=slot.is_cuda)

    def close(self) -> None:
        self.buffers.clear()


class DiskStore:
    """One raw file per block in `folder` (a private temporary folder by default, removed on close)."""

    tier = "disk"

    def __init__(self, folder: Optional[str | Path] = None):
        self._owned = folder is None
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="lowmem-blocks-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[int, int] = {}

    def path(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}.bin"

    def put(self, index: int, layout: BlockLayout) -> None:
        flat = torch.zeros(layout.nbytes, dtype=torch.uint8)
        layout.pack_into(flat)
        tmp = self.path(index).with_suffix(".part")
        with open(tmp, "wb") as f:
            f.write(memoryview(flat.numpy()))
        os.replace(tmp, self.path(index))
        self.sizes[index] = layout.nbytes

    def host_bytes(self) -> int:
        return 0

    def load(self, index: int, slot: torch.Tensor, staging: Optional[torch.Tensor]) -> None:
        size = self.sizes[index]
        target = staging if slot.is_cuda else slot
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
        if slot.is_cuda:
            slot[:size].copy_(staging[:size], non_blocking=True)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)
