"""plan_for: one memory budget -> a Plan, or one error that says what to change.

The estimate is deliberately simple and written out item by item so people can check it:
  * weights: bytes per parameter by precision (bf16 2, int8 1 + a per-row scale, nf4 ~0.53 for
    Linear weights; 1-D params, embeddings and the head stay bf16);
  * DiT activations: CFG batch 2, tokens = 2 items (target + condition) x (res/16)^2 image tokens
    + text tokens, SDPA attention (no N^2 term), ~16 live (B, N, hidden) tensors at a block's peak;
  * VAE: ~10 live fp32 tensors of 96 channels at full resolution (or one tile when tiled);
  * CUDA: a fixed reserve for the context, cuBLAS workspace and allocator slack.
The planner keeps as many DiT blocks resident as fit (spread evenly over the stack) and streams
the rest through a ring of device slots; the conditioner runs and is evicted before denoising.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.offload.budget import BudgetError, format_bytes, parse_bytes
from lowmem.offload.plan import ComponentPlan, DiTPlan, MemoryEstimate, Plan, SpotEditPlan, VAEPlan
from lowmem.offload.presets import PRECISIONS, Preset, load_preset

CUDA_RESERVE = int(0.8e9)  # context, cuBLAS workspace, allocator slack (not in max_memory_allocated)
SAFETY = 0.03  # fraction of the budget kept free
TEXT_TOKENS = 512
ACTIVATION_TENSORS = 16  # live (B, N, hidden) tensors at a block's peak
VAE_CHANNELS = 96
VAE_LIVE_TENSORS = 10
VAE_TILES = (512, 384, 256, 192, 128)
QWEN3_VL_8B_PARAMS = 8_770_000_000
# Its 36 decoder layers; the rest (vision tower, embeddings, lm_head, norms) stays bf16 when quantized.
QWEN3_VL_8B_LAYER_PARAMS = 6_950_000_000
QWEN3_VL_HIDDEN = 4096
WAN21_VAE_PARAMS = 127_000_000
NF4_BYTES = 0.53  # 4 bits + one absmax per 64 (double-quantised) + packing slack
RESOLUTIONS = (1024, 768, 512, 384, 256)

ModelOrConfig = Union[nn.Module, DiTConfig]


def _tensor_bytes(t: torch.Tensor, precision: Optional[str]) -> int:
    if precision is None or not t.is_floating_point():
        return t.numel() * t.element_size()
    if precision == "fp32":
        return t.numel() * 4
    if precision in ("int8", "nf4") and t.dim() == 2:
        if precision == "int8":
            return t.numel() + t.shape[0] * 2
        return math.ceil(t.numel() * NF4_BYTES)
    return t.numel() * 2


def _module_bytes(module: nn.Module, precision: Optional[str]) -> int:
    tensors = [t for _, t in module.named_parameters()] + [t for _, t in module.named_buffers()]
    return sum(_tensor_bytes(t, precision) for t in tensors)


def _is_quantized(module: nn.Module) -> bool:
    return any(not t.is_floating_point() for t in list(module.parameters()) + list(module.buffers()))


def dit_weight_bytes(model_or_config: ModelOrConfig, precision: Optional[str]) -> tuple[list[int], int, int]:
    """(bytes of each block, bytes of everything else, hidden size) for `precision` (None: as stored)."""
    if isinstance(model_or_config, DiTConfig):
        from lowmem.models.dit import build_dit

        model = build_dit(model_or_config, device="meta")
    else:
        model = model_or_config
    if _is_quantized(model.double_blocks):
        precision = None  # already quantized: count what is stored
    blocks = [_module_bytes(b, precision) for b in model.double_blocks]
    total = _module_bytes(model, "bf16" if precision in ("int8", "nf4") else precision)
    other = total - sum(_module_bytes(b, "bf16" if precision in ("int8", "nf4") else precision)
                        for b in model.double_blocks)
    return blocks, other, model.config.hidden_size


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total) (interleaved with the rest, not the first N)."""
    if count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({min(total - 1, int((i + 0.5) * total / count)) for i in range(count)})


def _vae_bytes(pixels: int) -> int:
    return pixels * VAE_CHANNELS * 4 * VAE_LIVE_TENSORS


