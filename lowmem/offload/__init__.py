"""Offload, the doing half: run a Plan. Block streaming through device slots, pinned arenas and
disk stores, the parts placed per phase, the stream protocol and the memory ledger.

What to keep where is decided above, in `lowmem.planning`; `Plan` (and the byte sizes it is written
in) lives here because it is what this package executes.
"""

from lowmem.offload.budget import BudgetError, format_bytes, parse_bytes
from lowmem.offload.install import OffloadedDiT, apply_plan
from lowmem.offload.ledger import MemoryLedger
from lowmem.offload.plan import Plan
from lowmem.offload.runtime import OffloadRuntime
from lowmem.offload.streamer import BlockStreamer

__all__ = [
    "BlockStreamer", "BudgetError", "MemoryLedger", "OffloadedDiT", "OffloadRuntime", "Plan", "apply_plan",
    "format_bytes", "parse_bytes",
]
