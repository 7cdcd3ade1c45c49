"""BlockStreamer: runs a block list with some blocks resident and the rest streamed through slots.

Installed as `SpatialEditDiT.block_runner`. Streamed blocks wait in a store (one flat pinned host
buffer per block, or one file per block on disk) and are copied, `depth` blocks ahead, into a fixed
ring of device slots allocated once. On CUDA the copies run on a side stream: the copy into a slot
waits for the event recorded after the slot's previous block computed, and the block waits for the
event recorded after its copy; the host never synchronizes (except to reuse a disk staging
buffer). After the last streamed block of a step the ring has already started on the first blocks
of the next step. On the CPU the same code copies synchronously. With no streamed block the runner
just runs the blocks in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from lowmem.offload.ledger import MemoryLedger
from lowmem.offload.packing import BlockLayout, placeholders_for
from lowmem.offload.store import DiskStore, HostStore

# Called with (index, block) before a streamed block is packed: make its tensors real (e.g. read
# them from a checkpoint); the streamer packs them into the store and then frees them.
BlockSource = Callable[[int, nn.Module], None]


class BlockStreamer:
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
        ledger: Optional[MemoryLedger] = None,
    ):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.blocks = blocks
        keep = set(resident)
        self.resident = [i for i in range(len(blocks)) if i in keep]
        self.streamed = [i for i in range(len(blocks)) if i not in keep]
        self.position = {i: p for p, i in enumerate(self.streamed)}
        self.ledger = ledger
        self.bytes_streamed = 0
        self.copies = 0
        for i in self.resident:
            blocks[i].to(self.device)
        self.layouts = {i: BlockLayout(blocks[i]) for i in self.streamed}
        self.store = DiskStore(disk_dir) if storage == "disk" else HostStore(pin=self.cuda and storage != "pageable")
        self.placeholders = placeholders_for(list(self.layouts.values()), self.device)
        for i in self.streamed:
            if source is not None:
                source(i, blocks[i])
            self.store.put(i, self.layouts[i])
            self.layouts[i].park(self.placeholders)
        n = len(self.streamed)
        self.num_slots = max(1, min(slots, n)) if n else 0
        self.depth = max(0, min(depth, self.num_slots - 1)) if n else 0
        self.slot_bytes = max((l.nbytes for l in self.layouts.values()), default=0)
        self.slots: Optional[list[torch.Tensor]] = None  # allocated before the first copy, see free_slots
        self.staging = None
        if self.cuda and isinstance(self.store, DiskStore):
            self.staging = [torch.empty(self.slot_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(self.num_slots)]
        self.slot_key: list[Optional[int]] = [None] * self.num_slots
        self.k = 0  # streamed block runs so far (ring position)
        if self.cuda and n:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
            self.loaded = [torch.cuda.Event() for _ in range(self.num_slots)]
            self.done = [torch.cuda.Event() for _ in range(self.num_slots)]
        if ledger is not None and n:
            ledger.place("dit slots", self.slot_bytes * self.num_slots)

    # -- the ring --------------------------------------------------------------------------------
    @property
    def static(self) -> bool:
        """Every streamed block has its own slot: each is copied once and then stays."""
        return len(self.streamed) <= self.num_slots

    def _slot_and_key(self, k: int) -> tuple[int, int]:
        p = k % len(self.streamed)
        return (p, p) if self.static else (k % self.num_slots, k)

    def _issue(self, k: int) -> None:
        if self.slots is None:
            self.slots = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(self.num_slots)]
        s, key = self._slot_and_key(k)
        if self.slot_key[s] == key:
            return
        index = self.streamed[k % len(self.streamed)]
        staging = self.staging[s] if self.staging is not None else None
        if self.cuda:
            if staging is not None:
                self.loaded[s].synchronize()  # the staging buffer's previous copy must have left it
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.done[s])
                self.store.load(index, self.slots[s], staging)
                self.loaded[s].record(self.copy_stream)
        else:
            self.store.load(index, self.slots[s], staging)
        self.slot_key[s] = key
        self.bytes_streamed += self.layouts[index].nbytes
        self.copies += 1

    def reset(self) -> None:
        """Forget what the slots hold (after an interrupted forward)."""
        self.slot_key = [None] * self.num_slots
        self.k = 0

    def free_slots(self) -> None:
        """Give the device slots back until the next forward (a conditioner streamed once per edit
        should not hold them through denoising). Only between forwards."""
        if self.cuda and self.slots is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)  # no copy may still write
        self.slots = None
        self.reset()

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
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.loaded[s])
        layout = self.layouts[i]
        layout.bind(layout.views(self.slots[s]))

    def exit(self, i: int) -> None:
        """After block `i` ran: mark its slot free for the next copy and park its tensors."""
        if i not in self.position:
            return
        s, _ = self._slot_and_key(self.k)
        if self.cuda:
            self.done[s].record(torch.cuda.current_stream(self.device))
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
    def stats(self) -> dict:
        return {
            "streamed_blocks": len(self.streamed),
            "resident_blocks": len(self.resident),
            "slots": self.num_slots,
            "prefetch_depth": self.depth,
            "storage": self.store.tier,
            "slot_bytes": self.slot_bytes * self.num_slots,
            "host_bytes": self.store.host_bytes(),
            "bytes_streamed": self.bytes_streamed,
            "copies": self.copies,
        }

    def close(self) -> None:
        self.store.close()
