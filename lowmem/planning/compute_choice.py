"""Choosing how a run computes: the DiT's GEMM mode (`--compute`) and whether SpotEdit pays (`--spot auto`).

`choose_compute` resolves `auto` to the fastest mode the device runs, by dense peak rate: a preset's
own figures when it has them (`fp8_tflops`, `int8_tops` beside `bf16_tflops`), else the speed-up over
bf16 that the card's CUDA capability gives (`CAPABILITY_SPEEDUP`). A tie goes to int8, whose
per-channel x per-token numerics are the more accurate here (a W8A8 product on a random 4096-wide
layer: relative error 0.012 in int8, 0.037 in fp8 e4m3), and between a W8A8 mode and bf16 to bf16.
On the CPU auto is int8 for a DiT at least `CPU_INT8_MIN_WIDTH` wide, where oneDNN's int8 GEMM beats
the float32 one the CPU pipeline runs, and the dense path (bf16 mode: the pipeline's own dtype) for
narrower ones, the tiny test models among them; fp8 is never auto there (4-8x slower than float32).
On `meta` without a preset auto is bf16.

`choose_spot` resolves `auto` for SpotEdit. A FLOP count says SpotEdit pays at every size, but its
per-step overheads (the selector, cache bookkeeping, host-side selection) do not shrink with the
image, and measured on small edits it is slower than full steps. So: with a preset that has device
figures it is on where the time model's denoise is shorter with it than without and the image has
at least `SPOT_MIN_TOKENS` tokens; without figures (the CPU) where the resolution is at least
`SPOT_MIN_RESOLUTION`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowmem.errors import LowmemError
from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.offload.budget import BudgetError
from lowmem.offload.plan import Plan
from lowmem.planning.phase_peaks import DIT_PATCH
from lowmem.planning.presets import Preset
from quantize.compute import COMPUTE_MODES, check_mode, supported_modes

# Dense tensor-core speed-up over bf16 (FP32 accumulate) per CUDA capability, for a card without a
# preset. Sources: sm_80 A100 datasheet (bf16 312, int8 624 TOP/s); sm_86 A40/A10 (GA102 whitepaper
# and datasheets: int8 2x bf16; the GeForce 3090 lists bf16 FP32-accumulate at half rate, 71 vs int8
# 284, 4x, which its preset carries); sm_87 Jetson Orin (int8 2x); sm_89 Ada whitepaper, RTX 4090
# column (bf16 165.2, fp8 330.3, int8 660.6; an L40S has int8 = fp8 = 2x, the ranking holds); sm_90
# H100 datasheet (bf16 989, fp8 1,979, int8 1,979 dense, SXM), taken for every later capability too.
CAPABILITY_SPEEDUP: dict[tuple[int, int], dict[str, float]] = {
    (8, 0): {"int8": 2.0},
    (8, 6): {"int8": 2.0},
    (8, 7): {"int8": 2.0},
    (8, 9): {"fp8": 2.0, "int8": 4.0},
    (9, 0): {"fp8": 2.0, "int8": 2.0},
}
# On the CPU, int8 W8A8 (activations quantized per call included) against F.linear in float32, the
# CPU pipeline's dtype, on (4d, d) weights, best of 5, 2 threads of this project's CPU:
#     d = 64: 0.19x (32 tokens) 0.65x (512)    d = 256: 1.00x 1.67x    d = 512: 1.94x 2.63x
#     d = 1024: 2.69x 3.78x                     d = 2048: 3.89x 3.89x   full DiT shapes (4096): 3.5-4.1x
# so from a 256-wide DiT on int8 is at least as fast; below, the per-call quantization dominates.
CPU_INT8_MIN_WIDTH = 256

# Who wins a tie of peak rates: bf16 over a W8A8 mode (exact), int8 over fp8 (more accurate).
TIE_ORDER = {"bf16": 2, "int8": 1, "fp8": 0}

# --spot auto on a device without time-model figures (the CPU): on from this resolution (pixels per
# side). Measured here (2-core CPU, float32, 1 thread, 30 steps at the default schedule, CFG off as
# `lowmem demo` runs): bench/quality.py's `spot_row` on the shipped tiny model (real selection), full
# denoise time over SpotEdit's, rotate / move / scale edits rendered at each size:
#     64 px 0.89-0.99x (README: 0.76-0.85x)   128 px 0.83-0.95x   256 px 1.43-1.65x   512 px 1.56-2.28x
# (active fractions 0.29-0.51 at 64 px, 0.71-0.87 above: the model is trained at 64 px). The DiT and
# selector alone (bench/spotedit.py at the tiny model's shape, 30% active) already pay from 64 px
# (1.05x; 1.46x at 128, 2.24x at 256): the rest of the loop's per-step overheads make the difference.
# 256 px is the smallest size where every measured edit ran faster with SpotEdit.
SPOT_MIN_RESOLUTION = 256
# The same floor in DiT tokens per image, applied also where the time model decides: not measured on
# a GPU, where the full DiT's steps are far longer than these overheads, so a conservative floor there.
SPOT_MIN_TOKENS = (SPOT_MIN_RESOLUTION // DIT_PATCH) ** 2


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} (compute capability {major}.{minor})"
    return str(device)


def _capability_speedups(device: torch.device) -> dict[str, float]:
    capability = tuple(torch.cuda.get_device_capability(device))
    known = [c for c in CAPABILITY_SPEEDUP if c <= capability]
    return {"bf16": 1.0, **(CAPABILITY_SPEEDUP[max(known)] if known else {})}


def choose_compute(requested: str, device: torch.device | str,
                   preset: Preset | None = None, width: int | None = None) -> tuple[str, str]:
    """(mode, one-line reason): `requested` (auto | bf16 | fp8 | int8) resolved for `device`.

    The modes on offer are those `device` runs (`quantize.compute.supported_modes`; `meta` runs all),
    and, when `preset` has device figures, only those its card has a peak for. An explicit mode not
    on offer raises LowmemError naming the device, what it runs and `--compute auto`. `width` (the
    DiT's hidden size) decides auto on the CPU (`CPU_INT8_MIN_WIDTH`)."""
    device = torch.device(device)
    if requested != "auto":
        check_mode(requested)
    offered = supported_modes(device)
    rates = preset.peak_rates if preset is not None else {}
    if rates:
        offered = tuple(m for m in offered if m in rates)
    where = _device_text(device) + (f" as preset {preset.name}" if rates else "")
    if requested != "auto":
        if requested not in offered:
            raise LowmemError(f"compute mode {requested} is not supported on {where}: it runs {', '.join(offered)}; "
                              "use --compute auto (or one of those)")
        return requested, f"{requested}, as asked"
    if device.type == "cpu":
        if width is not None and width >= CPU_INT8_MIN_WIDTH and "int8" in offered:
            return "int8", (f"int8: auto takes int8 W8A8 on the CPU for a {width}-wide DiT (measured 1.7-4x faster "
                            f"than float32 from {CPU_INT8_MIN_WIDTH} wide)")
        narrow = f"a {width}-wide DiT" if width is not None else "a DiT of unknown width"
        return "bf16", (f"bf16: auto keeps the dense GEMM (the pipeline's dtype) on the CPU for {narrow}: int8 W8A8 "
                        f"pays there only from {CPU_INT8_MIN_WIDTH} wide")
    if device.type == "meta" and not rates:
        return "bf16", ("bf16: auto plans bf16 without a card to run on (no preset with device figures); "
                        "--compute fp8 / int8 plans a W8A8 mode")
    speed = ({m: r / rates["bf16"] for m, r in rates.items()} if rates else _capability_speedups(device))
    candidates = [m for m in offered if m in speed]
    mode = max(candidates, key=lambda m: (speed[m], TIE_ORDER[m]))
    source = f"preset {preset.name}'s dense peaks" if rates else f"{_device_text(device)}'s tensor-core rates"
    others = ", ".join(f"{m} {speed[m]:.1f}x" for m in COMPUTE_MODES if m in candidates and m != mode)
    return mode, (f"{mode}: auto picks the fastest by {source} ({mode} {speed[mode]:.1f}x bf16"
                  + (f"; {others}" if others else "") + ")")


def choose_spot(requested: str | bool, resolution: int, *, preset: Preset | None = None,
                make_plan: Callable[[bool], Plan] | None = None, config: DiTConfig = FULL_DIT_CONFIG,
                compute: str = "bf16", steps: int = 30, device: torch.device | str | None = None) -> tuple[bool, str]:
    """(spot, one-line reason): `requested` (True / "on", False / "off", or "auto") resolved for an
    edit at `resolution`² pixels.

    With a `preset` that has device figures (and a `device` that is not the CPU), auto compares the
    time model's `steps`-step denoise with SpotEdit and without, in `compute` mode, each on the plan
    `make_plan(spot)` makes (default: `plan_for` on the preset at this resolution, `config` and
    `compute`); a plan with SpotEdit that does not fit (BudgetError) turns it off. Otherwise it is
    on from `SPOT_MIN_RESOLUTION`."""
    if isinstance(requested, str) and requested in ("on", "off"):
        requested = requested == "on"
    if isinstance(requested, bool):
        return requested, f"SpotEdit {'on' if requested else 'off'}, as asked"
    if requested != "auto":
        raise LowmemError(f"spot must be on, off or auto, got {requested!r}")
    tokens = (resolution // DIT_PATCH) ** 2
    from lowmem.planning import time_model

    on_cpu = device is not None and torch.device(device).type == "cpu"
    if on_cpu or not time_model.has_device_figures(preset):
        on = resolution >= SPOT_MIN_RESOLUTION
        where = "on the CPU" if on_cpu else "without device figures"
        return on, (f"SpotEdit {'on' if on else 'off'}: auto, {where}, turns it on from {SPOT_MIN_RESOLUTION} px "
                    f"(its per-step overheads outweigh what it saves below; {resolution} px here)")
    if tokens < SPOT_MIN_TOKENS:
        return False, (f"SpotEdit off: {tokens} tokens at {resolution} px is under the {SPOT_MIN_TOKENS}-token floor "
                       "where its per-step overheads outweigh what it saves")
    if make_plan is None:
        from lowmem.planning.planner import plan_for

        def make_plan(spot: bool) -> Plan:
            return plan_for(config, resolution=resolution, spotedit=spot, preset=preset, compute=compute)

    try:
        with_spot = make_plan(True)
    except BudgetError as exc:
        return False, f"SpotEdit off: its caches do not fit ({exc})"
    without = make_plan(False)
    seconds = {}
    for spot, p in ((True, with_spot), (False, without)):
        seconds[spot] = time_model.denoise_seconds(time_model.predict(p, preset, config, compute), steps)[2]
    on = seconds[True] < seconds[False]
    return on, (f"SpotEdit {'on' if on else 'off'}: the time model predicts {seconds[True]:.1f} s with it and "
                f"{seconds[False]:.1f} s without for {steps} steps at {resolution} px on {preset.name}")
