"""BlockStreamer: runs a block list with some blocks resident and the rest streamed through slots.

Installed as `SpatialEditDiT.block_runner`. Streamed blocks wait in a store (one pinned host arena
holding every streamed block's flat image, or one file per block on disk) and are copied, `depth`
blocks ahead, into a fixed ring of device slots. Every ordering goes through the stream protocol
(`lowmem.offload.streams`), so on the CPU a recording stand-in checks it:

- slots are allocated on the compute stream before the first copy, and the copy stream then waits
  for the compute stream (the allocator may hand out memory that queued compute still reads);
- the copy into a slot waits for the `done` event recorded after the slot's previous block
  computed (only when one was recorded since the slots were allocated), the block waits for the
  `loaded` event recorded after its copy; the host never synchronizes;
- disk tier: a reader thread reads each block into a pinned staging buffer (one per slot) and issues
  its copy, ahead of compute; the compute thread waits only for reads that are not finished yet;
- `free_slots` (between forwards) and `close` make compute wait for every copy before the slots
  are freed; `close` also waits for the copy stream before unpinning the arena.

After the last streamed block of a step the ring has already started on the first blocks of the
next step. With immediate streams (CPU, meta) copies land at once and the same code runs without
events. With no streamed block the runner just runs the blocks in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from lowmem.common.host_memory import return_freed_memory
from lowmem.offload.arena import PinnedArena, arena_bytes
from lowmem.offload.packing import BlockLayout, placeholders_for
from lowmem.offload.reader import Job, ReaderThread
from lowmem.offload.store import DiskStore, HostStore
from lowmem.offload.streams import COMPUTE, COPY, Buffer, Streams, streams_for

# Called with (index, block) before a streamed block is packed: make its tensors real (e.g. read
# them from a checkpoint); the streamer packs them into the store and then frees them.
BlockSource = Callable[[int, nn.Module], None]


def pinned_bytes(block_bytes: Iterable[int], storage: str, slots: int) -> int:
    """The exact page-locked host bytes a CUDA streamer takes: every streamed block's image in one
    arena (pinned tier), or one staging buffer per slot sized to the largest block (disk tier)."""
    sizes = list(block_bytes)
    if storage == "pinned":
        return arena_bytes(sizes)
    if storage == "disk" and sizes:
        return arena_bytes([max(sizes)] * max(1, min(slots, len(sizes))))
    return 0


class BlockStreamer:
    """Streams the blocks not in `resident`; the resident ones are the caller's to place (see
    `OffloadedDiT`, which keeps them with the DiT's other device modules)."""

    def __init__(
        self,
        blocks: nn.ModuleList,
        resident: Iterable[int],
        device: torch.device | str,
        slots: int = 2,
        depth: int = 1,
        storage: str = "pinned",
        disk_dir: Optional[str | Path] = None,
        source: Optional[BlockSource] = None,
        streams: Optional[Streams] = None,
        name: str = "dit",
    ):
        self.device = torch.device(device)
        self.streams = streams or streams_for(self.device)
        self.name = name
        self.blocks = blocks
        keep = set(resident)
        self.resident = [i for i in range(len(blocks)) if i in keep]
        self.streamed = [i for i in range(len(blocks)) if i not in keep]
        self.position = {i: p for p, i in enumerate(self.streamed)}
        self.bytes_streamed = 0
        self.copies = 0
        self.layouts = {i: BlockLayout(blocks[i]) for i in self.streamed}
        pin = self.streams.pin and storage != "pageable"
        if storage == "disk":
            self.store: HostStore | DiskStore = DiskStore(disk_dir)
        else:
            self.store = HostStore({i: l.nbytes for i, l in self.layouts.items()}, pin=pin)
        self.placeholders = placeholders_for(list(self.layouts.values()), self.device)
        for i in self.streamed:
            if source is not None:
                source(i, blocks[i])
            self.store.put(i, self.layouts[i])
            self.layouts[i].park(self.placeholders)
            if source is not None:
                return_freed_memory()  # the block was read just for its store: RAM holds the store, not the model
        n = len(self.streamed)
        self.num_slots = max(1, min(slots, n)) if n else 0
        self.depth = max(0, min(depth, self.num_slots - 1)) if n else 0
        self.slot_bytes = max((l.nbytes for l in self.layouts.values()), default=0)
        self.slots: Optional[list[Buffer]] = None  # allocated before the first copy, see free_slots
        self.slot_key: list[Optional[int]] = [None] * self.num_slots
        self.jobs: list[Optional[Job]] = [None] * self.num_slots  # disk reads not yet waited for
        self.done_since_allocated = [False] * self.num_slots
        self.k = 0  # streamed block runs so far (ring position)
        self.async_copies = self.streams.async_copies
        self.copy_stream = COPY if self.async_copies else COMPUTE
        self.loaded = [self.streams.event(f"{name} loaded {s}") for s in range(self.num_slots)]
        self.done = [self.streams.event(f"{name} done {s}") for s in range(self.num_slots)]
        self.images = {}
        if isinstance(self.store, HostStore):
            self.images = {i: self.streams.host(f"{name} image {i}", t) for i, t in self.store.images.items()}
        self.staging_arena: Optional[PinnedArena] = None
        self.reader: Optional[ReaderThread] = None
        if isinstance(self.store, DiskStore) and n:
            self.reader = ReaderThread(self.streams, f"{name} reader", owner=self)
            if self.async_copies or self.device.type != "cpu":  # reads land in host memory first
                self.staging_arena = PinnedArena([self.slot_bytes] * self.num_slots, pin=self.streams.pin)
                self.staging = [self.streams.host(f"{name} staging {s}", t) for s, t in enumerate(self.staging_arena.views)]
                self.staging_used = [False] * self.num_slots

    # -- the ring --------------------------------------------------------------------------------
    @property
    def static(self) -> bool:
        """Every streamed block has its own slot: each is copied once and then stays."""
        return len(self.streamed) <= self.num_slots

    def _slot_and_key(self, k: int) -> tuple[int, int]:
        p = k % len(self.streamed)
        return (p, p) if self.static else (k % self.num_slots, k)

    def _tag(self, index: int) -> str:
        return f"{self.name} block {index}"

    def _allocate(self) -> None:
        self.slots = [self.streams.allocate(f"{self.name} slot {s}", self.slot_bytes) for s in range(self.num_slots)]
        if self.async_copies:
            self.streams.wait_stream(COPY, COMPUTE)  # compute may still read what the allocator handed out
        self.done_since_allocated = [False] * self.num_slots

    def _issue(self, k: int) -> None:
        if self.slots is None:
            self._allocate()
        s, key = self._slot_and_key(k)
        if self.slot_key[s] == key:
            return
        index = self.streamed[k % len(self.streamed)]
        size = self.layouts[index].nbytes
        slot = self.slots[s].part(0, size)
        wait_done = self.async_copies and self.done_since_allocated[s]
        if self.reader is not None:
            self.jobs[s] = self.reader.submit(lambda: self._read(s, index, slot, wait_done))
        else:
            self._copy_in(s, slot, self.images[index], self._tag(index), wait_done)
        self.slot_key[s] = key
        self.bytes_streamed += size
        self.copies += 1

    def _copy_in(self, s: int, slot: Buffer, src: Buffer, tag: str, wait_done: bool) -> None:
        if wait_done:
            self.streams.wait(self.done[s], COPY)  # the slot's previous block has computed
        self.streams.copy(slot, src, tag, self.copy_stream)
        if self.async_copies:
            self.streams.record(self.loaded[s], COPY)

    def _read(self, s: int, index: int, slot: Buffer, wait_done: bool) -> None:
        """On the reader thread: block `index` from disk into slot `s` (through its staging buffer)."""
        tag = self._tag(index)
        if self.staging_arena is None:
            self.streams.write(slot, tag, lambda t: self.store.read_into(index, t))
            return
        staging = self.staging[s].part(0, slot.tensor.numel())
        if self.staging_used[s] and self.async_copies:
            self.streams.host_wait(self.loaded[s])  # the previous copy out of this staging buffer is done
        self.streams.write(staging, tag, lambda t: self.store.read_into(index, t))
        self._copy_in(s, slot, staging, tag, wait_done)
        self.staging_used[s] = True

    def _drain(self, report: bool = True) -> None:
        """Wait until the reader issued everything submitted (before forgetting or freeing slots);
        then raise the first failed read, if any and if `report`."""
        jobs, self.jobs = [job for job in self.jobs if job is not None], [None] * self.num_slots
        errors = []
        for job in jobs:
            try:
                self.reader.wait(job)
            except Exception as exc:  # noqa: BLE001 - every job is waited for first
                errors.append(exc)
        if errors and report:
            raise errors[0]

    def reset(self) -> None:
        """Forget what the slots hold (after an interrupted forward). A block may have stopped
        without recording its `done` event, so later copies wait for all compute issued so far; it
        may also still point into its slot, so every streamed block is parked (a freed slot's memory
        must not stay referenced)."""
        self._drain()
        if self.async_copies and self.slots is not None:
            self.streams.wait_stream(COPY, COMPUTE)
        for i in self.streamed:
            self.layouts[i].park(self.placeholders)
        self.slot_key = [None] * self.num_slots
        self.k = 0

    def free_slots(self) -> None:
        """Give the device slots back until the next forward (a conditioner streamed once per edit,
        or a DiT released after decoding, should not hold them). Only between forwards."""
        if self.slots is None:
            return
        try:
            self.reset()
        finally:
            if self.async_copies:
                self.streams.wait_stream(COMPUTE, COPY)  # no copy may still write a slot compute frees
            for slot in self.slots:
                self.streams.free(slot)
            self.slots = None

    def enter(self, i: int) -> None:
        """Before block `i` runs: for a streamed block, issue the copies `depth` ahead and bind the
        block's tensors to its slot once its copy is done (on CUDA: the compute stream waits)."""
        p = self.position.get(i)
        if p is None:
            return
        n = len(self.streamed)
        if p == 0 and self.k % n:
            self.reset()  # a forward that was interrupted mid-step left the ring out of phase
        k = self.k
        for ahead in range(self.depth + 1):
            self._issue(k + ahead)
        s, _ = self._slot_and_key(k)
        if self.jobs[s] is not None:
            job, self.jobs[s] = self.jobs[s], None
            self.reader.wait(job)  # its read is not finished: nothing else could run meanwhile
        if self.async_copies:
            self.streams.wait(self.loaded[s], COMPUTE)
        self.streams.use(self.slots[s], self._tag(i))
        layout = self.layouts[i]
        layout.bind(layout.views(self.slots[s].tensor))

    def exit(self, i: int) -> None:
        """After block `i` ran: mark its slot free for the next copy and park its tensors."""
        if i not in self.position:
            return
        s, _ = self._slot_and_key(self.k)
        self.streams.record(self.done[s], COMPUTE)
        self.done_since_allocated[s] = True
        self.layouts[i].park(self.placeholders)
        self.k += 1

    def __call__(self, blocks: nn.ModuleList, img: torch.Tensor, txt: torch.Tensor, ctx):
        """The DiT's block runner: every block in order, streamed ones through the slots."""
        if blocks is not self.blocks:
            raise ValueError("this streamer was built for another block list")
        for i, block in enumerate(blocks):
            self.enter(i)
            img, txt = block(img, txt, ctx, i)
            self.exit(i)
        return img, txt

    def attach(self) -> list:
        """Stream a block list whose loop belongs to someone else (the Qwen3-VL decoder layers):
        forward hooks call `enter` / `exit` around each streamed block. Returns the hook handles."""
        handles = []
        for i in self.streamed:
            block = self.blocks[i]
            handles.append(block.register_forward_pre_hook(lambda module, args, i=i: self.enter(i)))
            handles.append(block.register_forward_hook(lambda module, args, output, i=i: self.exit(i)))
        return handles

    # -- bookkeeping -----------------------------------------------------------------------------
    def host_bytes(self) -> int:
        """Host bytes held for streaming: the block images (pinned or not) and the staging buffers."""
        staging = self.staging_arena.nbytes if self.staging_arena is not None else 0
        return self.store.host_bytes() + staging

    def stats(self) -> dict:
        return {
            "streamed_blocks": len(self.streamed),
            "resident_blocks": len(self.resident),
            "slots": self.num_slots,
            "prefetch_depth": self.depth,
            "storage": self.store.tier,
            "slot_bytes": self.slot_bytes * self.num_slots,
            "host_bytes": self.host_bytes(),
            "bytes_streamed": self.bytes_streamed,
            "copies": self.copies,
        }

    def close(self) -> None:
        """Wait for copies in flight, give the slots back, stop the reader, release host memory."""
        if self.reader is not None:
            self._drain(report=False)  # prefetches nobody will use: a failed one does not matter now
        try:
            self.free_slots()
        finally:
            if self.reader is not None:
                self.reader.close()
            if self.streamed:
                self.streams.host_wait_stream(COPY)  # nothing may read the arena once it is unpinned
            self.store.close()
            if self.staging_arena is not None:
                self.staging_arena.close()