def plan_for(
    model_or_config: ModelOrConfig = FULL_DIT_CONFIG,
    budget: Union[str, int, None] = None,
    resolution: Optional[int] = None,
    quantization: Optional[str] = None,
    spotedit: Optional[bool] = None,
    *,
    preset: Union[str, Preset, None] = None,
    device: Optional[str] = None,
    host_ram: Union[str, int, None] = None,
    prefetch_depth: Optional[int] = None,
    slots: Optional[int] = None,
    max_resident_blocks: Optional[int] = None,
    vae_tile: Optional[int] = None,
    storage: Optional[str] = None,
    allow_streaming: bool = True,
    vlm_bytes: Optional[int] = None,
    vae_bytes: Optional[int] = None,
    text_tokens: int = TEXT_TOKENS,
) -> Plan:
    """The plan for one run; raises BudgetError (one message naming what to change) when nothing fits."""
    if isinstance(preset, str):
        preset = load_preset(preset)
    args = _Args.resolve(model_or_config, budget, resolution, quantization, spotedit, preset, device, host_ram,
                         prefetch_depth, slots, max_resident_blocks, vae_tile, storage, vlm_bytes, vae_bytes, text_tokens)
    args.allow_streaming = allow_streaming
    plan = _solve(args)
    if plan.fits:
        return plan
    raise BudgetError(_refusal(args, plan))


class _Args:
    """The planner's inputs with every default filled in (preset first, then built-in)."""

    @classmethod
    def resolve(cls, model, budget, resolution, quantization, spotedit, preset: Optional[Preset], device, host_ram,
                prefetch_depth, slots, max_resident, vae_tile, storage, vlm_bytes, vae_bytes, text_tokens) -> "_Args":
        a = cls()
        a.model = model
        a.preset = preset.name if preset else None
        if budget is None and preset is None:
            raise BudgetError("give a memory budget (e.g. 24GB) or a preset (e.g. rtx4090-24gb)")
        a.budget = parse_bytes(budget) if budget is not None else preset.budget
        a.device = device or (preset.device if preset else "cuda")
        if a.device not in ("cuda", "cpu"):
            raise BudgetError(f"device must be cuda or cpu, got {a.device!r}")
        a.resolution = int(resolution or (preset.resolution if preset else 1024))
        if a.resolution < 64 or a.resolution % 16:
            raise BudgetError(f"resolution must be a multiple of 16 and at least 64, got {a.resolution}")
        a.quantization = quantization or (preset.quantization if preset else None)
        if a.quantization is not None and a.quantization not in PRECISIONS:
            raise BudgetError(f"quantization must be one of {', '.join(PRECISIONS)}, got {a.quantization!r}")
        a.spotedit = bool(spotedit if spotedit is not None else (preset.spotedit if preset else False))
        ram = host_ram if host_ram is not None else (preset.host_ram if preset else None)
        a.host_ram = parse_bytes(ram) if ram is not None else None
        depth = prefetch_depth if prefetch_depth is not None else (preset.prefetch_depth if preset else None)
        a.depth = depth if depth is not None else (2 if a.device == "cuda" else 1)
        a.slots = slots
        a.max_resident = max_resident
        a.vae_tile = vae_tile if vae_tile is not None else (preset.vae_tile if preset else None)
        a.storage = storage or (preset.storage if preset else "auto")
        a.vlm_bytes = vlm_bytes
        a.vae_bytes = vae_bytes
        a.text_tokens = text_tokens
        return a

    def but(self, **changes) -> "_Args":
        other = _Args()
        other.__dict__.update(self.__dict__)
        other.__dict__.update(changes)
        return other


