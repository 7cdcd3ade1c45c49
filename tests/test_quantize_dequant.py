"""Dequantization: equal to each library's own, one pass into the activation dtype, no quanto extension."""

from __future__ import annotations

import pytest
import torch

from quantize import QuantizedLinear, dequantize, packed_layout, quantize_linear_weight
from quantize.schemes import GROUP_SIZE

CASES = [(s, b) for s in ("int8", "nf4") for b in ("bnb", "quanto")]
SCRATCH = 32 << 20  # bytes a dequantization may use beyond its result (the chunked scratch)


def library_dequantize(tensors: dict, shape: tuple[int, int], scheme: str, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Each backend's own dequantizer, as the code did before (float32 temporaries, quanto's unpack)."""
    import bitsandbytes.functional as bnbf
    from optimum.quanto import qint4, qint8
    from optimum.quanto.tensor.packed import PackedTensor
    from optimum.quanto.tensor.weights import WeightQBitsTensor, WeightQBytesTensor

    q, size, stride = tensors["qweight"], torch.Size(shape), (shape[1], 1)
    if scheme == "int8" and backend == "bnb":
        return bnbf.int8_vectorwise_dequant(q, tensors["scale"]).to(dtype)
    if scheme == "int8":
        return WeightQBytesTensor(qint8, 0, size, stride, q, tensors["scale"], None).dequantize().to(dtype)
    if backend == "bnb":
        nested = {}
        if "scale_absmax" in tensors:
            nested = {"offset": tensors["scale_offset"], "state2": bnbf.QuantState(
                absmax=tensors["scale_absmax"], code=bnbf.create_dynamic_map(), blocksize=256, dtype=torch.float32)}
        state = bnbf.QuantState(absmax=tensors["scale"], shape=size, code=bnbf.get_4bit_type("nf4", device="cpu"),
                                blocksize=GROUP_SIZE, quant_type="nf4", dtype=dtype, **nested)
        return bnbf.dequantize_4bit(q, state)
    packed = PackedTensor(q, 4, torch.Size((tensors["scale"].shape[0], GROUP_SIZE)), (GROUP_SIZE, 1))
    return WeightQBitsTensor(qint4, 0, GROUP_SIZE, size, stride, packed, tensors["scale"], tensors["shift"]).dequantize().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme,backend", CASES)
@pytest.mark.parametrize("shape", [(96, 128), (33, 192), (300, 64)])
def test_dequantize_equals_the_library(scheme, backend, shape, dtype):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05
    stored = quantize_linear_weight(w, scheme, backend)
    ours, theirs = dequantize(stored, shape, scheme, backend, dtype), library_dequantize(stored, shape, scheme, backend, dtype)
    assert ours.dtype == dtype and ours.shape == shape
    if scheme == "int8" and backend == "bnb" and dtype == torch.float32:
        # bnb multiplies by the row absmax, then by 1/127; we by (absmax / 127): one float32 rounding apart.
        torch.testing.assert_close(ours, theirs, rtol=2**-22, atol=0)
    else:
        assert torch.equal(ours, theirs)


def test_chunked_4bit_unpack_equals_the_library(monkeypatch):
    """Several chunks per nibble half, and an odd group count (the high half one row short)."""
    monkeypatch.setattr("quantize.schemes.CHUNK_ELEMENTS", 3 * GROUP_SIZE)
    w = torch.randn(13, 320, generator=torch.Generator().manual_seed(2))
    stored = quantize_linear_weight(w, "nf4", "quanto")
    assert stored["scale"].shape[0] % 2 == 1
    for dtype in (torch.bfloat16, torch.float32):
        assert torch.equal(dequantize(stored, (13, 320), "nf4", "quanto", dtype),
                           library_dequantize(stored, (13, 320), "nf4", "quanto", dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scheme,backend", CASES)
def test_dequantize_live_bytes_are_the_result_plus_a_small_constant(scheme, backend, dtype):
    """Traced on meta at the DiT's largest Linear (4096 -> 16384): the library paths held float32
    copies and unpacked codes of the whole weight (3-6 bytes per weight for a bf16 result)."""
    from lowmem.planning.live_bytes import trace_peak

    shape = (16384, 4096)
    stored = {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in packed_layout(shape, scheme, backend).items()}
    result = shape[0] * shape[1] * dtype.itemsize
    scales = sum(t.numel() * t.element_size() for k, t in stored.items() if k != "qweight")
    peak = trace_peak(lambda: dequantize(stored, shape, scheme, backend, dtype))
    assert result <= peak <= result + 2 * scales + SCRATCH


class ExtensionBuilt(AssertionError):
    pass


@pytest.mark.parametrize("scheme,backend", CASES)
def test_no_path_loads_or_builds_quantos_extensions(scheme, backend, monkeypatch):
    """quanto JIT-compiles its C++/CUDA extension (nvcc on CUDA, minutes) the first time one of its
    kernels is used: quantizing, dequantizing and running a layer must never reach one."""
    from optimum.quanto.library.extensions.extension import Extension

    def refuse(self):
        raise ExtensionBuilt(f"quanto extension {self.name} was loaded")

    monkeypatch.setattr(Extension, "lib", property(refuse))
    linear = torch.nn.Linear(128, 64).to(torch.bfloat16)
    layer = QuantizedLinear.from_linear(linear, scheme, backend)
    out = layer(torch.randn(5, 128, dtype=torch.bfloat16))
    assert out.shape == (5, 64) and torch.isfinite(out).all()
