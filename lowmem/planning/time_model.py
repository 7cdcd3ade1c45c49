"""How long a denoising step of a plan takes, per compute mode, and whether streaming hides behind compute.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over the real modules on `meta` (the
same calls whose bytes `phase_peaks` traces): the DiT forward, a SpotEdit partial step at its
expected active fraction and SpotEdit's selector, at the plan's resolution, text length and
batch. A DiT's FLOPs are linear in its depth, so it is counted at 1 and 2 blocks and extrapolated.
Per compute mode the DiT is traced after `quantize.plan.use_compute(model, mode)` (the one traced
DiT of `phase_peaks.traced_dit`), and the counts are split per op: `aten._scaled_mm` runs at the
card's fp8 rate, `aten._int_mm` (counted 2*M*K*N, as mm) at its int8 rate, everything else (attention,
the small Linears a W8A8 mode leaves in bf16: embedders, modulation, the head; the selector's
convolutions) at its bf16 rate. No FLOP figure is a table: a change to the model or to which Linears
`use_compute` swaps shows in the next count. Bytes copied per step are the plan's streamed blocks
(plus SpotEdit caches kept on the host, fetched once per block). From a preset's device figures
(dense peaks per mode and the fraction of them a DiT forward sustains, pinned host-to-device GB/s,
sources in the preset file):

    compute = sum over modes m of FLOPs_m / (peak_m * sustained);  copy = bytes / h2d_gbps
    step    = max(compute, copy)   (blocks are prefetched on a side stream while others compute)

Not modelled: the dequantisation of int8/nf4 weights before each bf16 GEMM (~5 bytes of device
memory traffic per weight, ~0.01-0.1 s per step on a 24 GB card); launch overheads; the first
block's copy that nothing hides; that one `sustained` fraction fits every mode's GEMM shapes. In a
W8A8 mode, only the GEMMs' rate is modelled, not the memory traffic around them: the per-token
activation quantization (absmax, a float32 copy, divide, round, clamp, the codes written, in
`quantize.compute.quantize_rows`' chunks), the epilogue that scales the int32 / fp8 product back
(int32 -> float32 -> two multiplies -> bf16) and the weight's re-quantization on every call where the
stored scheme is not the mode's own (a bf16 or nf4 DiT run in int8 or fp8; an int8 folder in int8
reads its codes as stored). Counted on meta (every non-view op's inputs and outputs, CFG batch 2 at
1024²) that is, per full step, more than bf16 moves: int8 ~2.6 TB on an nf4 DiT (re-quantized per
call) and ~1.8 TB on an int8 one (codes as stored); fp8 ~1.6 TB on nf4, ~1.0 TB on fp8. At an RTX
4090's ~1 TB/s that is 1-2.5 s, as long as the int8 GEMMs themselves, unless those kernels are fused.
The W8A8 rows are a bound on what the tensor cores allow, not a prediction of the eager path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from lowmem.models.dit_config import DiTConfig
from lowmem.offload.budget import format_bytes
from lowmem.offload.plan import Plan, text_table
from lowmem.planning import phase_peaks as peaks
from lowmem.planning.planner import SPOT_ACTIVE_FRACTION
from lowmem.planning.presets import Preset
from quantize.compute import COMPUTE_MODES, check_mode

# What each op's FLOPs run at; any other op runs at the bf16 rate.
_OP_MODE = {torch.ops.aten._scaled_mm: "fp8", torch.ops.aten._int_mm: "int8"}


def _int_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """(M, K) int8 x (K, N) int8: 2*M*K*N, as FlopCounterMode counts mm (it has no formula of its own)."""
    m, k = a_shape
    _, n = b_shape
    return 2 * m * k * n


def count_flops_by_mode(call: Callable[[], object]) -> dict[str, int]:
    """FLOPs of `call` split by the rate they run at: {"bf16": ..., "fp8": ..., "int8": ...}."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={torch.ops.aten._int_mm: _int_mm_flops}) as counter:
        call()
    split = dict.fromkeys(COMPUTE_MODES, 0)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        split[_OP_MODE.get(op, "bf16")] += flops
    return split


def count_flops(call: Callable[[], object]) -> int:
    return sum(count_flops_by_mode(call).values())


