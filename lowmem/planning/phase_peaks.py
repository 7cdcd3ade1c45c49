"""Peak live bytes of each phase of an edit, traced from the real modules on `meta` at plan time.

Every activation number the planner uses comes from here: the DiT's forward (its blocks and the
parts around them), a SpotEdit partial step at its expected active fraction, SpotEdit's selector,
the VAE's encode and decode (untiled, or per tile size) and the Qwen3-VL conditioner's forward,
each at the requested resolution, text length and CFG batch, each traced by `live_bytes.trace_peak`.

Why traced at plan time rather than read from a table: the modules behind these numbers are
being changed (the block frees q/k/v early, RoPE and dequantisation lose temporaries, SpotEdit's
caches move to device slots), and a trace follows each change the moment it lands, at any
resolution and text length, where a table would be stale or need a grid of entries. Each trace is
a few hundredths to a few tenths of a second; all those behind one plan took 1.9 s the first time
in a process on a 2-core machine under a load average of 11 (0.6 s for a second precision that
shares the VAE and conditioner traces), and 0.02 s after (`functools.lru_cache` per config,
precision, resolution, text length and batch).

Full depth is never traced: a block-stacked module is traced at a depth whose peak equals the
full one. The DiT at depth 2 (from block 2 on, the forward holds the embedded image and the
previous block's output while the block runs, as every later block does); the conditioner's text
decoder at 1 and 2 layers, extrapolated linearly (each layer adds one hidden state, which the
conditioner keeps); its vision tower at its DeepStack count + 1 blocks with every DeepStack feature
taken early. A tiled VAE decode is one traced tile decode plus the decoded tiles diffusers holds
(`vae_decode_tiled`; a test compares it with a full trace of the tiled decode).
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import lru_cache
from typing import Any, Callable, Optional

import torch

from lowmem.models.dit import SpatialEditDiT, build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.planning.live_bytes import LiveBytes, trace_peak
from quantize.plan import swap_default_linears, use_compute
from quantize.schemes import SCHEMES

META = torch.device("meta")
TRACED_DIT_DEPTH = 2
VAE_SCALE = 8  # Wan2.1 VAE spatial compression
DIT_PATCH = 16  # pixels per DiT token side: VAE x8, patch 2x2
VISION_TOKEN = 32  # pixels per Qwen3-VL vision token side: patch 16, 2x2 merge

# Qwen/Qwen3-VL-8B-Instruct's config.json (the released conditioner of SpatialEdit).
QWEN3_VL_8B_TEXT = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                        "mrope_interleaved": True},
}
QWEN3_VL_8B_VISION = {
    "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "in_channels": 3,
    "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
    "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24],
}


def qwen3_vl_8b_config() -> Any:
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(text_config=QWEN3_VL_8B_TEXT, vision_config=QWEN3_VL_8B_VISION, tie_word_embeddings=False)


def activation_dtype(device: str) -> torch.dtype:
    """The pipeline's compute dtype: bf16 on CUDA, float32 on the CPU (`pipeline.default_dtype`)."""
    return torch.bfloat16 if device == "cuda" else torch.float32


# ---------------------------------------------------------------------------------------- the DiT
def traced_dit(config: DiTConfig, precision: str, dtype: torch.dtype, depth: int = TRACED_DIT_DEPTH,
               compute: str = "bf16") -> SpatialEditDiT:
    """The DiT at `depth` blocks on meta, full width, its Linears stored as `precision` stores them
    and their GEMMs run in `compute` mode (`quantize.plan.use_compute`: a W8A8 mode's transients, the
    int8/fp8 activation codes, the weight's codes when re-quantized, the int32 accumulator, are traced).
    Built once per argument set, however they are passed."""
    return _traced_dit(config, precision, dtype, depth, compute)


@lru_cache(maxsize=16)
def _traced_dit(config: DiTConfig, precision: str, dtype: torch.dtype, depth: int, compute: str) -> SpatialEditDiT:
    model = build_dit(replace(config, mm_double_blocks_depth=depth), device=META, dtype=dtype)
    if precision in SCHEMES:
        swap_default_linears(model, "dit", precision)
    if compute != "bf16":
        use_compute(model, compute, "dit")
    return model


