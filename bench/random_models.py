"""SpatialEdit's three components with seeded random weights made on a device: no download, no file.

The GPU suite builds the full-size 16B DiT, Qwen3-VL-8B and the Wan2.1 VAE on the card in seconds,
each Linear in the precision the case runs (int8 / nf4 quantized from a transient bf16 weight made
on the device, with the real loader's skip lists), and hands them to the real planner and runtime;
`--cpu` builds the tiny configurations the same way. The processor (tokenizer and image processor)
is the tiny Qwen3-VL folder's: its vision patching is Qwen3-VL-8B's (16 px patches merged 2x2), so a
1024² image becomes the same 1,024 vision tokens, and the full-size config takes its token ids.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lowmem.models.conditioner import QwenVLConditioner, load_processor
from lowmem.models.dit import SpatialEditDiT, build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, TINY_DIT_CONFIG, DiTConfig
from lowmem.models.vae import FULL_VAE_CONFIG, TINY_VAE_CONFIG, WanVAE
from lowmem.planning.phase_peaks import qwen3_vl_8b_config
from lowmem.tiny.qwen3vl import write_tiny_qwen3vl
from quantize.linear import QuantizedLinear
from quantize.plan import swap_default_linears
from quantize.schemes import SCHEMES, quantize_linear_weight

TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass(frozen=True)
class Sizes:
    name: str
    dit: DiTConfig
    vae: dict[str, Any]
    full_vlm: bool  # Qwen3-VL-8B's config (else the tiny folder's own)


FULL = Sizes("full", FULL_DIT_CONFIG, FULL_VAE_CONFIG, True)
# Four DiT blocks, so that streaming them through fewer slots copies blocks at every step.
TINY = Sizes("tiny", replace(TINY_DIT_CONFIG, mm_double_blocks_depth=4), TINY_VAE_CONFIG, False)


def seeded_(tensor: torch.Tensor, seed: int, std: float) -> None:
    tensor.normal_(0.0, std, generator=torch.Generator(tensor.device).manual_seed(seed))


def fill_random(module: nn.Module, seed: int, device: torch.device, dtype: torch.dtype) -> None:
    """Give a meta-built module real seeded weights on `device`. A QuantizedLinear is filled by
    quantizing a bf16 weight made on `device` and dropped at once; norm scales are ones, other
    vectors zeros, matrices N(0, 1/fan_in)."""
    for index, (name, sub) in enumerate(module.named_modules()):
        if isinstance(sub, QuantizedLinear) and any(t.is_meta for t in sub.buffers()):
            weight = torch.empty(sub.out_features, sub.in_features, dtype=torch.bfloat16, device=device)
            seeded_(weight, seed * 1000 + index, sub.in_features**-0.5)
            for key, value in quantize_linear_weight(weight, sub.scheme, sub.backend).items():
                sub._buffers[key] = value
            del weight
    for name, param in list(module.named_parameters()):
        if not param.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        value = torch.empty(param.shape, dtype=dtype, device=device)
        if param.dim() == 1:
            value.fill_(1.0 if leaf == "weight" else 0.0)
        else:
            seeded_(value, seed * 1000 + zlib.crc32(name.encode()) % 997, param.shape[-1] ** -0.5)
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    for sub in module.modules():  # buffers computed at construction (rotary tables) follow the weights
        for key, buffer in sub._buffers.items():
            if buffer is not None and buffer.device != device:
                sub._buffers[key] = buffer.to(device)


def quantize_in_place(model: nn.Module, component: str, precision: str) -> None:
    """Swap the Linears the real loader quantizes (its default skip list) for empty QuantizedLinears."""
    if precision in SCHEMES:
        swap_default_linears(model, component, precision)


def random_dit(config: DiTConfig, precision: str, dtype: torch.dtype) -> SpatialEditDiT:
    """The DiT on `meta`, its Linears as `precision` stores them: sized for the planner, no weight made yet."""
    dit = build_dit(config, device="meta", dtype=dtype)
    quantize_in_place(dit, "dit", precision)
    return dit


def fill_dit_outside_blocks(dit: SpatialEditDiT, device: torch.device, dtype: torch.dtype) -> None:
    for name, child in dit.named_children():
        if name != "double_blocks":
            fill_random(child, zlib.crc32(name.encode()) % 1000, device, dtype)


def block_filler(device: torch.device, dtype: torch.dtype) -> Callable[[int, nn.Module], None]:
    """A runtime `block_source`: block i gets its weights on `device` just before it is packed or placed."""
    return lambda index, block: fill_random(block, index + 1, device, dtype)


def tiny_qwen3vl_folder(folder: Path) -> Path:
    """The tiny Qwen3-VL folder (its tokenizer and processor serve every size)."""
    if not (folder / "config.json").exists():
        write_tiny_qwen3vl(folder)
    return folder


def random_conditioner(sizes: Sizes, folder: Path, precision: str, device: torch.device,
                       dtype: torch.dtype) -> QwenVLConditioner:
    """Qwen3-VL with random weights on `device`, its decoder's Linears in `precision`, and the tiny
    folder's processor."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    tiny = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    config = qwen3_vl_8b_config() if sizes.full_vlm else tiny
    for key in TOKEN_IDS:  # the processor's special tokens, whatever the model's size
        setattr(config, key, getattr(tiny, key))
    with init_empty_weights(include_buffers=False):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    quantize_in_place(model, "vlm", precision)
    fill_random(model, 7, device, dtype)
    return QwenVLConditioner(model, load_processor(folder))


def random_vae(sizes: Sizes, device: torch.device, seed: int = 11) -> WanVAE:
    """The Wan VAE (float32, as the loader reads it) with diffusers' own initialisation, on `device`."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    with torch.device(device):
        module = AutoencoderKLWan(**sizes.vae)
    return WanVAE(module)
