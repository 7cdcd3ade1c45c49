"""How long a denoising step of a plan takes, and whether streaming hides behind compute.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over the real modules on `meta` (the
same calls whose bytes `phase_peaks` traces): the DiT forward, a SpotEdit partial step at its
expected active fraction and SpotEdit's selector, at the plan's resolution, text length and
batch. A DiT's FLOPs are linear in its depth, so it is counted at 1 and 2 blocks and extrapolated.
Bytes copied per step are the plan's streamed blocks (plus SpotEdit caches kept on the host, fetched
once per block). From a preset's device figures (dense bf16 TFLOP/s and the fraction of it a DiT
forward sustains, pinned host-to-device GB/s, sources in the preset file):

    compute = FLOPs / (bf16_tflops * sustained);  copy = bytes / h2d_gbps
    step    = max(compute, copy)   (blocks are prefetched on a side stream while others compute)

Not modelled: the dequantisation of int8/nf4 weights before each GEMM (~5 bytes of device memory
traffic per weight, ~0.01-0.1 s per step on a 24 GB card), launch overheads, the first block's
copy that nothing hides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from lowmem.models.dit_config import DiTConfig
from lowmem.offload.budget import format_bytes
from lowmem.offload.plan import Plan
from lowmem.planning import phase_peaks as peaks
from lowmem.planning.planner import SPOT_ACTIVE_FRACTION
from lowmem.planning.presets import Preset


def count_flops(call: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


@lru_cache(maxsize=32)
def dit_flops(config: DiTConfig, resolution: int, text_tokens: int, batch: int,
              active_fraction: Optional[float] = None) -> int:
    """FLOPs of one DiT forward (`active_fraction` None) or one SpotEdit partial step, all blocks."""

    def at(depth: int) -> int:
        model = peaks.traced_dit(config, "bf16", torch.bfloat16, depth)
        if active_fraction is None:
            return count_flops(peaks.forward_call(model, resolution, text_tokens, batch))
        return count_flops(peaks.spot_call(model, resolution, text_tokens, batch, active_fraction))

    one, two = at(1), at(2)
    return one + (config.mm_double_blocks_depth - 1) * (two - one)


@lru_cache(maxsize=8)
def selector_flops(vae_config: tuple, resolution: int) -> int:
    return count_flops(peaks.selector_call(vae_config, resolution))


@dataclass
class StepTime:
    """One kind of denoising step: its FLOPs and bytes copied, and the time each takes."""

    name: str
    flops: int
    copy_bytes: int
    compute_s: float
    copy_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.copy_s)

    @property
    def hidden(self) -> bool:
        return self.copy_s <= self.compute_s


def predict(plan: Plan, preset: Preset, config: DiTConfig) -> list[StepTime]:
    """The step kinds of `plan` (full; with SpotEdit also a partial step and the selector) on `preset`."""
    if not (preset.bf16_tflops and preset.sustained and preset.h2d_gbps):
        raise ValueError(f"preset {preset.name} has no device figures (bf16_tflops, sustained, h2d_gbps)")
    flops_per_s = preset.bf16_tflops * 1e12 * preset.sustained
    bytes_per_s = preset.h2d_gbps * 1e9
    shape = (config, plan.resolution, plan.text_tokens, plan.batch)
    blocks = plan.dit.streamed_bytes_per_step
    host_caches = plan.spotedit.cache_bytes if plan.spotedit.cache_placement == "host" else 0

    def step(name: str, flops: int, copied: int) -> StepTime:
        return StepTime(name, flops, copied, flops / flops_per_s, copied / bytes_per_s)

    steps = [step("full step", dit_flops(*shape), blocks)]
    if plan.spotedit.enabled:
        fraction = SPOT_ACTIVE_FRACTION
        steps.append(step(f"spot step ({fraction:.0%} active)", dit_flops(*shape, fraction), blocks + host_caches))
        from lowmem.models.dit_config import FULL_DIT_CONFIG
        from lowmem.models.vae import FULL_VAE_CONFIG, TINY_VAE_CONFIG

        vae = peaks.vae_config_key(FULL_VAE_CONFIG if config == FULL_DIT_CONFIG else TINY_VAE_CONFIG)
        steps.append(step("spot selector", selector_flops(vae, plan.resolution), 0))
    return steps


def denoise_seconds(steps: list[StepTime], count: int = 30) -> tuple[int, int, float]:
    """(full steps, spot steps, seconds) of denoising `count` steps: with SpotEdit, its schedule's
    initial and reset steps run in full and every other step is a spot step; the selector runs once
    per spot segment (`SpotConfig.selection_steps`)."""
    full = steps[0]
    if len(steps) == 1:
        return count, 0, count * full.seconds
    from lowmem.spotedit.config import SpotConfig

    initial, resets = SpotConfig().schedule(count)
    n_full = initial + len(resets)
    spot, selector = steps[1], steps[2]
    calls = len(SpotConfig().selection_steps(count))
    return n_full, count - n_full, n_full * full.seconds + (count - n_full) * spot.seconds + calls * selector.seconds


def format_steps(steps: list[StepTime], preset: Preset, count: int = 30) -> str:
    rows = [("step", "FLOPs", "compute", "copied", "copy", "step time")]
    for s in steps:
        copy = f"{s.copy_s:.2f} s" + ("" if s.hidden or not s.copy_bytes else " (not hidden)")
        rows.append((s.name, f"{s.flops / 1e12:.1f} TFLOP", f"{s.compute_s:.2f} s", format_bytes(s.copy_bytes), copy,
                     f"{s.seconds:.2f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"time model ({preset.name}: {preset.bf16_tflops:g} TFLOP/s bf16 x {preset.sustained:g} sustained, "
             f"{preset.h2d_gbps:g} GB/s host-to-device)"]
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    n_full, n_spot, seconds = denoise_seconds(steps, count)
    lines.append(f"denoising {count} steps ({n_full} full" + (f", {n_spot} spot" if n_spot else "") +
                 f"): {seconds:.0f} s predicted")
    return "\n".join(lines)