def _trace_dit(fn) -> int:
    """Trace a DiT call with its RoPE tables built inside it: they are cached per grid and device
    (and stay on the device for the run), so a trace must not depend on what ran before."""
    from lowmem.models import rope

    rope._grid_tables.cache_clear()
    return trace_peak(fn)


def _dit_inputs(config: DiTConfig, resolution: int, text_tokens: int, batch: int, dtype: torch.dtype):
    side = resolution // VAE_SCALE
    latents = torch.empty(batch, 2, config.in_channels, 1, side, side, device=META, dtype=dtype)  # [condition ; target]
    text = torch.empty(batch, text_tokens, config.text_states_dim, device=META, dtype=dtype)
    return latents, torch.empty(batch, device=META), text


@lru_cache(maxsize=64)
def dit_forward(config: DiTConfig, precision: str, dtype: torch.dtype, resolution: int, text_tokens: int,
                batch: int, compute: str = "bf16") -> int:
    """Peak bytes of one full DiT forward (the denoising step's network call)."""
    model = traced_dit(config, precision, dtype, compute=compute)
    return _trace_dit(forward_call(model, resolution, text_tokens, batch))


def forward_call(model: SpatialEditDiT, resolution: int, text_tokens: int, batch: int) -> Callable[[], Any]:
    """One full forward of `model` on meta inputs (traced for bytes here, counted for FLOPs by the time model)."""
    latents, timestep, text = _dit_inputs(model.config, resolution, text_tokens, batch, model.dtype)
    return lambda: model(latents, timestep, text)


@lru_cache(maxsize=64)
def dit_block(config: DiTConfig, precision: str, dtype: torch.dtype, resolution: int, text_tokens: int,
              batch: int, compute: str = "bf16") -> int:
    """Peak bytes of one block beyond its inputs (shown by `lowmem plan`; the forward holds more)."""
    model = traced_dit(config, precision, dtype, compute=compute)
    latents, timestep, text = _dit_inputs(config, resolution, text_tokens, batch, dtype)
    img, grid = model.embed_image(latents)
    txt, ctx = model.context(timestep, text, None, grid)
    return trace_peak(lambda: model.double_blocks[0](img, txt, ctx, 0))


@lru_cache(maxsize=64)
def dit_outside_blocks(config: DiTConfig, precision: str, dtype: torch.dtype, resolution: int, text_tokens: int,
                       batch: int, compute: str = "bf16") -> int:
    """Peak bytes of the DiT's forward with its blocks skipped (embedders, RoPE tables, head)."""
    model = copy.copy(traced_dit(config, precision, dtype, compute=compute))
    model.block_runner = lambda blocks, img, txt, ctx: (img, txt)
    latents, timestep, text = _dit_inputs(config, resolution, text_tokens, batch, dtype)
    return _trace_dit(lambda: model(latents, timestep, text))


@lru_cache(maxsize=64)
def spot_step(config: DiTConfig, precision: str, dtype: torch.dtype, resolution: int, text_tokens: int, batch: int,
              active_fraction: float, compute: str = "bf16") -> int:
    """Peak bytes of a SpotEdit partial step with `active_fraction` of the target tokens recomputed,
    beyond its K/V caches (the planner places those; see `spotedit.cache`)."""
    model = traced_dit(config, precision, dtype, compute=compute)
    return _trace_dit(spot_call(model, resolution, text_tokens, batch, active_fraction))


