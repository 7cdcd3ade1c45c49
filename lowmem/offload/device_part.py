"""DevicePart: modules that go onto the compute device for a phase and leave after it.

The DiT's resident part (its non-block modules and resident blocks) and a run-then-evicted
conditioner move on and off the device every edit. Moving them with `module.to()` would copy tens of
GB each way through pageable memory, blocking the host. Instead an evictable part keeps one host copy
of its tensors in a `PinnedArena` (exactly their bytes, page-locked on CUDA):

    place()    one device buffer is allocated, the arena is copied into it on the copy stream and
               the compute stream waits for that copy (the host does not), then every tensor is
               re-pointed to its view in the buffer;
    release()  every tensor is re-pointed back to its view in the arena (no copy back: weights do
               not change) and the device buffer is freed on the compute stream.

Tensors are packed submodule by submodule (each one's own tensors), so building the arena never
holds a second copy of more than one submodule. A part that is not evictable is moved onto the
device once with `module.to`; where the compute device is the host, nothing moves.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lowmem.offload.arena import PinnedArena, arena_bytes
from lowmem.offload.packing import BlockLayout
from lowmem.offload.streams import COMPUTE, COPY, Buffer, Streams


def _own_layouts(modules: list[nn.Module]) -> list[BlockLayout]:
    """One layout per submodule with tensors of its own; a tied tensor is laid out once."""
    seen: dict = {}
    layouts = (BlockLayout(m, recurse=False, seen=seen) for root in modules for m in root.modules())
    return [layout for layout in layouts if layout.entries or layout.aliases]


def host_copy_bytes(modules: list[nn.Module]) -> int:
    """The exact host bytes an evictable part's arena takes (pinned on CUDA)."""
    return arena_bytes(layout.nbytes for layout in _own_layouts(modules))


class DevicePart:
    def __init__(self, modules: list[nn.Module], device: torch.device, streams: Streams, name: str, evictable: bool):
        self.modules = modules
        self.device = torch.device(device)
        self.streams = streams
        self.name = name
        self.evictable = evictable
        self.nbytes = sum(t.numel() * t.element_size() for m in modules for t in list(m.parameters()) + list(m.buffers()))
        self.on_device: Optional[Buffer] = None
        self.placed = False
        self.arena: Optional[PinnedArena] = None
        # A separate device memory exists unless compute runs on the host with immediate copies.
        if evictable and (streams.async_copies or self.device.type != "cpu"):
            self.layouts = _own_layouts(modules)
            self.arena = PinnedArena([layout.nbytes for layout in self.layouts], pin=streams.pin)
            for layout, view in zip(self.layouts, self.arena.views):
                layout.pack_into(view)
                layout.bind(layout.views(view))  # the original tensor is dropped here
            self._retie()
            self.host = streams.host(f"{name} host copy", self.arena.flat)
            self.loaded = streams.event(f"{name} placed")

    def place(self) -> None:
        if self.placed:
            return
        if self.arena is not None:
            self.on_device = self.streams.allocate(f"{self.name} on device", self.arena.nbytes)
            try:
                copy_stream = COPY if self.streams.async_copies else COMPUTE
                if self.streams.async_copies:
                    self.streams.wait_stream(COPY, COMPUTE)  # the memory may still be read by queued compute
                self.streams.copy(self.on_device, self.host, self.name, copy_stream)
                if self.streams.async_copies:
                    self.streams.record(self.loaded, COPY)
                    self.streams.wait(self.loaded, COMPUTE)
                self.streams.use(self.on_device, self.name)
                self._bind(self.on_device.tensor)
            except BaseException:
                self._bind(self.arena.flat)
                if self.streams.async_copies:
                    self.streams.wait_stream(COMPUTE, COPY)  # the failed copy may still be writing it
                self.streams.free(self.on_device)
                self.on_device = None
                raise
        else:
            for module in self.modules:
                module.to(self.device)
        self.placed = True

    def release(self) -> None:
        if not self.placed:
            return
        if not self.evictable:
            raise RuntimeError(f"{self.name} was placed for good (not evictable); it cannot be released")
        if self.on_device is not None:
            self._bind(self.arena.flat)
            self.streams.free(self.on_device)  # on the compute stream, after the compute that read it
            self.on_device = None
        self.placed = False

    def _bind(self, flat: torch.Tensor) -> None:
        for layout, offset in zip(self.layouts, self.arena.offsets):
            layout.bind(layout.views(flat[offset : offset + layout.nbytes]))
        self._retie()

    def _retie(self) -> None:
        for layout in self.layouts:
            for alias in layout.aliases:
                alias.retie()

    def host_bytes(self) -> int:
        return self.arena.nbytes if self.arena is not None else 0

    def close(self) -> None:
        """Release, and unpin the host copy once no copy reads it (the modules keep it as plain memory)."""
        if self.arena is None:
            return
        self.release()
        self.streams.host_wait_stream(COPY)
        self.arena.close()
        self.arena = None