def _solve(a: _Args) -> Plan:
    cuda = a.device == "cuda"
    blocks, other, hidden = dit_weight_bytes(a.model, a.quantization)
    precision = a.quantization or _stored_precision(a.model)
    n = len(blocks)
    block = max(blocks) if blocks else 0
    full = isinstance(a.model, DiTConfig) and a.model == FULL_DIT_CONFIG or (
        isinstance(a.model, nn.Module) and getattr(a.model, "config", None) == FULL_DIT_CONFIG)
    # `lowmem quantize` and --quantization quantize the conditioner's decoder layers with the DiT.
    vlm_precision = precision if precision in ("int8", "nf4") else "bf16"
    vlm_bytes = a.vlm_bytes if a.vlm_bytes is not None else (_qwen3_vl_bytes(vlm_precision) if full else 0)
    vae_weights = a.vae_bytes if a.vae_bytes is not None else (WAN21_VAE_PARAMS * 4 if full else 0)
    act_bytes = 2 if cuda else 4  # bf16 compute on CUDA, float32 on CPU
    image_tokens = (a.resolution // 16) ** 2
    tokens = 2 * image_tokens + a.text_tokens
    dit_act = 2 * tokens * hidden * act_bytes * ACTIVATION_TENSORS
    vlm_tokens = (a.resolution // 28) ** 2 + a.text_tokens
    vlm_act = vlm_tokens * QWEN3_VL_HIDDEN * 2 * 32 if vlm_bytes else 0
    reserve = CUDA_RESERVE if cuda else 0
    usable = int(a.budget * (1 - SAFETY))
    # SpotEdit: per block, K and V of the condition tokens plus the fused non-edited target tokens, CFG batch 2.
    cache_per_block = 2 * 2 * 2 * image_tokens * hidden * act_bytes if a.spotedit else 0

    pixels = a.resolution * a.resolution
    smallest_decode = min(_vae_bytes(pixels), _tile_bytes(a.vae_tile or VAE_TILES[-1]))

    def resident_count(cache_on_device: bool, slots: int) -> int:
        caches = cache_per_block * n if cache_on_device else cache_per_block * slots
        # The resident set must fit both while denoising and while decoding (smallest VAE tile).
        fixed = reserve + other + vae_weights + max(dit_act + caches, smallest_decode)
        room = usable - fixed - slots * block
        k = room // block if block else n
        if a.max_resident is not None:
            k = min(k, a.max_resident)
        return int(max(-1, min(n, k)))

    slots = 0
    cache_placement = "device" if a.spotedit else "none"
    k = resident_count(True, 0)
    if k < n and not a.allow_streaming:
        k = n  # asked for everything resident: the estimate shows by how much it overflows
    if k < n:  # stream the rest through a ring of slots
        slots = a.slots if a.slots is not None else a.depth + 1
        slots = max(1, min(slots, n))
        k_dev = resident_count(True, slots)
        k_host = resident_count(False, slots) if a.spotedit else -1
        if a.spotedit and k_host > k_dev:
            k, cache_placement = k_host, "host"
        else:
            k = k_dev
        if k >= n:
            k, slots = n, 0
    k = max(0, k)
    resident = spread(k, n)
    streamed_bytes = sum(blocks[i] for i in range(n) if i not in set(resident))
    depth = min(a.depth, slots - 1) if slots else 0
    storage = "none"
    if slots:
        storage = a.storage
        if storage == "auto":
            if not cuda:
                storage = "disk"
            elif a.host_ram is not None and streamed_bytes > a.host_ram // 2:
                storage = "disk"
            else:
                storage = "pinned"
    pinned = streamed_bytes if storage == "pinned" else 0
    notes = []
    if storage == "disk" and cuda:
        notes.append("streamed blocks exceed half the host RAM: they are read from per-block files on disk")
    if not cuda:
        notes.append("compute on CPU: the budget bounds RAM; streamed blocks are read from disk")

    # Phases.
    dit_resident = sum(blocks[i] for i in resident)
    slot_bytes = slots * block
    caches_device = cache_per_block * n if cache_placement == "device" else cache_per_block * slots
    denoise = {"runtime reserve": reserve, "dit other weights": other, "dit resident blocks": dit_resident,
               "dit slots": slot_bytes, "dit activations": dit_act, "vae weights": vae_weights}
    if a.spotedit:
        denoise["spotedit caches"] = caches_device
    base_decode = reserve + other + dit_resident + slot_bytes + vae_weights
    tile = a.vae_tile
    if tile is None and base_decode + _vae_bytes(pixels) > usable:
        tile = next((t for t in VAE_TILES if t < a.resolution and base_decode + _tile_bytes(t) <= usable), VAE_TILES[-1])
    tiled = tile is not None and tile < a.resolution
    decode_act = _tile_bytes(tile) if tiled else _vae_bytes(pixels)
    # The conditioner stays resident only if it fits beside the DiT's device part in every phase:
    # while encoding the prompt, and through the image encode, denoising and decoding that follow.
    dit_part = other + dit_resident + slot_bytes
    later_peak = max(sum(denoise.values()), base_decode + decode_act, reserve + dit_part + vae_weights + _vae_bytes(pixels))
    vlm_resident = bool(vlm_bytes) and max(later_peak, reserve + dit_part + vae_weights + vlm_act) + vlm_bytes <= usable
    vlm_placement = "resident" if vlm_resident else "run-then-evicted"
    resident_vlm = {"vlm weights": vlm_bytes} if vlm_resident else {}
    # When the conditioner and the DiT do not fit together, the DiT's device part is placed after
    # encoding and released after decoding, so encoding sees an (almost) empty device.
    dit_during_encode = {"dit other weights": other, "dit resident blocks": dit_resident, "dit slots": slot_bytes}
    if not vlm_resident:
        dit_during_encode = {}
        notes.append("the DiT's device part is placed after encoding and released after decoding")
    phases = {}
    if vlm_bytes:
        encode = {"runtime reserve": reserve, "vlm weights": vlm_bytes, "vlm activations": vlm_act,
                  "vae weights": vae_weights, **dit_during_encode}
        if reserve + vlm_bytes + vlm_act + vae_weights > usable:
            vlm_placement = "streamed"
            layer = vlm_bytes // 36
            encode["vlm weights"] = 3 * layer  # streamed layer by layer through 3 slots, then evicted
            notes.append("the conditioner does not fit whole: it is streamed layer by layer, then evicted")
        phases["encode prompt"] = encode
    phases["encode image"] = {"runtime reserve": reserve, **resident_vlm, **dit_during_encode, "vae weights": vae_weights,
                              "vae encode": _vae_bytes(pixels)}
    phases["denoise"] = {**resident_vlm, **denoise}
    phases["decode"] = {"runtime reserve": reserve, **resident_vlm, "dit other weights": other,
                        "dit resident blocks": dit_resident, "dit slots": slot_bytes, "vae weights": vae_weights,
                        "vae decode": decode_act}
    if k < 0 or resident_count(cache_placement == "device", slots) < 0:
        phases["denoise"]["dit slots"] = max(slot_bytes, block)  # cannot hold even one slot
    phases = {name: {k: v for k, v in items.items() if v} for name, items in phases.items()}
    dit_total = sum(blocks) + other
    dit = DiTPlan(
        precision=precision, placement="resident" if not slots else "streamed", weight_bytes=dit_total,
        num_blocks=n, block_bytes=block, other_bytes=other, resident_blocks=resident, prefetch_depth=depth,
        slots=slots, storage=storage, pinned_host_bytes=pinned,
    )
    return Plan(
        device=a.device, budget=a.budget, resolution=a.resolution, image_tokens=image_tokens, text_tokens=a.text_tokens,
        vlm=ComponentPlan(precision=vlm_precision, placement=vlm_placement, weight_bytes=vlm_bytes),
        dit=dit,
        vae=VAEPlan(precision="fp32", placement="resident", weight_bytes=vae_weights, tiled=tiled, tile=tile if tiled else None),
        spotedit=SpotEditPlan(enabled=a.spotedit, cache_placement=cache_placement, cache_bytes=cache_per_block * n),
        estimate=MemoryEstimate(phases=phases), preset=a.preset, notes=notes,
    )


def _qwen3_vl_bytes(precision: str) -> int:
    """Qwen3-VL-8B's weight bytes with its decoder layers in `precision` and the rest in bf16."""
    per_param = {"bf16": 2.0, "int8": 1.0, "nf4": NF4_BYTES}[precision]
    layers = QWEN3_VL_8B_LAYER_PARAMS
    return int((QWEN3_VL_8B_PARAMS - layers) * 2 + layers * per_param)


def _tile_bytes(tile: Optional[int]) -> int:
    t = int(tile or 0) * 5 // 4  # tile plus its overlap with the neighbours
    return _vae_bytes(t * t)


def _stored_precision(model: ModelOrConfig) -> str:
    if isinstance(model, DiTConfig):
        return "bf16"
    if _is_quantized(model.double_blocks):
        # Quantized modules name their scheme (quantize.QuantizedLinear.scheme); the planner only reads it.
        schemes = {m.scheme for m in model.double_blocks.modules() if isinstance(getattr(m, "scheme", None), str)}
        return "+".join(sorted(schemes)) or "quantized"
    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype))


