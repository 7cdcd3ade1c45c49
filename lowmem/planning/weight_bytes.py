"""Exact bytes of the stored weights, per format as written, counted on models built on `meta`.

A quantized Linear is swapped for `quantize.QuantizedLinear` on meta, whose buffers are exactly
the tensors `quantize` writes (`quantize.packed_layout`: today nf4 is 4 bits plus an fp32 absmax
per 64 weights; whatever it becomes, the count follows); everything `quantize` leaves alone stays
in the compute precision. A model that is already quantized is counted as it is stored.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch
from torch import nn

from lowmem.models.dit_config import DiTConfig
from quantize.schemes import SCHEMES as QUANTIZED

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, **{scheme: torch.bfloat16 for scheme in QUANTIZED}}


def module_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module` as it holds them."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def is_quantized(module: nn.Module) -> bool:
    return any(getattr(m, "scheme", None) in QUANTIZED for m in module.modules())


def _quantize_on_meta(model: nn.Module, component: str, precision: str) -> nn.Module:
    from quantize.plan import swap_default_linears

    swap_default_linears(model, component, precision)
    return model


@lru_cache(maxsize=16)
def dit_bytes(config: DiTConfig, precision: str) -> tuple[int, int]:
    """(bytes of one block, bytes of everything outside the blocks) of a DiT stored as `precision`."""
    from lowmem.models.dit import build_dit

    model = build_dit(replace(config, mm_double_blocks_depth=1), device="meta", dtype=DTYPES[precision])
    if precision in QUANTIZED:
        model = _quantize_on_meta(model, "dit", precision)
    block = module_bytes(model.double_blocks[0])
    return block, module_bytes(model) - block


def model_dit_bytes(model: nn.Module) -> tuple[list[int], int]:
    """(bytes of each block, bytes outside the blocks) of a built DiT, as it stores them."""
    blocks = [module_bytes(b) for b in model.double_blocks]
    return blocks, module_bytes(model) - sum(blocks)


@lru_cache(maxsize=8)
def conditioner_bytes(config_json: str, precision: str) -> tuple[int, int]:
    """(bytes of one text decoder layer, bytes of everything) of Qwen3-VL stored as `precision`:
    its decoder layers quantized as `lowmem quantize` does, the rest in bf16."""
    import json

    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig.from_dict(json.loads(config_json))
    layers = config.text_config.num_hidden_layers
    config.text_config.num_hidden_layers = 1
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    if precision in QUANTIZED:
        model = _quantize_on_meta(model, "vlm", precision)
    layer = module_bytes(model.model.language_model.layers[0])
    return layer, module_bytes(model) + (layers - 1) * layer

