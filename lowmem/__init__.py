"""lowmem: SpatialEdit-16B on limited memory. `pipe = lowmem.load(model, memory_budget="24GB")`."""

from __future__ import annotations

from typing import Optional


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