def _refusal(a: _Args, plan: Plan) -> str:
    """One message: what does not fit, by how much, and the changes that would make it fit."""
    need = plan.estimate.peak
    head = (f"a {a.resolution}x{a.resolution} run in {plan.dit.precision} needs about {format_bytes(need)} in its "
            f"{plan.estimate.peak_phase} phase but the budget is {format_bytes(a.budget)}")
    fixes = []

    def fits(**changes) -> Optional[Plan]:
        try:
            p = _solve(a.but(**changes))
        except Exception:  # noqa: BLE001 - a probe that cannot even be built is simply not a fix
            return None
        return p if p.fits else None

    if a.quantization != "nf4" and (p := fits(quantization="nf4")):
        fixes.append(f"--quantization nf4 (peak {format_bytes(p.estimate.peak)})")
    for res in RESOLUTIONS:
        if res < a.resolution and (p := fits(resolution=res)):
            fixes.append(f"--resolution {res} (peak {format_bytes(p.estimate.peak)})")
            break
    if a.vae_tile is None or a.vae_tile > VAE_TILES[-1]:
        if p := fits(vae_tile=VAE_TILES[-1]):
            fixes.append(f"smaller VAE tiles ({VAE_TILES[-1]} px)")
    if not fixes and a.quantization != "nf4":
        for res in RESOLUTIONS:
            if res < a.resolution and (p := fits(quantization="nf4", resolution=res)):
                fixes.append(f"--quantization nf4 with --resolution {res} (peak {format_bytes(p.estimate.peak)})")
                break
    if a.spotedit and (p := fits(spotedit=False)):
        fixes.append("--no-spot (no SpotEdit caches)")
    lo, hi = a.budget, max(a.budget * 2, need * 2)
    while fits(budget=hi) is None and hi < 10**15:
        hi *= 2
    while hi - lo > max(1, a.budget // 200):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(budget=mid) else (mid, hi)
    fixes.append(f"a budget of at least {format_bytes(hi)}")
    return head + "; to make it fit use " + ", or ".join(fixes)
