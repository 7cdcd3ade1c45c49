"""apply_plan: put a DiT on the compute device the way a Plan says, and install its block runner.

`OffloadedDiT` owns the streamer and knows the DiT's device part (its non-block modules and its
resident blocks), which the pipeline can `place()` after the conditioner is evicted and `release()`
after decoding when the plan says the two do not fit together. With everything resident the
streamer has nothing to stream and runs the blocks in order: the same code path on every card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from lowmem.offload.ledger import MemoryLedger
from lowmem.offload.plan import Plan
from lowmem.offload.streamer import BlockSource, BlockStreamer


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class OffloadedDiT:
    def __init__(self, dit: nn.Module, plan: Plan, device: torch.device | str, ledger: Optional[MemoryLedger] = None,
                 disk_dir: Optional[str | Path] = None, source: Optional[BlockSource] = None):
        self.dit = dit
        self.plan = plan
        self.device = torch.device(device)
        self.ledger = ledger
        storage = plan.dit.storage if plan.dit.storage != "none" else "pinned"
        self.streamer = BlockStreamer(
            dit.double_blocks, plan.dit.resident_blocks, self.device, slots=max(1, plan.dit.slots),
            depth=plan.dit.prefetch_depth, storage=storage, disk_dir=disk_dir, source=source, ledger=ledger,
        )
        dit.block_runner = self.streamer
        self.placed = False
        self.place()

    def _device_part(self) -> list[nn.Module]:
        others = [m for name, m in self.dit.named_children() if name != "double_blocks"]
        return others + [self.dit.double_blocks[i] for i in self.streamer.resident]

    def device_bytes(self) -> int:
        return sum(_tensor_bytes(m) for m in self._device_part())

    def place(self) -> None:
        """Move the non-block modules and the resident blocks onto the compute device."""
        for module in self._device_part():
            module.to(self.device)
        self.placed = True
        if self.ledger is not None:
            self.ledger.place("dit resident weights", self.device_bytes())

    def release(self, host: torch.device | str = "cpu") -> None:
        """Move them back to the host (nothing to do when the compute device is the host)."""
        if self.device.type != torch.device(host).type:
            for module in self._device_part():
                module.to(host)
        self.placed = False
        if self.ledger is not None:
            self.ledger.release("dit resident weights")

    def stats(self) -> dict:
        return self.streamer.stats()

    def close(self) -> None:
        self.streamer.close()


def apply_plan(dit: nn.Module, plan: Plan, device: torch.device | str, ledger: Optional[MemoryLedger] = None,
               disk_dir: Optional[str | Path] = None, source: Optional[BlockSource] = None) -> OffloadedDiT:
    return OffloadedDiT(dit, plan, device, ledger=ledger, disk_dir=disk_dir, source=source)