@lru_cache(maxsize=64)
def _dit_flops(config: DiTConfig, resolution: int, text_tokens: int, batch: int, active_fraction: float | None,
               compute: str) -> tuple[tuple[str, int], ...]:
    def at(depth: int) -> dict[str, int]:
        model = peaks.traced_dit(config, "bf16", torch.bfloat16, depth, compute)
        if active_fraction is None:
            return count_flops_by_mode(peaks.forward_call(model, resolution, text_tokens, batch))
        return count_flops_by_mode(peaks.spot_call(model, resolution, text_tokens, batch, active_fraction))

    one, two = at(1), at(2)
    return tuple((m, one[m] + (config.mm_double_blocks_depth - 1) * (two[m] - one[m])) for m in COMPUTE_MODES)


def dit_flops_by_mode(config: DiTConfig, resolution: int, text_tokens: int, batch: int,
                      active_fraction: float | None = None, compute: str = "bf16") -> dict[str, int]:
    """FLOPs of one DiT forward (`active_fraction` None) or one SpotEdit partial step, all blocks, its
    Linears' GEMMs in `compute` mode, split by the rate they run at (`count_flops_by_mode`)."""
    return dict(_dit_flops(config, resolution, text_tokens, batch, active_fraction, check_mode(compute)))


def dit_flops(config: DiTConfig, resolution: int, text_tokens: int, batch: int,
              active_fraction: float | None = None, compute: str = "bf16") -> int:
    """FLOPs of one DiT forward (`active_fraction` None) or one SpotEdit partial step, all blocks."""
    return sum(dit_flops_by_mode(config, resolution, text_tokens, batch, active_fraction, compute).values())


@lru_cache(maxsize=8)
def selector_flops(vae_config: tuple, resolution: int) -> int:
    return count_flops(peaks.selector_call(vae_config, resolution))


@dataclass
class StepTime:
    """One kind of denoising step: its FLOPs (split by the rate they run at) and bytes copied, and
    the time each takes."""

    name: str
    flops: int
    copy_bytes: int
    compute_s: float
    copy_s: float
    flops_by_mode: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.copy_s)

    @property
    def hidden(self) -> bool:
        return self.copy_s <= self.compute_s


def has_device_figures(preset: Preset | None) -> bool:
    return bool(preset is not None and preset.bf16_tflops and preset.sustained and preset.h2d_gbps)


def preset_modes(preset: Preset) -> tuple[str, ...]:
    """The compute modes `preset`'s card runs (those it has a peak for), bf16 first."""
    return tuple(preset.peak_rates) if has_device_figures(preset) else ()


def predict(plan: Plan, preset: Preset, config: DiTConfig, compute: str | None = None) -> list[StepTime]:
    """The step kinds of `plan` (full; with SpotEdit also a partial step and the selector) on
    `preset`, the DiT's Linears in `compute` mode (None: the plan's own, `plan.compute`)."""
    if not has_device_figures(preset):
        raise ValueError(f"preset {preset.name} has no device figures (bf16_tflops, sustained, h2d_gbps)")
    compute = check_mode(compute or plan.compute)
    rates = preset.peak_rates
    if compute not in rates:
        raise ValueError(f"preset {preset.name} has no {compute} rate ({_RATE_KEY[compute]}): its card does not run "
                         f"{compute}; it runs {', '.join(rates)}")
    flops_per_s = {mode: rate * 1e12 * preset.sustained for mode, rate in rates.items()}
    bytes_per_s = preset.h2d_gbps * 1e9
    shape = (config, plan.resolution, plan.text_tokens, plan.batch)
    blocks = plan.dit.streamed_bytes_per_step
    host_caches = plan.spotedit.cache_bytes if plan.spotedit.cache_placement == "host" else 0

    def step(name: str, split: dict[str, int], copied: int) -> StepTime:
        seconds = sum(n / flops_per_s[mode] for mode, n in split.items() if n)
        return StepTime(name, sum(split.values()), copied, seconds, copied / bytes_per_s, split)

    steps = [step("full step", dit_flops_by_mode(*shape, compute=compute), blocks)]
    if plan.spotedit.enabled:
        fraction = SPOT_ACTIVE_FRACTION
        steps.append(step(f"spot step ({fraction:.0%} active)", dit_flops_by_mode(*shape, fraction, compute),
                          blocks + host_caches))
        from lowmem.models.dit_config import FULL_DIT_CONFIG
        from lowmem.models.vae import FULL_VAE_CONFIG, TINY_VAE_CONFIG

        vae = peaks.vae_config_key(FULL_VAE_CONFIG if config == FULL_DIT_CONFIG else TINY_VAE_CONFIG)
        steps.append(step("spot selector", {"bf16": selector_flops(vae, plan.resolution)}, 0))
    return steps


