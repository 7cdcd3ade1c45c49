"""MemoryLedger: every byte the runtime places on the compute device, by name, with its peak.

The runtime calls `place(name, bytes)` when it puts something on the device (resident weights,
the slot ring, SpotEdit caches, an activation estimate for the phase) and `release(name)` when it
takes it away. The run report prints its peak beside what CUDA's allocator measured per phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class MemoryLedger:
    budget: Optional[int] = None
    device: str = "cpu"
    items: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    peak_items: dict[str, int] = field(default_factory=dict)

    @property
    def current(self) -> int:
        return sum(self.items.values())

    def place(self, name: str, nbytes: int) -> None:
        self.items[name] = int(nbytes)
        if self.current > self.peak:
            self.peak = self.current
            self.peak_items = dict(self.items)

    def release(self, name: str) -> None:
        self.items.pop(name, None)

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.peak > self.budget
