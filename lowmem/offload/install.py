"""apply_plan: put a DiT on the compute device the way a Plan says, and install its block runner.

`OffloadedDiT` owns the streamer and the DiT's device part (its non-block modules and its resident
blocks). When the plan says the DiT and the conditioner do not fit together the part is evictable:
it waits in a pinned host copy, the pipeline `place()`s it after the conditioner is evicted (an
asynchronous copy up) and `release()`s it after decoding (tensors re-pointed to the host copy, and
the streamer's slots given back). With everything resident the streamer has nothing to stream and
runs the blocks in order: the same code path on every card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from lowmem.offload.device_part import DevicePart
from lowmem.offload.ledger import MemoryLedger
from lowmem.offload.plan import Plan
from lowmem.offload.streamer import BlockSource, BlockStreamer
from lowmem.offload.streams import Streams, streams_for


class OffloadedDiT:
    def __init__(self, dit: nn.Module, plan: Plan, device: torch.device | str, ledger: Optional[MemoryLedger] = None,
                 disk_dir: Optional[str | Path] = None, source: Optional[BlockSource] = None,
                 streams: Optional[Streams] = None, evictable: bool = False):
        """With `evictable` the device part starts on the host (in its pinned copy) until `place()`;
        otherwise it is placed now, for good."""
        self.dit = dit
        self.plan = plan
        self.device = torch.device(device)
        self.ledger = ledger
        self.streams = streams or streams_for(self.device)
        storage = plan.dit.storage if plan.dit.storage != "none" else "pinned"
        self.streamer = BlockStreamer(
            dit.double_blocks, plan.dit.resident_blocks, self.device, slots=max(1, plan.dit.slots),
            depth=plan.dit.prefetch_depth, storage=storage, disk_dir=disk_dir, source=source, streams=self.streams,
            name="dit",
        )
        dit.block_runner = self.streamer
        others = [m for name, m in dit.named_children() if name != "double_blocks"]
        self.part = DevicePart(others + [dit.double_blocks[i] for i in self.streamer.resident], self.device,
                               self.streams, "dit resident part", evictable)
        if not evictable:
            self.place()

    @property
    def placed(self) -> bool:
        return self.part.placed

    def device_bytes(self) -> int:
        return self.part.nbytes

    def place(self) -> None:
        """The non-block modules and the resident blocks onto the compute device."""
        self.part.place()
        if self.ledger is not None:
            self.ledger.place("dit resident weights", self.device_bytes())
            self.ledger.place("dit slots", self.streamer.slot_bytes * self.streamer.num_slots)

    def release(self) -> None:
        """Back to the host copy, and the streamer's slots given back (only for an evictable DiT)."""
        self.part.release()
        self.streamer.free_slots()
        if self.ledger is not None:
            self.ledger.release("dit resident weights")
            self.ledger.release("dit slots")

    def stats(self) -> dict:
        return {**self.streamer.stats(), "resident_host_copy_bytes": self.part.host_bytes()}

    def close(self) -> None:
        self.streamer.close()
        self.part.close()


def apply_plan(dit: nn.Module, plan: Plan, device: torch.device | str, ledger: Optional[MemoryLedger] = None,
               disk_dir: Optional[str | Path] = None, source: Optional[BlockSource] = None,
               streams: Optional[Streams] = None, evictable: bool = False) -> OffloadedDiT:
    return OffloadedDiT(dit, plan, device, ledger=ledger, disk_dir=disk_dir, source=source, streams=streams,
                        evictable=evictable)
