"""CacheRing: host-placed SpotEdit K/V caches, moved through a ring of device slots like streamed weights.

Every block's cache lives in one pinned arena on the host. The DiT runs its blocks in order, and
each block's `kv_hook` asks for its block's cache, so the ring works exactly as the weight ring:

  spot step   block i's cache goes host -> slot (i % slots) on the copy stream, `prefetch` blocks
              ahead of the block computing; compute waits for the load, updates the slot in place,
              and the target part only goes back device -> host on the writeback stream (the
              condition part does not change in spot steps).
  full step   compute writes the block's fresh K/V into the slot (the slot is the staging buffer
              that keeps the memory alive), and the whole block goes device -> host on the
              writeback stream after the compute that produced it.

All ordering goes through a `Streams` object (lowmem.offload.streams) with events, never a host
synchronize:
  - a load into a slot waits for the compute that last used it and for the writeback that last
    read it, and for the writeback into its host block (the host copy must be current);
  - compute waits for the load of its block, or (full step) for the slot's last copy;
  - a writeback waits for the compute that filled the slot.
Loads and writebacks run on streams of their own (`LOAD`, `WRITEBACK`): the two directions of the bus
overlap, and a load does not wait behind the weights the streamer prefetches. With
`RecordingStreams` the log replays through `stream_check`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from lowmem.offload.arena import PinnedArena
from lowmem.offload.streams import COMPUTE, Buffer, Event, Streams

# The caches' own copy streams. A load has its own, not the weight streamer's: a block's cache is
# needed when the block computes, and queued behind the weights prefetched `depth` blocks ahead it
# would arrive late.
LOAD = "spot load"  # host -> device
WRITEBACK = "spot writeback"  # device -> host


def _tag(index: int, version: int) -> str:
    return f"spot kv {index} v{version}"


class CacheRing:
    def __init__(self, blocks: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 slots: int, prefetch: int, streams: Streams):
        """`shape` / `dtype`: one block's cache, (L_img, 2, B, H, D); `slots` device slots, loads
        issued `prefetch` blocks ahead of the block computing."""
        self.blocks, self.shape, self.dtype, self.device = blocks, shape, dtype, device
        self.num_slots = max(1, min(slots, blocks))
        self.prefetch = max(0, min(prefetch, self.num_slots - 1))
        self.streams = streams
        self.row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        self.block_bytes = shape[0] * self.row_bytes
        self.arena = PinnedArena([self.block_bytes] * blocks, pin=streams.pin)
        self.host = [streams.host(f"spot cache host {i}", view) for i, view in enumerate(self.arena.views)]
        self.version = [0] * blocks  # content of block i's cache: bumped by every compute that changes it
        self.stored: list[Optional[Event]] = [None] * blocks  # after the last writeback into host block i
        self.slots: list[Buffer] = []
        self.loaded: list[Optional[Event]] = []
        self._allocate_slots()

    def _ensure_slots(self) -> None:
        if not self.slots:  # given back after the last edit
            self._allocate_slots()

    def _allocate_slots(self) -> None:
        """Device slots for an edit (the arena outlives them: one pinned arena serves edit after edit)."""
        n = self.num_slots
        self.slots = [self.streams.allocate(f"spot cache slot {s}", self.block_bytes) for s in range(n)]
        self.streams.wait_stream(LOAD, COMPUTE)  # the slots' memory may have been compute's a moment ago
        self.streams.wait_stream(WRITEBACK, COMPUTE)
        self.holder: list[Optional[int]] = [None] * n  # block whose cache the slot holds
        self.loaded = [None] * n  # after the slot's last load
        self.released: list[Optional[Event]] = [None] * n  # after compute's last use of the slot
        self.filled: list[Optional[Event]] = [None] * n  # after compute's last write of the slot
        self.open_slot: Optional[int] = None  # the slot compute is using now
        self.next_load = 0  # the next block to load in this forward
        self.bytes_loaded = 0  # this edit's copies, both ways
        self.bytes_written_back = 0

    @property
    def host_bytes(self) -> int:
        return self.arena.nbytes

    def _event(self, events: list, i: int, name: str, stream: str) -> None:
        if events[i] is None:
            events[i] = self.streams.event(f"{name} {i}")
        self.streams.record(events[i], stream)

    def _wait(self, event: Optional[Event], stream: str) -> None:
        if event is not None:  # None: nothing happened that this stream must wait for
            self.streams.wait(event, stream)

    def _slot_view(self, s: int) -> torch.Tensor:
        return self.slots[s].tensor.view(self.dtype).view(self.shape)

    def _release_open(self) -> None:
        """The block that used the open slot has all its compute issued (its attention read the slot
        after the hook returned): mark the slot released."""
        s = self.open_slot
        if s is not None:
            index = self.holder[s]
            self.streams.use(self.slots[s], _tag(index, self.version[index]))
            self._event(self.released, s, "spot slot released", COMPUTE)
            self.open_slot = None

    def _drained(self, s: int) -> Optional[Event]:
        """The event after the writeback that last read slot `s` (None if none is pending)."""
        held = self.holder[s]
        return self.stored[held] if held is not None else None

    # -- a forward --------------------------------------------------------------------------------
    def begin_forward(self, load: bool) -> None:
        """Start a forward; a spot step starts loading its first blocks right away."""
        self._ensure_slots()
        self._release_open()  # an interrupted forward may have left a slot open
        self.next_load = 0
        if load:
            self._load_until(self.prefetch)

    def end_forward(self) -> None:
        self._release_open()

    def _load_until(self, last: int) -> None:
        while self.next_load <= min(last, self.blocks - 1):
            self._load(self.next_load)
            self.next_load += 1

    def _load(self, index: int) -> None:
        s = index % self.num_slots
        self._wait(self.released[s], LOAD)  # compute is done with the previous occupant
        self._wait(self._drained(s), LOAD)  # ... and so is its writeback
        self._wait(self.stored[index], LOAD)  # the host copy of this block is current
        self.streams.copy(self.slots[s], self.host[index], _tag(index, self.version[index]), LOAD)
        self._event(self.loaded, s, "spot slot loaded", LOAD)
        self.holder[s] = index
        self.bytes_loaded += self.block_bytes

    # -- what the hooks call ----------------------------------------------------------------------
    def acquire(self, index: int) -> torch.Tensor:
        """Spot step: block `index`'s cache in its slot, loaded, for compute to update in place."""
        self._ensure_slots()
        self._release_open()
        if index >= self.next_load:  # the first block of a forward without begin_forward, or prefetch 0
            self.next_load = index
        self._load_until(index + self.prefetch)
        s = index % self.num_slots
        self._wait(self.loaded[s], COMPUTE)
        version = self.version[index]
        self.version[index] += 1
        self.streams.use(self.slots[s], _tag(index, version), writes=_tag(index, version + 1))
        self.open_slot = s
        return self._slot_view(s)

    def stage(self, index: int) -> torch.Tensor:
        """Full step: a slot for compute to write block `index`'s fresh cache into."""
        self._ensure_slots()
        self._release_open()
        s = index % self.num_slots
        self._wait(self.loaded[s], COMPUTE)  # a load still landing in the slot (an unused prefetch)
        self._wait(self._drained(s), COMPUTE)  # the previous occupant's writeback still reads it
        self.version[index] += 1
        self.streams.use(self.slots[s], None, writes=_tag(index, self.version[index]))
        self.holder[s] = index
        self.open_slot = s
        return self._slot_view(s)

    def write_back(self, index: int, tokens: int) -> None:
        """Copy the first `tokens` token rows of block `index`'s open slot back to its host block,
        after the compute that filled them."""
        s = self.open_slot
        if s is None or self.holder[s] != index:
            raise RuntimeError(f"write_back of SpotEdit cache block {index}, which is not the open slot")
        self._event(self.filled, s, "spot slot filled", COMPUTE)
        self.streams.wait(self.filled[s], WRITEBACK)
        nbytes = tokens * self.row_bytes
        self.streams.copy(self.host[index].part(0, nbytes), self.slots[s].part(0, nbytes),
                          _tag(index, self.version[index]), WRITEBACK)
        self._event(self.stored, index, "spot host stored", WRITEBACK)
        self.bytes_written_back += nbytes

    # -- outside the hot path ---------------------------------------------------------------------
    def host_block(self, index: int) -> torch.Tensor:
        return self.host[index].tensor.view(self.dtype).view(self.shape)

    def synchronize(self) -> None:
        """The host thread waits until every writeback landed in the arena."""
        for event in self.stored:
            if event is not None:
                self.streams.host_wait(event)

    def free_slots(self) -> None:
        """Give the device slots back, after every copy that touches them; the arena stays pinned."""
        if not self.slots:
            return
        self._release_open()
        self.streams.wait_stream(COMPUTE, LOAD)
        self.streams.wait_stream(COMPUTE, WRITEBACK)
        for slot in self.slots:
            self.streams.free(slot)
        self.slots = []

    def close(self) -> None:
        """Free the slots and give the pinned arena back."""
        self.free_slots()
        for event in self.loaded + self.stored:  # no copy may still read or write the arena
            if event is not None:
                self.streams.host_wait(event)
        self.arena.close()
