"""plan_for: one memory budget -> a Plan, or one error that says what to change.

Every number is an exact count or a trace, written out item by item per phase so people can check it:
  * weights: the bytes each component stores in its precision (`weight_bytes`: quantized Linears
    counted as `quantize` writes them, the rest in bf16), or as an already quantized model holds them;
  * activations: the peak live bytes of the real modules on `meta` at this resolution, text length
    and CFG batch (`phase_peaks`: the DiT forward, a SpotEdit partial step and its selector, the
    VAE's encode and decode, untiled or per tile, the conditioner's forward);
  * SpotEdit's K/V caches by `spot_footprint.spot_cache_bytes`; pinned host RAM as the arena
    allocates it (`arena.arena_bytes`);
  * CUDA: the reserve of `reserve` (context, cuBLAS workspaces, allocator slack on the traced bytes).
The planner keeps as many DiT blocks resident as fit (spread evenly over the stack) and streams
the rest through a ring of device slots; the conditioner runs and is evicted before denoising;
the VAE decodes untiled whenever that fits, else in the largest tile that does.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.models.guidance import guidance_batch
from lowmem.models.prompt import MAX_TEXT_TOKENS, RELEASED_DROPPED_PREFIX
from lowmem.offload.arena import arena_bytes
from lowmem.offload.budget import BudgetError, format_bytes, parse_bytes
from lowmem.offload.conditioner_placement import VLM_SLOTS
from lowmem.offload.plan import ComponentPlan, DiTPlan, MemoryEstimate, Plan, SpotEditPlan, VAEPlan
from lowmem.offload.streamer import pinned_bytes
from lowmem.planning import phase_peaks as peaks
from lowmem.planning.presets import PRECISIONS, Preset, load_preset
from lowmem.planning.reserve import allocator_slack, fixed_reserve
from lowmem.planning.weight_bytes import QUANTIZED, conditioner_bytes, dit_bytes, is_quantized, model_dit_bytes

SAFETY = 0.03  # fraction of the budget kept free
VAE_TILES = (512, 384, 256, 192, 128)
RESOLUTIONS = (1024, 768, 512, 384, 256)
DEFAULT_GUIDANCE = 5.0  # the pipeline's default: CFG, a batch of two
# What the conditioner hands the DiT besides the image's vision tokens (`lowmem.models.prompt`): the
# user turn's opening "user\n", the instruction (an allowance: geometric edit prompts are 10-40
# tokens) and the closing "<|im_end|>\n<|im_start|>assistant\n".
INSTRUCTION_TOKENS = 64
TEMPLATE_TOKENS = 2 + 5
SPOT_ACTIVE_FRACTION = 0.3  # the expected share of target tokens a SpotEdit step recomputes

ModelOrConfig = Union[nn.Module, DiTConfig]


def dit_text_tokens(resolution: int) -> int:
    """Text tokens the DiT reads for one image of `resolution`²: its vision tokens, the instruction
    and the template's closing turn (~1.1K at 1024², not a fixed 512)."""
    return min(MAX_TEXT_TOKENS, peaks.vision_tokens(resolution) + INSTRUCTION_TOKENS + TEMPLATE_TOKENS)


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total) (interleaved with the rest, not the first N)."""
    if count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({min(total - 1, int((i + 0.5) * total / count)) for i in range(count)})


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
    text_tokens: Optional[int] = None,
    guidance: float = DEFAULT_GUIDANCE,
    vae_config: Optional[dict] = None,
    vlm_config: Any = None,
    compute: str = "bf16",
) -> Plan:
    """The plan for one run; raises BudgetError (one message naming what to change) when nothing fits.

    `text_tokens` defaults to what the conditioner hands the DiT for one image (`dit_text_tokens`);
    `guidance` <= 1 plans a batch of one. `vae_config` / `vlm_config` (AutoencoderKLWan kwargs, a
    Qwen3VLConfig) describe the model's VAE and conditioner; by default the released ones for the
    full DiT, and for any other DiT the tiny VAE and no conditioner (unless `vlm_bytes` is given).
    `compute` is the DiT's GEMM mode (bf16 | fp8 | int8, `quantize.compute`; resolve "auto" first with
    `compute_choice.choose_compute`): its W8A8 transients are traced into the denoise peaks."""
    from quantize.compute import COMPUTE_MODES

    if compute not in COMPUTE_MODES:
        raise BudgetError(f"compute must be one of {', '.join(COMPUTE_MODES)}, got {compute!r}"
                          + (" (resolve auto with lowmem.planning.compute_choice.choose_compute)" if compute == "auto" else ""))
    if isinstance(preset, str):
        preset = load_preset(preset)
    args = _Args.resolve(model_or_config, budget, resolution, quantization, spotedit, preset, device, host_ram,
                         prefetch_depth, slots, max_resident_blocks, vae_tile, storage, vlm_bytes, vae_bytes, text_tokens)
    args.allow_streaming = allow_streaming
    args.batch = guidance_batch(guidance)
    args.vae_config, args.vlm_config = vae_config, vlm_config
    args.compute = compute
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


class _Sizes:
    """Weights and traced activations of one run, item by item (what `_solve` places)."""

    def __init__(self, a: _Args):
        model = a.model
        config = model if isinstance(model, DiTConfig) else model.config
        full = config == FULL_DIT_CONFIG
        self.precision = a.quantization or _stored_precision(model)
        if isinstance(model, nn.Module) and (is_quantized(model.double_blocks) or a.quantization is None):
            self.blocks, self.other = model_dit_bytes(model)  # as the built model holds them
        else:
            block, self.other = dit_bytes(config, self.precision)
            self.blocks = [block] * config.mm_double_blocks_depth
        self.hidden = config.hidden_size
        self.cuda = a.device == "cuda"
        dtype = peaks.activation_dtype(a.device)
        res, batch = a.resolution, a.batch
        text = a.text_tokens if a.text_tokens is not None else dit_text_tokens(res)
        self.text_tokens, self.image_tokens = text, (res // peaks.DIT_PATCH) ** 2
        trace_precision = self.precision if self.precision in QUANTIZED else "bf16"
        # Traced peaks behind each phase's activations (phase -> {what was traced: bytes}).
        self.traced: dict[str, dict[str, int]] = {}
        shape = (config, trace_precision, dtype, res, text, batch)
        gemm = {"compute": a.compute} if a.compute != "bf16" else {}  # the bf16 traces' cache keys as before
        denoise = {"dit forward": peaks.dit_forward(*shape, **gemm),  # what the step holds; its parts for people:
                   "  one block, beyond its inputs": peaks.dit_block(*shape, **gemm),
                   "  outside the blocks": peaks.dit_outside_blocks(*shape, **gemm)}
        if a.spotedit:
            vae_key = self.vae_key(a, full)
            denoise[f"spotedit step ({SPOT_ACTIVE_FRACTION:.0%} active)"] = peaks.spot_step(*shape, SPOT_ACTIVE_FRACTION,
                                                                                              **gemm)
            # One active token: every other target token is fused in the kv hook (its largest temporaries).
            denoise["spotedit step (1 token active)"] = peaks.spot_step(*shape, 0.0, **gemm)
            denoise["spotedit selector"] = peaks.selector(vae_key, res)
        self.traced["denoise"] = denoise
        # Held through the whole denoise phase, beside every step's activations.
        self.selector_state = peaks.selector_state(self.vae_key(a, full), res, dtype) if a.spotedit else 0
        # Here, not at the top: the spotedit package imports diffusers, and `lowmem plan --help` reads presets.
        from lowmem.planning.spot_footprint import spot_cache_bytes

        self.cache_per_block = (spot_cache_bytes(config, self.image_tokens, "device", batch=batch, dtype=dtype).block
                                if a.spotedit else 0)

        vae_key = self.vae_key(a, full)
        self.vae_key = vae_key
        self.vae_weights = a.vae_bytes if a.vae_bytes is not None else peaks.vae_weight_bytes(vae_key)
        self.traced["encode image"] = {"vae encode": peaks.vae_encode(vae_key, res)}
        self.vlm_precision = self.precision if self.precision in QUANTIZED else "bf16"
        vlm_config = a.vlm_config if a.vlm_config is not None else (peaks.qwen3_vl_8b_config() if full else None)
        self.vlm_weights, self.vlm_layer, self.vlm_layers = a.vlm_bytes or 0, 0, 1
        if vlm_config is not None:
            config_json = peaks.conditioner_config_json(vlm_config)
            layer, total = conditioner_bytes(config_json, self.vlm_precision)
            self.vlm_layers = vlm_config.text_config.num_hidden_layers
            self.vlm_weights = a.vlm_bytes if a.vlm_bytes is not None else total
            self.vlm_layer = layer
            prompt = text + RELEASED_DROPPED_PREFIX
            self.traced["encode prompt"] = {"conditioner forward": peaks.conditioner(config_json, res, prompt, text)}
        elif self.vlm_weights:
            self.vlm_layer = self.vlm_weights // 36
            self.traced["encode prompt"] = {}

    @staticmethod
    def vae_key(a: _Args, full: bool) -> tuple:
        from lowmem.models.vae import FULL_VAE_CONFIG, TINY_VAE_CONFIG

        config = a.vae_config if a.vae_config is not None else (FULL_VAE_CONFIG if full else TINY_VAE_CONFIG)
        return peaks.vae_config_key(config)

    def decode(self, resolution: int, tile: Optional[int]) -> int:
        """Traced live bytes of decoding: untiled when `tile` is None."""
        if tile is None or tile >= resolution:
            return peaks.vae_decode(self.vae_key, resolution)
        return peaks.vae_decode_tiled(self.vae_key, resolution, tile)

    def activations(self, phase: str) -> int:
        return max(self.traced.get(phase, {}).values(), default=0)


def _solve(a: _Args) -> Plan:
    sizes = _Sizes(a)
    cuda = sizes.cuda
    blocks, other = sizes.blocks, sizes.other
    n = len(blocks)
    block = max(blocks) if blocks else 0
    reserve = fixed_reserve(a.device)
    usable = int(a.budget * (1 - SAFETY))
    vlm_bytes, vae_weights = sizes.vlm_weights, sizes.vae_weights

    def with_slack(live: int) -> int:
        return live + allocator_slack(a.device, live)

    dit_act = sizes.activations("denoise")
    pixels_tile_min = VAE_TILES[-1] if a.vae_tile is None else min(a.vae_tile, a.resolution)
    smallest_decode = sizes.decode(a.resolution, pixels_tile_min)

    # Caches kept on the host come to the device through the cache's own ring of slots.
    from lowmem.spotedit.cache import CACHE_SLOTS as cache_slots

    def resident_count(cache_on_device: bool, slots: int) -> int:
        caches = sizes.cache_per_block * (n if cache_on_device else cache_slots) + sizes.selector_state
        # The resident set must fit both while denoising and while decoding (smallest VAE tile).
        fixed = reserve + other + vae_weights + max(with_slack(dit_act) + caches, with_slack(smallest_decode))
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
    streamed = [blocks[i] for i in range(n) if i not in set(resident)]
    depth = min(a.depth, slots - 1) if slots else 0
    storage = "none"
    if slots:
        storage = a.storage
        if storage == "auto":
            if not cuda:
                storage = "disk"
            elif a.host_ram is not None and sum(streamed) > a.host_ram // 2:
                storage = "disk"
            else:
                storage = "pinned"
    pinned = pinned_bytes(streamed, storage, slots) if cuda else 0
    notes = []
    if storage == "disk" and cuda:
        notes.append("streamed blocks exceed half the host RAM: they are read from per-block files on disk")
    if not cuda:
        notes.append("compute on CPU: the budget bounds RAM; streamed blocks are read from disk")

    # Phases.
    dit_resident = sum(blocks[i] for i in resident)
    slot_bytes = slots * block
    caches_device = sizes.cache_per_block * (n if cache_placement == "device" else cache_slots)
    denoise = {"runtime reserve": reserve, "dit other weights": other, "dit resident blocks": dit_resident,
               "dit slots": slot_bytes, "dit activations": dit_act, "allocator slack": allocator_slack(a.device, dit_act),
               "vae weights": vae_weights}
    if a.spotedit:
        denoise["spotedit caches"] = caches_device
        denoise["spotedit selector state"] = sizes.selector_state
    base_decode = reserve + other + dit_resident + slot_bytes + vae_weights
    tile = a.vae_tile
    untiled = sizes.decode(a.resolution, None)
    if tile is None and base_decode + with_slack(untiled) > usable:
        tile = next((t for t in VAE_TILES if t < a.resolution and base_decode + with_slack(sizes.decode(a.resolution, t))
                     <= usable), VAE_TILES[-1])
    tiled = tile is not None and tile < a.resolution
    decode_act = sizes.decode(a.resolution, tile if tiled else None)
    sizes.traced["decode"] = {f"vae decode, {tile}px tiles" if tiled else "vae decode, untiled": decode_act}
    encode_act = sizes.activations("encode image")
    vlm_act = sizes.activations("encode prompt")
    # The conditioner stays resident only if it fits beside the DiT's device part in every phase:
    # while encoding the prompt, and through the image encode, denoising and decoding that follow.
    dit_part = other + dit_resident + slot_bytes
    later_peak = max(sum(denoise.values()), base_decode + with_slack(decode_act),
                     reserve + dit_part + vae_weights + with_slack(encode_act))
    vlm_resident = bool(vlm_bytes) and max(later_peak, reserve + dit_part + vae_weights + with_slack(vlm_act)) + vlm_bytes <= usable
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
                  "allocator slack": allocator_slack(a.device, vlm_act), "vae weights": vae_weights, **dit_during_encode}
        if reserve + vlm_bytes + with_slack(vlm_act) + vae_weights > usable:
            vlm_placement = "streamed"
            # Everything but the decoder layers on the device, the layers through a ring of slots.
            outside = vlm_bytes - sizes.vlm_layers * sizes.vlm_layer
            encode["vlm weights"] = outside + VLM_SLOTS * sizes.vlm_layer
            notes.append("the conditioner does not fit whole: it is streamed layer by layer, then evicted")
        phases["encode prompt"] = encode
    phases["encode image"] = {"runtime reserve": reserve, **resident_vlm, **dit_during_encode, "vae weights": vae_weights,
                              "vae encode": encode_act, "allocator slack": allocator_slack(a.device, encode_act)}
    phases["denoise"] = {**resident_vlm, **denoise}
    phases["decode"] = {"runtime reserve": reserve, **resident_vlm, "dit other weights": other,
                        "dit resident blocks": dit_resident, "dit slots": slot_bytes, "vae weights": vae_weights,
                        "vae decode": decode_act, "allocator slack": allocator_slack(a.device, decode_act)}
    if k < 0 or resident_count(cache_placement == "device", slots) < 0:
        phases["denoise"]["dit slots"] = max(slot_bytes, block)  # cannot hold even one slot
    phases = {name: {k: v for k, v in items.items() if v} for name, items in phases.items()}
    traced = {name: sizes.traced[name] for name in phases if sizes.traced.get(name)}
    # A part evicted between uses keeps one pinned host copy (lowmem.offload.device_part), so placing it
    # again is one asynchronous copy up and evicting it copies nothing back.
    dit_copy = arena_bytes([other] + [blocks[i] for i in resident]) if cuda and not vlm_resident else 0
    vlm_copy = arena_bytes([vlm_bytes]) if cuda and vlm_bytes and not vlm_resident else 0
    spot_arena = arena_bytes([sizes.cache_per_block] * n) if cache_placement == "host" else 0
    pinned_total = pinned + dit_copy + vlm_copy + spot_arena
    if a.host_ram is not None and pinned_total > a.host_ram:
        notes.append(f"this plan pins {format_bytes(pinned_total)} of host RAM, more than the {format_bytes(a.host_ram)} "
                     "given: use a quantized model or a bigger budget, or --host-ram with what this machine has")
    dit = DiTPlan(
        precision=sizes.precision, placement="resident" if not slots else "streamed", weight_bytes=sum(blocks) + other,
        host_copy_bytes=dit_copy, num_blocks=n, block_bytes=block, other_bytes=other, resident_blocks=resident,
        prefetch_depth=depth, slots=slots, storage=storage, pinned_host_bytes=pinned,
    )
    return Plan(
        device=a.device, budget=a.budget, resolution=a.resolution, image_tokens=sizes.image_tokens,
        text_tokens=sizes.text_tokens, batch=a.batch,
        vlm=ComponentPlan(precision=sizes.vlm_precision, placement=vlm_placement, weight_bytes=vlm_bytes,
                          host_copy_bytes=vlm_copy),
        dit=dit,
        vae=VAEPlan(precision="fp32", placement="resident", weight_bytes=vae_weights, tiled=tiled, tile=tile if tiled else None),
        spotedit=SpotEditPlan(enabled=a.spotedit, cache_placement=cache_placement, cache_bytes=sizes.cache_per_block * n,
                              pinned_host_bytes=spot_arena),
        estimate=MemoryEstimate(phases=phases, traced=traced), preset=a.preset, notes=notes, compute=a.compute,
    )


def _stored_precision(model: ModelOrConfig) -> str:
    if isinstance(model, DiTConfig):
        return "bf16"
    if is_quantized(model.double_blocks):
        # Quantized modules name their scheme (quantize.QuantizedLinear.scheme); the planner only reads it.
        schemes = {m.scheme for m in model.double_blocks.modules() if isinstance(getattr(m, "scheme", None), str)}
        return "+".join(sorted(schemes)) or "quantized"
    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype))


def _refusal(a: _Args, plan: Plan) -> str:
    """One message: what does not fit, by how much, and the changes that would make it fit."""
    need = plan.estimate.peak
    # A need and the smallest budget are rounded up, the budget given down: figures that differ never print
    # alike, and giving the printed figure is enough.
    head = (f"a {a.resolution}x{a.resolution} run in {plan.dit.precision} needs about {format_bytes(need, 'up')} in its "
            f"{plan.estimate.peak_phase} phase but the budget is {format_bytes(a.budget, 'down')}")
    fixes = []

    def fits(**changes) -> Optional[Plan]:
        try:
            p = _solve(a.but(**changes))
        except Exception:  # noqa: BLE001 - a probe that cannot even be built is simply not a fix
            return None
        return p if p.fits else None

    if a.quantization != "nf4" and (p := fits(quantization="nf4")):
        fixes.append(f"--quantization nf4 (peak {format_bytes(p.estimate.peak, 'up')})")
    for res in RESOLUTIONS:
        if res < a.resolution and (p := fits(resolution=res)):
            fixes.append(f"--resolution {res} (peak {format_bytes(p.estimate.peak, 'up')})")
            break
    if a.vae_tile is None or a.vae_tile > VAE_TILES[-1]:
        if p := fits(vae_tile=VAE_TILES[-1]):
            fixes.append(f"smaller VAE tiles ({VAE_TILES[-1]} px)")
    if not fixes and a.quantization != "nf4":
        for res in RESOLUTIONS:
            if res < a.resolution and (p := fits(quantization="nf4", resolution=res)):
                fixes.append(f"--quantization nf4 with --resolution {res} (peak {format_bytes(p.estimate.peak, 'up')})")
                break
    if a.spotedit and (p := fits(spotedit=False)):
        fixes.append("--no-spot (no SpotEdit caches)")
    # The smallest budget that fits, to the byte (a few dozen solves of a few ms): usually the need itself,
    # so the message names one figure, not a need and a search's approximation of it.
    lo, hi = a.budget, need
    while fits(budget=hi) is None and hi < 10**15:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(budget=mid) else (mid, hi)
    fixes.append(f"a budget of at least {format_bytes(hi, 'up')}")
    return head + "; to make it fit use " + ", or ".join(fixes)