_RATE_KEY = {"bf16": "bf16_tflops", "fp8": "fp8_tflops", "int8": "int8_tops"}


@dataclass
class ModeTime:
    """One compute mode's prediction for a plan: a full step, and `count` denoising steps with the
    plan's SpotEdit setting."""

    mode: str
    peak: float  # the preset's dense peak for the mode, TFLOP/s (TOP/s for int8)
    full_step_s: float
    denoise_s: float
    full_steps: int
    spot_steps: int
    count: int = 30


def mode_times(plan: Plan, preset: Preset, config: DiTConfig, count: int = 30) -> list[ModeTime]:
    """Each compute mode `preset`'s card runs, priced on `plan`'s placement (its streaming and
    SpotEdit setting): the full step and the `count`-step denoise in seconds, bf16 first."""
    rows = []
    for mode in preset_modes(preset):
        steps = predict(plan, preset, config, mode)
        n_full, n_spot, seconds = denoise_seconds(steps, count)
        rows.append(ModeTime(mode, preset.peak_rates[mode], steps[0].seconds, seconds, n_full, n_spot, count))
    return rows


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


def _peak_text(mode: str, peak: float) -> str:
    return f"{peak:g} {'TOP/s' if mode == 'int8' else 'TFLOP/s'} {mode}"


def format_steps(steps: list[StepTime], preset: Preset, count: int = 30) -> str:
    """The step table of one compute mode (the one whose FLOPs the steps carry)."""
    mode = next((m for m in ("fp8", "int8") if steps[0].flops_by_mode.get(m)), "bf16")
    rows = [("step", "FLOPs", f"in {mode}" if mode != "bf16" else "", "compute", "copied", "copy", "step time")]
    for s in steps:
        copy = f"{s.copy_s:.2f} s" + ("" if s.hidden or not s.copy_bytes else " (not hidden)")
        share = f"{s.flops_by_mode.get(mode, 0) / s.flops:.0%}" if mode != "bf16" and s.flops else ""
        rows.append((s.name, f"{s.flops / 1e12:.1f} TFLOP", share, f"{s.compute_s:.2f} s", format_bytes(s.copy_bytes),
                     copy, f"{s.seconds:.2f} s"))
    if mode == "bf16":
        rows = [r[:2] + r[3:] for r in rows]
    peaks_text = _peak_text("bf16", preset.bf16_tflops)
    if mode != "bf16":
        peaks_text = f"{_peak_text(mode, preset.peak_rates[mode])} for the W8A8 GEMMs, {peaks_text} for the rest,"
    lines = [(f"time model ({preset.name}, DiT GEMMs in {mode}: {peaks_text} x {preset.sustained:g} sustained, "
              f"{preset.h2d_gbps:g} GB/s host-to-device)")]
    lines.append(text_table(rows))
    n_full, n_spot, seconds = denoise_seconds(steps, count)
    lines.append(f"denoising {count} steps ({n_full} full" + (f", {n_spot} spot" if n_spot else "") +
                 f"): {seconds:.0f} s predicted")
    return "\n".join(lines)


def format_modes(rows: list[ModeTime], preset: Preset, auto: str | None = None, chosen: str | None = None) -> str:
    """Each compute mode side by side: its peak, the full step and the denoise; the mode `auto` picks
    and the plan's `chosen` one (when another was asked for) marked."""
    if not rows:
        return ""
    first = rows[0]
    schedule = f"{first.full_steps} full" + (f", {first.spot_steps} spot" if first.spot_steps else "")
    table = [("compute", "dense peak", "full step", f"denoise {first.count} steps ({schedule})")]
    for r in rows:
        marks = (["auto picks this"] if r.mode == auto else []) + (["this plan"] if r.mode == chosen != auto else [])
        table.append((r.mode, _peak_text(r.mode, r.peak).rsplit(" ", 1)[0], f"{r.full_step_s:.2f} s",
                      f"{r.denoise_s:.1f} s" + (("  <- " + ", ".join(marks)) if marks else "")))
    lines = [(f"compute modes on {preset.name}, on this plan's placement (peaks x {preset.sustained:g} sustained; "
              "fp8/int8: the GEMMs' rate only, not their quantization traffic)")]
    lines.append(text_table(table))
    return "\n".join(lines)
