"""How long a whole edit will take on this machine, said before the long phases run: the FLOPs of the
DiT's denoising steps and of the VAE's encode and decode (traced on `meta`, `time_model`), over a
GEMM rate measured on the device itself (one short matmul in the pipeline's dtype, once per process).

It is a lower bound: streaming, the conditioner and every op slower than a large GEMM come on top.
It needs no preset, so a CPU run of the 16B model at 4096 px is told up front that it takes hours.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from lowmem.models.dit_config import DiTConfig
from lowmem.planning import phase_peaks as peaks
from lowmem.planning.time_model import count_flops, dit_flops

PROBE_SIZE = 1024  # a (1024 x 1024) @ (1024 x 1024) matmul: ~2 GFLOP, tens of ms on a CPU core pair
PROBE_REPEATS = 3


@lru_cache(maxsize=8)
def measured_gemm_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large matmul on `device` in `dtype` (the best of a few, after one warm-up)."""
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device).to(dtype)
    best = float("inf")
    for _ in range(PROBE_REPEATS + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * PROBE_SIZE**3 / best


@lru_cache(maxsize=16)
def vae_flops(vae_config: tuple, width: int, height: int) -> int:
    """FLOPs of one VAE encode and one untiled decode of a `width` x `height` image."""
    return (count_flops(peaks.vae_encode_call(vae_config, width, height))
            + count_flops(peaks.vae_decode_call(vae_config, width, height)))


def edit_flops(config: DiTConfig, vae_config: tuple, width: int, height: int, text_tokens: int, batch: int,
               steps: int) -> int:
    """FLOPs of `steps` full DiT forwards of `batch` rows plus the VAE's encode and decode. The DiT is
    traced at a square of the same token count (its FLOPs depend on the count, not the shape)."""
    side = int(round((width * height) ** 0.5 / 16)) * 16
    return steps * dit_flops(config, side, text_tokens, batch) + vae_flops(vae_config, width, height)


def predicted_seconds(flops: int, device: torch.device, dtype: torch.dtype) -> float:
    return flops / measured_gemm_rate(device, dtype)
