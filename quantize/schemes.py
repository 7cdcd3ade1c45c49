"""Weight quantization schemes for Linear layers, behind one interface over two backends.

A quantized weight is a small dict of plain tensors (no tensor subclasses), so it round-trips
through safetensors and a streamer can re-point it to views of a device buffer:

    int8  per-output-channel absmax int8      qweight int8 (out, in)     scale float32 per row
    fp8   per-output-channel absmax e4m3      qweight float8_e4m3fn      scale float32 per row (absmax/448)
    nf4   4-bit, blocks/groups of 64 weights  qweight uint8 (packed)     scale (+ shift) per group

nf4/bnb double-quantizes its scales by default (bitsandbytes' compress_statistics): the float32
absmax of each block of 64 is stored as an 8-bit code (bnb's dynamic map) around their mean, with
one float32 absmax per 256 of them: 0.516 bytes per weight instead of 0.5625, at the same error.

Backends: "bnb" (bitsandbytes.functional: int8_vectorwise_quant / quantize_4bit with the NF4 code)
and "quanto" (optimum-quanto: qint8 / qfloat8_e4m3fn per-axis absmax, qint4 affine groups of 64).
fp8 is quanto's only (bitsandbytes has no fp8 weights). quanto has no NF4
code book: its "nf4" is 4-bit affine (scale + zero shift per 64 weights), the same bits per weight.
Dequantization returns the dense weight in the requested dtype in one pass (bnb's 4-bit kernel, or
torch ops that equal the libraries' arithmetic; quanto's extension kernels are never used, since
they JIT-compile on first use); a Linear then runs a plain F.linear on it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch

from lowmem.errors import LowmemError

SCHEMES = ("int8", "fp8", "nf4")
BACKENDS = ("bnb", "quanto")
SCHEME_BACKENDS = {"int8": ("bnb", "quanto"), "fp8": ("quanto",), "nf4": ("bnb", "quanto")}
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448: e4m3's largest finite value
GROUP_SIZE = 64  # nf4 block size (bnb) / int4 group size (quanto)
SCALE_GROUP_SIZE = 256  # double quantization: one float32 absmax per 256 block scales (bnb's choice)

# Chosen per device kind from bench/quant.py's kernel table (numbers in quantize/README.md). The
# backend fixes the stored format, so a folder keeps it wherever it runs; `lowmem quantize` writes the
# CUDA choice. int8: both backends store the same per-row absmax codes and dequantize through one
# torch kernel (a tie in error and time), bnb kept. nf4: bnb is more accurate on heavy-tailed
# weights (0.112 vs 0.118) and dequantizes 3-13x faster on the CPU (its own kernel vs quanto's
# unpack in torch ops). CUDA row: not measured yet (no GPU lent); run
# `python bench/quant.py --kernels-only --device cuda`, which checks this table.
DEFAULT_BACKEND_BY_DEVICE = {
    "cpu": {"int8": "bnb", "fp8": "quanto", "nf4": "bnb"},
    "cuda": {"int8": "bnb", "fp8": "quanto", "nf4": "bnb"},
}
DEFAULT_BACKEND = DEFAULT_BACKEND_BY_DEVICE["cuda"]  # what `lowmem quantize` writes: the product runs on CUDA


def check_scheme(scheme: str, backend: str | None = None) -> str:
    """Validate (scheme, backend); return the backend to use (the scheme's default when None)."""
    if scheme not in SCHEMES:
        raise LowmemError(f"unsupported quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    backend = backend or DEFAULT_BACKEND[scheme]
    if backend not in BACKENDS:
        raise LowmemError(f"unsupported quantization backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in SCHEME_BACKENDS[scheme]:
        raise LowmemError(f"{scheme} weights are stored by the {' or '.join(SCHEME_BACKENDS[scheme])} backend, "
                          f"not {backend}; leave --backend out")
    return backend


def double_quantized(scheme: str, backend: str, double_quant: Optional[bool] = None) -> bool:
    """Whether (scheme, backend) stores its scales double-quantized; None: as `convert` writes it
    (nf4/bnb yes). Only nf4/bnb can (bitsandbytes' nested quant state)."""
    able = scheme == "nf4" and backend == "bnb"
    if double_quant is None:
        return able
    if double_quant and not able:
        raise LowmemError(f"double quantization of the scales exists for nf4/bnb only, not {scheme}/{backend}")
    return double_quant


def supports(shape: tuple[int, ...], scheme: str, backend: str) -> bool:
    """Whether a 2-D weight of `shape` can be stored with (scheme, backend)."""
    if len(shape) != 2:
        return False
    if scheme == "nf4" and backend == "quanto":
        return shape[1] % GROUP_SIZE == 0
    return True


def packed_layout(shape: tuple[int, int], scheme: str, backend: str,
                  double_quant: Optional[bool] = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of the stored tensors of one quantized (out, in) weight (used on meta)."""
    out_f, in_f = shape
    n = out_f * in_f
    if scheme == "int8":
        scale_shape = (out_f,) if backend == "bnb" else (out_f, 1)
        return {"qweight": ((out_f, in_f), torch.int8), "scale": (scale_shape, torch.float32)}
    if scheme == "fp8":
        return {"qweight": ((out_f, in_f), FP8_DTYPE), "scale": ((out_f, 1), torch.float32)}
    groups = math.ceil(n / GROUP_SIZE)
    if backend == "bnb":
        if not double_quantized(scheme, backend, double_quant):
            return {"qweight": ((math.ceil(n / 2), 1), torch.uint8), "scale": ((groups,), torch.float32)}
        return {
            "qweight": ((math.ceil(n / 2), 1), torch.uint8),
            "scale": ((groups,), torch.uint8),
            "scale_absmax": ((math.ceil(groups / SCALE_GROUP_SIZE),), torch.float32),
            "scale_offset": ((1,), torch.float32),
        }
    return {
        "qweight": ((math.ceil(groups / 2), GROUP_SIZE), torch.uint8),
        "scale": ((groups, 1), torch.bfloat16),
        "shift": ((groups, 1), torch.bfloat16),
    }


def stored_bytes(shape: tuple[int, int], scheme: str, backend: Optional[str] = None,
                 double_quant: Optional[bool] = None) -> int:
    """Exact bytes (on disk and in memory) of the tensors that store one (out, in) weight as
    `scheme`; backend and double quantization default to what `lowmem quantize` writes. Per
    weight: divide by out * in (nf4/bnb ~0.516, int8 1 + 4 / in)."""
    backend = check_scheme(scheme, backend)
    layout = packed_layout(shape, scheme, backend, double_quant)
    return sum(math.prod(dims) * dtype.itemsize for dims, dtype in layout.values())


def quantize_linear_weight(weight: torch.Tensor, scheme: str, backend: str | None = None,
                           double_quant: Optional[bool] = None) -> dict[str, torch.Tensor]:
    """(out, in) float weight -> the plain tensors that store it (see `packed_layout`)."""
    backend = check_scheme(scheme, backend)
    nested = double_quantized(scheme, backend, double_quant)
    if not supports(tuple(weight.shape), scheme, backend):
        raise LowmemError(f"a weight of shape {tuple(weight.shape)} cannot be stored as {scheme}/{backend}")
    w = weight.detach()
    if scheme == "int8" and backend == "bnb":
        import bitsandbytes.functional as bnbf

        q, stats, _ = bnbf.int8_vectorwise_quant(w.float().contiguous(), threshold=0.0)
        return {"qweight": q.contiguous(), "scale": stats.float().contiguous()}
    if scheme == "nf4" and backend == "bnb":
        import bitsandbytes.functional as bnbf

        q, state = bnbf.quantize_4bit(w.contiguous(), blocksize=GROUP_SIZE, quant_type="nf4", compress_statistics=nested)
        if not nested:
            return {"qweight": q.contiguous(), "scale": state.absmax.float().contiguous()}
        return {"qweight": q.contiguous(), "scale": state.absmax.contiguous(),
                "scale_absmax": state.state2.absmax.float().contiguous(),
                "scale_offset": state.offset.float().reshape(1)}
    from optimum.quanto import AbsmaxOptimizer, MaxOptimizer, qfloat8_e4m3fn, qint4, qint8
    from optimum.quanto.tensor.weights import quantize_weight

    if scheme in ("int8", "fp8"):  # per output row: absmax / 127 (int8) or / 448 (e4m3)
        qtype = qint8 if scheme == "int8" else qfloat8_e4m3fn
        wf = w.float()
        scale = AbsmaxOptimizer()(wf, qtype=qtype, axis=0)
        q = quantize_weight(wf, qtype=qtype, axis=0, scale=scale, optimized=False)
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


@lru_cache(maxsize=None)
def _scale_code(device: str) -> torch.Tensor:
    """bnb's constant 256-entry dynamic map that double-quantized scales are coded in, per device."""
    import bitsandbytes.functional as bnbf

    return bnbf.create_dynamic_map().to(device)


# Work that needs a temporary (the nibbles of a 4-bit weight; on the CPU, TensorIterator's casts of
# mixed-dtype operands) is done this many elements at a time, so the scratch stays a few MB
# whatever the weight's size. Elsewhere the casts happen inside the kernel and no scratch exists.
CHUNK_ELEMENTS = 1 << 22
INT8_STEP = 1.0 / 127.0  # bitsandbytes' int8 row scale is the row's absmax: code 127 is that value


def _row_chunks(rows: int, row_elements: int):
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _scaled_rows(q: torch.Tensor, row_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q (out, in) int8 or fp8 codes times a float32 scale per row, written once into a (out, in) `dtype` tensor:
    the product is formed in float32 inside the kernel and rounded once to `dtype`, as the library
    computes it, without its float32 copy of the whole weight."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    row_scale = row_scale.reshape(-1, 1)
    for start, stop in _row_chunks(q.shape[0], q.shape[1]):
        codes = q[start:stop]
        if codes.dtype == FP8_DTYPE:  # torch has no mixed fp8 x float32 multiply: widen one chunk
            codes = codes.float()
        torch.mul(codes, row_scale[start:stop], out=out[start:stop])
    return out


def row_step(tensors: dict[str, torch.Tensor], scheme: str, backend: str) -> torch.Tensor:
    """The float32 value of code 1 in each output row of an int8 or fp8 weight, shape (out,): what a
    W8A8 GEMM multiplies its output columns by, and what dequantization multiplies each row by."""
    scale = tensors["scale"].reshape(-1)
    return scale * INT8_STEP if scheme == "int8" and backend == "bnb" else scale


def _int4_affine_groups(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, shape: tuple[int, int],
                        dtype: torch.dtype) -> torch.Tensor:
    """quanto's qint4 groups (scale * code - shift per group of 64), unpacked with torch ops.

    quanto packs group rows [0, P) in the low nibbles and [P, groups) in the high nibbles of P
    rows of bytes. Its own unpack runs a C++/CUDA extension that is JIT-compiled on first use
    (nvcc, minutes). The arithmetic is quanto's: in the scale dtype (bf16), shift subtracted after.
    """
    groups = scale.shape[0]
    half = packed.shape[0]
    out = torch.empty(shape, dtype=dtype, device=packed.device).view(groups, GROUP_SIZE)
    for first_row, nibble in ((0, 0), (half, 4)):
        for start, stop in _row_chunks(min(half, groups - first_row), GROUP_SIZE):
            codes = packed[start:stop] >> 4 if nibble else packed[start:stop] & 0xF
            rows = slice(first_row + start, first_row + stop)
            if dtype == scale.dtype:
                target = torch.mul(codes, scale[rows], out=out[rows])
                target.sub_(shift[rows])
            else:
                out[rows] = codes * scale[rows] - shift[rows]
    return out.view(shape)


def dequantize(
    tensors: dict[str, torch.Tensor], shape: tuple[int, int], scheme: str, backend: str, dtype: torch.dtype
) -> torch.Tensor:
    """The dense (out, in) weight in `dtype`, rebuilt from the stored tensors at call time.

    One pass into `dtype`: the only new tensor of the weight's size is the result (plus, on the
    CPU or for 4-bit codes, scratch of at most `CHUNK_ELEMENTS` elements). Equal to the backend
    library's own dequantization (bnb int8 to one float32 rounding; the others bit for bit)."""
    q = tensors["qweight"]
    if scheme in ("int8", "fp8"):
        return _scaled_rows(q, row_step(tensors, scheme, backend), dtype)
    if backend == "bnb":
        import bitsandbytes.functional as bnbf

        device = str(q.device)
        nested = {}
        if "scale_absmax" in tensors:  # double-quantized: bnb decodes the block scales first (small)
            nested = {"offset": tensors["scale_offset"], "state2": bnbf.QuantState(
                absmax=tensors["scale_absmax"], code=_scale_code(device), blocksize=SCALE_GROUP_SIZE, dtype=torch.float32)}
        state = bnbf.QuantState(
            absmax=tensors["scale"], shape=torch.Size(shape), code=_nf4_code(device),
            blocksize=GROUP_SIZE, quant_type="nf4", dtype=dtype, **nested,
        )
        return bnbf.dequantize_4bit(q, state)  # bnb's kernel writes `dtype` directly
    return _int4_affine_groups(q, tensors["scale"], tensors["shift"], shape, dtype)


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
