"""W8A8 compute: a Linear's GEMM in int8 or fp8 (e4m3) instead of bf16, on the card's faster tensor cores.

Both operands are quantized symmetrically with a float32 step per row: the weight per output channel
(stored that way by `lowmem quantize`, or quantized at call time), the activation per token at call
time (dynamic: its absmax over the row / 127 or / 448). The GEMM then accumulates exactly (int32 for
int8, float32 for fp8) and the output is `acc * token_step * channel_step`:

    int8  torch._int_mm     int8 x int8 -> int32      CUDA sm_80+ (cuBLASLt), the CPU (oneDNN)
    fp8   torch._scaled_mm  e4m3 x e4m3 -> bf16       CUDA sm_89+ (Ada, Hopper), the CPU on recent torch

These are the kernels torchao's Int8DynamicActivationInt8Weight / Float8DynamicActivationFloat8Weight
configs call; torchao itself is not used because it works by swapping each weight for a tensor
subclass it quantized itself, while here the weights are plain stored tensors (a `lowmem quantize`
folder's, which a streamer re-points between calls) that must be used as they are.

`reference_linear` computes the same quantized product by dequantizing both operands to float32
(exact: it is what the kernels compute, up to float32 summation order); shapes a device's kernel
refuses fall back to it.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from lowmem.errors import LowmemError
from quantize.schemes import CHUNK_ELEMENTS, FP8_DTYPE, FP8_MAX

COMPUTE_MODES = ("bf16", "fp8", "int8")
W8A8_MODES = ("fp8", "int8")
CODE_DTYPE = {"int8": torch.int8, "fp8": FP8_DTYPE}
CODE_MAX = {"int8": 127.0, "fp8": FP8_MAX}
# The compute capability from which cuBLAS runs each mode's GEMM on tensor cores: int8 IMMA needs
# Ampere (sm_80; Turing's int8 is not exposed by torch._int_mm), e4m3 needs Ada (sm_89) or Hopper.
MIN_CAPABILITY = {"int8": (8, 0), "fp8": (8, 9)}
# cuBLAS's shape rules: _int_mm wants more than 16 rows and K, N multiples of 8; _scaled_mm wants
# every dimension a multiple of 16. Rows are padded; a K or N that breaks them uses the reference.
ROW_ALIGN = {"int8": 32, "fp8": 16}
INNER_ALIGN = {"int8": 8, "fp8": 16}
MIN_STEP = 1e-12  # the step of an all-zero row (any positive value: its codes are all zero)
GEMM_ELEMENTS = 1 << 24  # rows per W8A8 GEMM call: about this many elements of its widest operand


def check_mode(mode: str) -> str:
    if mode not in COMPUTE_MODES:
        raise LowmemError(f"unknown compute mode {mode!r}; choose one of {', '.join(COMPUTE_MODES)} (or auto)")
    return mode


@lru_cache(maxsize=None)
def _cpu_runs(mode: str) -> bool:
    """Whether this torch build's CPU kernels run `mode`'s GEMM (probed once on a 32x32 product)."""
    a = torch.ones(32, 32).to(CODE_DTYPE[mode])
    try:
        if mode == "int8":
            torch._int_mm(a, a.t())
        else:
            one = torch.ones(32, 1)
            torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def supported_modes(device: torch.device | str) -> tuple[str, ...]:
    """The compute modes `device` runs natively, bf16 first. The meta device (the CPU-side stand-in
    for a GPU in traces) takes every mode."""
    device = torch.device(device)
    if device.type == "meta":
        return COMPUTE_MODES
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        return ("bf16",) + tuple(m for m in W8A8_MODES if capability >= MIN_CAPABILITY[m])
    return ("bf16",) + tuple(m for m in W8A8_MODES if _cpu_runs(m))


def quantize_rows(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, step): each row of the 2-D `x` as symmetric `mode` codes and its float32 step (rows, 1),
    step = absmax / code max. Worked a few rows at a time, so the float32 scratch stays small."""
    rows, cols = x.shape
    codes = torch.empty((rows, cols), dtype=CODE_DTYPE[mode], device=x.device)
    step = x.abs().amax(dim=1, keepdim=True).float().div_(CODE_MAX[mode]).clamp_min_(MIN_STEP)
    chunk = max(1, CHUNK_ELEMENTS // max(1, cols))
    for start in range(0, rows, chunk):
        part = x[start:start + chunk].to(torch.float32, copy=True).div_(step[start:start + chunk])
        if mode == "int8":
            part.round_()
        codes[start:start + chunk] = part.clamp_(-CODE_MAX[mode], CODE_MAX[mode])
    return codes, step


def reference_linear(x2d: torch.Tensor, codes: torch.Tensor, channel_step: torch.Tensor, mode: str) -> torch.Tensor:
    """The W8A8 product in float32 from dequantized operands: what the kernels compute exactly."""
    x_codes, token_step = quantize_rows(x2d, mode)
    return (x_codes.float() * token_step) @ (codes.float() * channel_step.reshape(-1, 1)).t()


def _aligned(codes: torch.Tensor, mode: str) -> bool:
    return all(d % INNER_ALIGN[mode] == 0 for d in codes.shape)


def _pad_rows(t: torch.Tensor, align: int) -> torch.Tensor:
    rows = t.shape[0]
    padded = max(align, -(-rows // align) * align)
    if padded == rows:
        return t
    return torch.cat([t, t.new_zeros((padded - rows,) + tuple(t.shape[1:]))])


def _gpu_like(device: torch.device) -> bool:
    """CUDA, or `meta` standing in for it in plans and traces: cuBLAS's rules and output dtypes apply."""
    return device.type in ("cuda", "meta")


def w8a8_matmul(x2d: torch.Tensor, codes: torch.Tensor, channel_step: torch.Tensor, mode: str,
                out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x2d (M, K) float times the (N, K) `mode` weight codes with their float32 step per row (N,):
    the (M, N) product in `out_dtype`, activations quantized per token.

    Worked a chunk of rows at a time (about `GEMM_ELEMENTS` elements of the widest operand), so the activation codes, the int32 accumulator and the float32
    rescale exist for one chunk only: beside the output, the GEMM's scratch stays a few tens of MB."""
    gpu = _gpu_like(x2d.device)
    if gpu and not _aligned(codes, mode):
        return reference_linear(x2d, codes, channel_step, mode).to(out_dtype)
    rows, n = x2d.shape[0], codes.shape[0]
    out = torch.empty((rows, n), dtype=out_dtype, device=x2d.device)
    channel_step = channel_step.reshape(1, -1).float()
    chunk = max(ROW_ALIGN[mode], GEMM_ELEMENTS // max(x2d.shape[1], n) // ROW_ALIGN[mode] * ROW_ALIGN[mode])
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        x_codes, token_step = quantize_rows(x2d[start:stop], mode)
        if gpu:  # cuBLAS's row rules; padded rows are zero and dropped below
            x_codes, token_step = _pad_rows(x_codes, ROW_ALIGN[mode]), _pad_rows(token_step, ROW_ALIGN[mode])
        if mode == "int8":
            part = torch._int_mm(x_codes, codes.t()).float().mul_(token_step).mul_(channel_step)
        else:  # row-wise scaled fp8 GEMMs write bf16 on CUDA; the CPU kernel writes float32 as well
            part = torch._scaled_mm(x_codes, codes.t(), scale_a=token_step, scale_b=channel_step,
                                    out_dtype=torch.bfloat16 if gpu else torch.float32)
        out[start:stop] = part[: stop - start]
    return out


def w8a8_linear(x: torch.Tensor, codes: torch.Tensor, channel_step: torch.Tensor, bias: torch.Tensor | None,
                mode: str) -> torch.Tensor:
    """F.linear(x, W, bias) with W = codes * channel_step in `mode`'s GEMM; returns x's dtype."""
    out = w8a8_matmul(x.reshape(-1, x.shape[-1]), codes, channel_step, mode, out_dtype=x.dtype)
    if bias is not None:
        out = out.add_(bias.to(x.dtype))
    return out.reshape(*x.shape[:-1], codes.shape[0])
