"""nf4 with double-quantized scales: bytes per weight, error, and bnb's own nested dequantization."""

from __future__ import annotations

import math

import pytest
import torch

from lowmem.errors import LowmemError
from quantize import QuantizedLinear, dequantize, quantize_linear_weight, weight_error
from quantize.schemes import GROUP_SIZE, stored_bytes

CASES = [(s, b, d) for s in ("int8", "nf4") for b in ("bnb", "quanto") for d in (None, False)]


def heavy_tailed(shape, seed):
    """Student-t weights: the shape of trained weights (outliers set the block scales)."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=g)
    chi2 = torch.randn((4, *shape), generator=g).pow(2).sum(0)
    return (normal / (chi2 / 4).sqrt() * 0.02).to(torch.bfloat16)


@pytest.mark.parametrize("scheme,backend,double_quant", CASES)
def test_stored_bytes_are_the_bytes_written(scheme, backend, double_quant):
    shape = (96, 320)
    stored = quantize_linear_weight(heavy_tailed(shape, 0), scheme, backend, double_quant)
    assert stored_bytes(shape, scheme, backend, double_quant) == sum(t.numel() * t.element_size() for t in stored.values())


def test_bytes_per_weight_at_full_size():
    n = 4096 * 4096
    per_weight = {(s, b): stored_bytes((4096, 4096), s, b) / n for s in ("int8", "nf4") for b in ("bnb", "quanto")}
    assert per_weight[("nf4", "bnb")] == pytest.approx(0.5 + 1 / GROUP_SIZE + 4 / (GROUP_SIZE * 256), abs=1e-6)  # 0.5159
    assert stored_bytes((4096, 4096), "nf4", "bnb", double_quant=False) / n == 0.5625
    assert per_weight[("nf4", "quanto")] == 0.5625
    assert per_weight[("int8", "bnb")] == per_weight[("int8", "quanto")] == 1 + 4 / 4096
    assert stored_bytes((4096, 4096), "nf4") == stored_bytes((4096, 4096), "nf4", "bnb")  # the default backend


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_double_quantized_scales_keep_the_error(seed):
    w = heavy_tailed((512, 1024), seed)
    single = weight_error(w, dequantize(quantize_linear_weight(w, "nf4", "bnb", False), w.shape, "nf4", "bnb", torch.float32))[0]
    double = weight_error(w, dequantize(quantize_linear_weight(w, "nf4", "bnb", True), w.shape, "nf4", "bnb", torch.float32))[0]
    assert double <= single * 1.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_double_quantized_dequantize_equals_bitsandbytes(dtype):
    import bitsandbytes.functional as bnbf

    w = heavy_tailed((96, 320), 3)
    q, state = bnbf.quantize_4bit(w, blocksize=GROUP_SIZE, quant_type="nf4", compress_statistics=True)
    stored = quantize_linear_weight(w, "nf4", "bnb")
    assert torch.equal(stored["qweight"], q) and torch.equal(stored["scale"], state.absmax)
    state.dtype = dtype
    assert torch.equal(dequantize(stored, (96, 320), "nf4", "bnb", dtype), bnbf.dequantize_4bit(q, state))


def test_layer_layout_and_a_clear_error_elsewhere():
    layer = QuantizedLinear.from_linear(torch.nn.Linear(128, 64), "nf4", "bnb")
    assert layer.stored_names == ("qweight", "scale", "scale_absmax", "scale_offset")
    assert layer.scale.dtype == torch.uint8 and math.prod(layer.scale_absmax.shape) == 1
    with pytest.raises(LowmemError, match="nf4/bnb only"):
        quantize_linear_weight(torch.zeros(4, 64), "int8", "bnb", double_quant=True)