def spot_call(model: SpatialEditDiT, resolution: int, text_tokens: int, batch: int,
              active_fraction: float) -> Callable[[], Any]:
    """One SpotEdit partial step of `model` on meta inputs, its caches recorded beforehand."""
    from lowmem.spotedit import DiTSpotModel

    spot = DiTSpotModel(model)
    latents, timestep, text = _dit_inputs(model.config, resolution, text_tokens, batch, model.dtype)
    with torch.no_grad():
        cache = spot.new_cache(META)
        spot.full(latents, timestep, text, None, cache)  # the caches exist before a partial step
    tokens = (resolution // DIT_PATCH) ** 2
    # Which tokens are active is decided on the host (real indices); which ones does not change the bytes.
    active = torch.arange(max(1, round(active_fraction * tokens)))
    return lambda: spot.partial(latents, timestep, text, None, active, cache, 0.5)


@lru_cache(maxsize=16)
def selector(vae_config: tuple, resolution: int) -> int:
    """Peak bytes of SpotEdit's selector score (the early VAE decoder stages over the whole latent)."""
    return trace_peak(selector_call(vae_config, resolution))


@lru_cache(maxsize=32)
def selector_state(vae_config: tuple, resolution: int, dtype: torch.dtype) -> int:
    """Bytes a SpotSelector keeps through the denoise phase: its copy of the score stages in the
    compute `dtype` and the condition's cached features (traced: what is still alive once built)."""
    from lowmem.spotedit.selector import SpotSelector

    vae = traced_vae(vae_config)
    side = resolution // VAE_SCALE
    condition = torch.empty(1, vae.module.config.z_dim, 1, side, side, device=META, dtype=vae.dtype)
    with torch.no_grad(), LiveBytes() as tracer:
        selector = SpotSelector(vae, condition, threshold=0.15, dtype=dtype)
        kept = tracer.live
    del selector
    return kept


def selector_call(vae_config: tuple, resolution: int) -> Callable[[], Any]:
    vae = traced_vae(vae_config)
    side = resolution // VAE_SCALE
    latents = torch.empty(1, vae.module.config.z_dim, 1, side, side, device=META, dtype=vae.dtype)
    from lowmem.spotedit.score_stages import ScoreStages

    stages = ScoreStages(vae, vae.dtype, META)  # what SpotSelector runs (one-frame stages)
    return lambda: stages(latents)


# ---------------------------------------------------------------------------------------- the VAE
def vae_config_key(config: Optional[dict]) -> tuple:
    """A hashable form of AutoencoderKLWan kwargs (None: the real Wan2.1 VAE)."""
    from lowmem.models.vae import FULL_VAE_CONFIG

    config = FULL_VAE_CONFIG if config is None else config
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(config).items()
                        if not k.startswith("_")))


@lru_cache(maxsize=4)
def traced_vae(config_key: tuple):
    from diffusers import AutoencoderKLWan

    from lowmem.models.vae import WanVAE

    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config_key}
    with torch.device(META):
        module = AutoencoderKLWan(**kwargs)
    return WanVAE(module)


def vae_weight_bytes(config_key: tuple) -> int:
    return traced_vae(config_key).weight_bytes()


def vae_encode_call(config_key: tuple, width: int, height: int) -> Callable[[], Any]:
    """One VAE encode of a `width` x `height` image on meta (for its bytes here, its FLOPs in planning.edit_time)."""
    vae = traced_vae(config_key)
    images = torch.empty(1, 3, height, width, device=META)
    return lambda: vae.encode(images)


