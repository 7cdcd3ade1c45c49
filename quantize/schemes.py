"""Weight quantization schemes for Linear layers, behind one interface over two backends.

A quantized weight is a small dict of plain tensors (no tensor subclasses), so it round-trips
through safetensors and a streamer can re-point it to views of a device buffer:

    int8  per-output-channel absmax int8      qweight int8 (out, in)     scale float32 per row
    nf4   4-bit, blocks/groups of 64 weights  qweight uint8 (packed)     scale (+ shift) per group

Backends: "bnb" (bitsandbytes.functional: int8_vectorwise_quant / quantize_4bit with the NF4 code)
and "quanto" (optimum-quanto: qint8 per-axis absmax / qint4 affine groups of 64, unpacked and
rescaled by quanto's own dequantizer). quanto has no NF4 code book: its "nf4" is 4-bit affine
(scale + zero shift per 64 weights), the same bits per weight. Dequantization returns the dense
weight in the requested dtype; a Linear then runs a plain F.linear on it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from lowmem.errors import LowmemError

SCHEMES = ("int8", "nf4")
BACKENDS = ("bnb", "quanto")
GROUP_SIZE = 64  # nf4 block size (bnb) / int4 group size (quanto)

# Chosen from measurements on CPU: int8 is equally accurate on both (same absmax math) and bnb
# dequantizes ~15x faster. For 4-bit, quanto's affine groups only win on uniform random weights
# (0.064 vs 0.091 weight rel.err); on Gaussian weights the two tie (0.090 vs 0.092) and on
# heavy-tailed ones, the shape of trained weights, bnb's NF4 code book is better (0.111 vs 0.118),
# dequantizes 2-4x faster and has CUDA kernels; and "nf4" should mean NF4.
DEFAULT_BACKEND = {"int8": "bnb", "nf4": "bnb"}


def check_scheme(scheme: str, backend: str | None = None) -> str:
    """Validate (scheme, backend); return the backend to use (the scheme's default when None)."""
    if scheme not in SCHEMES:
        raise LowmemError(f"unsupported quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    backend = backend or DEFAULT_BACKEND[scheme]
    if backend not in BACKENDS:
        raise LowmemError(f"unsupported quantization backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def supports(shape: tuple[int, ...], scheme: str, backend: str) -> bool:
    """Whether a 2-D weight of `shape` can be stored with (scheme, backend)."""
    if len(shape) != 2:
        return False
    if scheme == "nf4" and backend == "quanto":
        return shape[1] % GROUP_SIZE == 0
    return True


def packed_layout(shape: tuple[int, int], scheme: str, backend: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of the stored tensors of one quantized (out, in) weight (used on meta)."""
    out_f, in_f = shape
    n = out_f * in_f
    if scheme == "int8":
        scale_shape = (out_f,) if backend == "bnb" else (out_f, 1)
        return {"qweight": ((out_f, in_f), torch.int8), "scale": (scale_shape, torch.float32)}
    groups = math.ceil(n / GROUP_SIZE)
    if backend == "bnb":
        return {"qweight": ((math.ceil(n / 2), 1), torch.uint8), "scale": ((groups,), torch.float32)}
    return {
        "qweight": ((math.ceil(groups / 2), GROUP_SIZE), torch.uint8),
        "scale": ((groups, 1), torch.bfloat16),
        "shift": ((groups, 1), torch.bfloat16),
    }


def quantize_linear_weight(weight: torch.Tensor, scheme: str, backend: str | None = None) -> dict[str, torch.Tensor]:
    """(out, in) float weight -> the plain tensors that store it (see `packed_layout`)."""
    backend = check_scheme(scheme, backend)
    if not supports(tuple(weight.shape), scheme, backend):
        raise LowmemError(f"a weight of shape {tuple(weight.shape)} cannot be stored as {scheme}/{backend}")
    w = weight.detach()
    if scheme == "int8" and backend == "bnb":
        import bitsandbytes.functional as bnbf

        q, stats, _ = bnbf.int8_vectorwise_quant(w.float().contiguous(), threshold=0.0)
        return {"qweight": q.contiguous(), "scale": stats.float().contiguous()}
    if scheme == "nf4" and backend == "bnb":
        import bitsandbytes.functional as bnbf

        q, state = bnbf.quantize_4bit(w.contiguous(), blocksize=GROUP_SIZE, quant_type="nf4")
        return {"qweight": q.contiguous(), "scale": state.absmax.float().contiguous()}
    from optimum.quanto import AbsmaxOptimizer, MaxOptimizer, qint4, qint8
    from optimum.quanto.tensor.weights import quantize_weight

    if scheme == "int8":
        wf = w.float()
        scale = AbsmaxOptimizer()(wf, qtype=qint8, axis=0)
        q = quantize_weight(wf, qtype=qint8, axis=0, scale=scale, optimized=False)
        return {"qweight": q._data.contiguous(), "scale": q._scale.float().contiguous()}
    wb = w.to(torch.bfloat16)
    scale, shift = MaxOptimizer()(wb, qtype=qint4, axis=0, group_size=GROUP_SIZE)
    q = quantize_weight(wb, qtype=qint4, axis=0, scale=scale, shift=shift, group_size=GROUP_SIZE, optimized=False)
    return {"qweight": q._data._data.contiguous(), "scale": q._scale.contiguous(), "shift": q._shift.contiguous()}


@lru_cache(maxsize=None)
def _nf4_code(device: str) -> torch.Tensor:
    """The constant 16-entry NF4 code book (not derived from any weight), one copy per device."""
    import bitsandbytes.functional as bnbf

    return bnbf.get_4bit_type("nf4", device=device)


def dequantize(
    tensors: dict[str, torch.Tensor], shape: tuple[int, int], scheme: str, backend: str, dtype: torch.dtype
) -> torch.Tensor:
    """The dense (out, in) weight in `dtype`, rebuilt from the stored tensors at call time."""
    q = tensors["qweight"]
    if scheme == "int8" and backend == "bnb":
        import bitsandbytes.functional as bnbf

        return bnbf.int8_vectorwise_dequant(q, tensors["scale"]).to(dtype)
    if scheme == "nf4" and backend == "bnb":
        import bitsandbytes.functional as bnbf

        state = bnbf.QuantState(
            absmax=tensors["scale"], shape=torch.Size(shape), code=_nf4_code(str(q.device)),
            blocksize=GROUP_SIZE, quant_type="nf4", dtype=dtype,
        )
        return bnbf.dequantize_4bit(q, state)
    from optimum.quanto import qint4, qint8
    from optimum.quanto.tensor.packed import PackedTensor
    from optimum.quanto.tensor.weights import WeightQBitsTensor, WeightQBytesTensor

    size, stride = torch.Size(shape), (shape[1], 1)
    if scheme == "int8":
        return WeightQBytesTensor(qint8, 0, size, stride, q, tensors["scale"], None).dequantize().to(dtype)
    scale = tensors["scale"]
    rows = scale.shape[0]
    packed = PackedTensor(q, 4, torch.Size((rows, GROUP_SIZE)), (GROUP_SIZE, 1))
    qt = WeightQBitsTensor(qint4, 0, GROUP_SIZE, size, stride, packed, scale, tensors["shift"])
    return qt.dequantize().to(dtype)


def weight_error(reference: torch.Tensor, approx: torch.Tensor) -> tuple[float, float]:
    """(relative Frobenius error, SQNR in dB) of `approx` against `reference`."""
    ref = reference.float()
    noise = (approx.float() - ref).norm().item()
    signal = ref.norm().item()
    if noise == 0.0:
        return 0.0, math.inf
    rel = noise / signal if signal > 0 else math.inf
    sqnr = 20.0 * math.log10(signal / noise) if signal > 0 else -math.inf
    return rel, sqnr
