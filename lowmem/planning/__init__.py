"""Planning, the deciding half of offload: one memory budget -> a Plan, or one error saying what to change.

Every number it uses is counted or traced from the real modules on `meta`: weight bytes per format,
the live-byte peak of each phase, SpotEdit's cache bytes, the CUDA reserve; the time model prices a
plan per preset. It reads `lowmem.spotedit` and `lowmem.offload` to size them, and runs neither.
"""

from lowmem.planning.planner import plan_for, spread
from lowmem.planning.presets import Preset, PresetError, available_presets, load_preset

__all__ = ["Preset", "PresetError", "available_presets", "load_preset", "plan_for", "spread"]