def vae_decode_call(config_key: tuple, width: int, height: int) -> Callable[[], Any]:
    """One untiled VAE decode of a `width` x `height` image on meta."""
    vae = traced_vae(config_key)
    latents = torch.empty(1, vae.module.config.z_dim, 1, height // VAE_SCALE, width // VAE_SCALE, device=META)
    return lambda: vae.decode(latents)


@lru_cache(maxsize=16)
def vae_encode(config_key: tuple, resolution: int) -> int:
    return trace_peak(vae_encode_call(config_key, resolution, resolution))


@lru_cache(maxsize=32)
def vae_decode(config_key: tuple, resolution: int) -> int:
    """Peak bytes of an untiled decode of a `resolution`² image."""
    return trace_peak(vae_decode_call(config_key, resolution, resolution))


def vae_decode_tiled(config_key: tuple, resolution: int, tile: int) -> int:
    """Peak bytes of a tiled decode: the traced decode of one full tile while every decoded tile
    is held (diffusers decodes all tiles, then blends them), or the blend holding those tiles and
    three images (the blended rows, their concatenation, the clamp)."""
    from lowmem.models.vae import tile_stride

    if tile >= resolution:
        return vae_decode(config_key, resolution)
    side, tile_lat, stride_lat = resolution // VAE_SCALE, tile // VAE_SCALE, tile_stride(tile) // VAE_SCALE
    element = traced_vae(config_key).dtype.itemsize
    extents = [min(tile_lat, side - i) * VAE_SCALE for i in range(0, side, stride_lat)]
    tiles_held = sum(3 * h * w * element for h in extents for w in extents)
    image = 3 * resolution * resolution * element
    return tiles_held + max(vae_decode(config_key, tile), 3 * image)


# ---------------------------------------------------------------------------------- the conditioner
def vision_tokens(resolution: int) -> int:
    """Qwen3-VL tokens of a `resolution`² image (16 px patches merged 2x2), with its start/end markers."""
    return (resolution // VISION_TOKEN) ** 2 + 2


@lru_cache(maxsize=4)
def _conditioner(config_json: str, layers: int, vision_depth: int, deepstack: int):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig.from_dict(json.loads(config_json))
    config.text_config.num_hidden_layers = layers
    config.vision_config.depth = vision_depth
    config.vision_config.deepstack_visual_indexes = list(range(deepstack))
    config._attn_implementation = "sdpa"  # what from_pretrained picks: the fused kernels on CUDA
    with torch.device(META):
        model = Qwen3VLForConditionalGeneration(config)
    return model.to(torch.bfloat16).eval()


@lru_cache(maxsize=16)
def conditioner(config_json: str, resolution: int, prompt_tokens: int, dit_text_tokens: int) -> int:
    """Peak bytes of encoding one prompt of `prompt_tokens` tokens (image included) while the other
    prompt's result (`dit_text_tokens` states) is held: max(vision tower, text decoder)."""
    from transformers.vision_utils import (
        get_vision_cu_seqlens,
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    full = json.loads(config_json)
    depth = full["vision_config"]["depth"]
    deepstack = len(full["vision_config"]["deepstack_visual_indexes"])
    layers = full["text_config"]["num_hidden_layers"]
    vision_depth = min(depth, deepstack + 1)
    # Vision tower: every DeepStack feature taken, then one more block and the merger.
    visual = _conditioner(config_json, 1, vision_depth, deepstack).model.visual
    patches = (resolution // visual.patch_size) ** 2
    grid = torch.tensor([[1, resolution // visual.patch_size, resolution // visual.patch_size]])
    indices, weights = get_vision_interpolation_indices_and_weights(
        grid, visual.num_grid_per_side, visual.interpolation_mode, visual.interpolation_align_corners,
        visual.spatial_merge_size)
    helpers = {"interp_indices": indices.to(META), "interp_weights": weights.to(META),
               "position_ids": get_vision_position_ids(grid, visual.spatial_merge_size).to(META),
               "cu_seqlens": get_vision_cu_seqlens(grid)}  # stays on the host: read for the per-image split
    channels = visual.config.in_channels * visual.config.temporal_patch_size * visual.patch_size ** 2
    pixels = torch.empty(patches, channels, device=META, dtype=torch.bfloat16)
    vision = trace_peak(lambda: visual(pixels, grid_thw=grid, **dict(helpers)))

    hidden = full["text_config"]["hidden_size"]
    image_tokens = patches // visual.spatial_merge_size ** 2

    def text_peak(n_layers: int) -> int:
        lm = _conditioner(config_json, n_layers, 1, 0).model.language_model

        def run():
            held = [torch.empty(n, hidden, device=META, dtype=torch.bfloat16)
                    for n in (dit_text_tokens, *(image_tokens,) * (deepstack + 1))]  # other prompt, image + DeepStack
            embeds = torch.empty(1, prompt_tokens, hidden, device=META, dtype=torch.bfloat16)
            positions = torch.empty(3, 1, prompt_tokens, dtype=torch.long, device=META)
            lm(inputs_embeds=embeds, position_ids=positions, output_hidden_states=True, use_cache=False)
            del held

        return trace_peak(run)

    one, two = text_peak(1), text_peak(2)
    return max(vision, one + (layers - 1) * (two - one))


def conditioner_config_json(config: Any) -> str:
    """A Qwen3VLConfig as the hashable JSON the traces are cached by."""
    return config.to_json_string(use_diff=False)

