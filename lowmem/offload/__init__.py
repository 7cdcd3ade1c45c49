"""Offload: budget -> Plan (planner), block streaming through device slots, and the memory ledger."""

from lowmem.offload.budget import BudgetError, format_bytes, parse_bytes
from lowmem.offload.install import OffloadedDiT, apply_plan
from lowmem.offload.ledger import MemoryLedger
from lowmem.offload.plan import Plan
from lowmem.offload.planner import plan_for, spread
from lowmem.offload.runtime import OffloadRuntime
from lowmem.offload.presets import Preset, PresetError, available_presets, load_preset
from lowmem.offload.streamer import BlockStreamer

__all__ = [
    "BlockStreamer", "BudgetError", "MemoryLedger", "OffloadedDiT", "OffloadRuntime", "Plan", "Preset", "PresetError", "apply_plan",
    "available_presets", "format_bytes", "load_preset", "parse_bytes", "plan_for", "spread",
]
