"""Schemes and QuantizedLinear: plain-tensor state, both backends, no cached derived tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lowmem.errors import LowmemError
from quantize import QuantizedLinear, dequantize, packed_layout, quantize_linear_weight, weight_error
from quantize.schemes import SCHEME_BACKENDS, SCHEMES

CASES = [(s, b) for s in SCHEMES for b in SCHEME_BACKENDS[s]]
BOUND = {"int8": 0.01, "fp8": 0.04, "nf4": 0.12}  # e4m3 keeps 3 mantissa bits: ~2.6% on Gaussian weights


@pytest.mark.parametrize("scheme,backend", CASES)
def test_stored_tensors_match_the_meta_layout_and_error_bound(scheme, backend):
    w = (torch.randn(96, 128, generator=torch.Generator().manual_seed(0)) * 0.05).to(torch.bfloat16)
    stored = quantize_linear_weight(w, scheme, backend)
    layout = packed_layout((96, 128), scheme, backend)
    assert {k: (tuple(v.shape), v.dtype) for k, v in stored.items()} == {k: (tuple(s), d) for k, (s, d) in layout.items()}
    assert all(type(v) is torch.Tensor for v in stored.values())
    rel, sqnr = weight_error(w, dequantize(stored, (96, 128), scheme, backend, torch.float32))
    assert 0 < rel < BOUND[scheme] and sqnr > 15


@pytest.mark.parametrize("scheme,backend", CASES)
def test_quantized_linear_state_round_trips_and_reads_tensors_at_call_time(scheme, backend, tmp_path):
    linear = torch.nn.Linear(128, 64).to(torch.bfloat16)
    q = QuantizedLinear.from_linear(linear, scheme, backend)
    x = torch.randn(3, 128)
    expected = F.linear(x, q.dequantized_weight(torch.float32), linear.bias.float())
    assert torch.equal(q(x), expected)
    save_file(q.state_dict(), tmp_path / "q.safetensors")
    fresh = QuantizedLinear(128, 64, True, scheme, backend, device="meta")
    fresh.load_state_dict(load_file(tmp_path / "q.safetensors"), assign=True)
    assert torch.equal(fresh(x), expected)
    # A streamer re-points buffers to views of another buffer: forward must follow them.
    flat = torch.cat([b.reshape(-1).view(torch.uint8) for b in q.buffers()])
    offset = 0
    for name in q.stored_names:
        buf = q._buffers[name]
        nbytes = buf.numel() * buf.element_size()
        fresh._buffers[name] = flat[offset: offset + nbytes].view(buf.dtype).view(buf.shape)
        offset += nbytes
    assert torch.equal(fresh(x), expected)
    fresh._buffers["scale"] = fresh._buffers["scale"] * 2
    assert not torch.equal(fresh(x), expected)


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(LowmemError, match="unsupported quantization scheme 'fp3'"):
        quantize_linear_weight(torch.zeros(4, 64), "fp3", "bnb")
    with pytest.raises(LowmemError, match="backend"):
        quantize_linear_weight(torch.zeros(4, 64), "int8", "gguf")
