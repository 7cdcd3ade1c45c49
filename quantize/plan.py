"""Which Linear layers get quantized: per component, minus a skip list of fnmatch patterns.

Only 2-D Linear weights are ever quantized; every 1-D tensor, convolution, embedding and norm
stays in the checkpoint precision. The default skip lists keep the tensors that quantization
hurts most (DiT: patch / time / text embeddings, modulation, norms, the final projection;
Qwen3-VL: everything outside the text decoder layers).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Optional

from torch import nn

from quantize.schemes import check_scheme, supports

DIT_DEFAULT_SKIP = ("img_in*", "condition_embedder.*", "*norm*", "*_mod.*", "*modulate_table*", "proj_out*")
VLM_DEFAULT_SKIP = ("model.visual.*", "*embed_tokens*", "lm_head*", "*norm*")
VLM_LAYER_PREFIX = "model.language_model.layers."
DIT_BLOCK_PREFIX = "double_blocks."
COMPONENTS = ("dit", "vlm")

_UNIT = {
    "dit": re.compile(r"^double_blocks\.(\d+)\."),
    "vlm": re.compile(r"^model\.language_model\.layers\.(\d+)\."),
}


def default_skip(component: str) -> tuple[str, ...]:
    return DIT_DEFAULT_SKIP if component == "dit" else VLM_DEFAULT_SKIP


def is_skipped(module_name: str, patterns: Iterable[str]) -> bool:
    weight = f"{module_name}.weight"
    return any(fnmatch.fnmatchcase(module_name, p) or fnmatch.fnmatchcase(weight, p) for p in patterns)


def quantizable_linears(model: nn.Module, component: str, skip: Iterable[str], scheme: str, backend: str) -> list[str]:
    """Names of the Linear modules of `model` to quantize (works on meta-built models)."""
    skip = tuple(skip)
    names = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        if component == "vlm" and not name.startswith(VLM_LAYER_PREFIX):
            continue
        if is_skipped(name, skip):
            continue
        if not supports((module.out_features, module.in_features), scheme, backend):
            continue
        names.append(name)
    return names


def swap_default_linears(model: nn.Module, component: str, scheme: str, backend: Optional[str] = None) -> None:
    """Swap the Linears `lowmem quantize` quantizes by default (the component's skip list; the
    scheme's default backend unless given) for empty QuantizedLinears on meta: a model built as a
    quantized folder stores it, for sizing, tracing or filling."""
    backend = check_scheme(scheme, backend)
    swap_linears(model, quantizable_linears(model, component, default_skip(component), scheme, backend), scheme, backend)


def use_compute(model: nn.Module, mode: str, component: str = "dit") -> int:
    """Run the large Linears' GEMMs of `model` in compute `mode` (bf16 | fp8 | int8): every
    QuantizedLinear, and the Linears `lowmem quantize` quantizes by default where they are stored
    dense (replaced by W8A8Linears holding the same parameters). Returns how many Linears it set."""
    from quantize.compute import check_mode
    from quantize.linear import QuantizedLinear, W8A8Linear

    check_mode(mode)
    dense = set(quantizable_linears(model, component, default_skip(component), "int8", "bnb"))
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, (QuantizedLinear, W8A8Linear)):
            module.compute = mode
        elif name in dense:
            if mode != "bf16":
                parent_name, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, leaf, W8A8Linear(module, mode))
        else:
            continue
        count += 1
    return count


def unit_of(name: str, component: str) -> str:
    """The output file stem a tensor belongs to: block_007 / layer_012, or rest."""
    match = _UNIT[component].match(name)
    if match is None:
        return "rest"
    return f"{'block' if component == 'dit' else 'layer'}_{int(match.group(1)):03d}"


def swap_linears(model: nn.Module, names: Iterable[str], scheme: str, backend: str, device="meta",
                 double_quant: Optional[bool] = None) -> None:
    """Replace each named nn.Linear by an empty QuantizedLinear (on `device`, meta by default);
    `double_quant` None: the layout `convert` writes today."""
    from quantize.linear import QuantizedLinear

    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, leaf)
        bias_dtype = linear.bias.dtype if linear.bias is not None else linear.weight.dtype
        setattr(parent, leaf, QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                              scheme, backend, device=device, bias_dtype=bias_dtype,
                                              double_quant=double_quant))
