"""lowmem: SpatialEdit-16B on limited memory. `pipe = lowmem.load(model, memory_budget="24GB")`."""

from __future__ import annotations

import logging
from typing import Optional

# bitsandbytes warns at import on CPUs with AVX512-BF16 that its optional hub-fetched 4-bit GEMV
# kernel is missing; lowmem dequantizes and runs a plain GEMM, so that kernel is never used.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# The same kernel lookup, with HF_HUB_OFFLINE=1, says it skips a publisher check for that kernel.
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)


def load(model, memory_budget: Optional[str | int] = None, quantization: Optional[str] = None, **kwargs):
    """A SpatialEditPipeline for the model folder `model`, planned for `memory_budget` (None: all resident)."""
    from lowmem.pipeline import SpatialEditPipeline

    return SpatialEditPipeline.from_folder(model, memory_budget=memory_budget, quantization=quantization, **kwargs)


def __getattr__(name: str):
    if name == "SpatialEditPipeline":
        from lowmem.pipeline import SpatialEditPipeline

        return SpatialEditPipeline
    raise AttributeError(f"module 'lowmem' has no attribute {name!r}")


__all__ = ["SpatialEditPipeline", "load"]
