"""Classifier-free guidance as the official SpatialEdit sampler applies it.

The official rule: with guidance above 1 the unconditional and conditional prompts run as one
batch [uncond ; cond] and combine as below; at guidance 1 or less the conditional prompt runs
alone (batch 1) and its velocity is used as it is: no negative prompt is even encoded.
"""

from __future__ import annotations

import torch


def guidance_batch(guidance: float) -> int:
    """Rows per DiT forward: 2 ([uncond ; cond]) when guidance > 1, else 1 (the conditional alone)."""
    return 2 if guidance > 1 else 1


def guided_velocity(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG, then rescaled per position to the conditional velocity's norm over channels."""
    guided = v_uncond + guidance * (v_cond - v_uncond)
    cond_norm = v_cond.float().norm(dim=1, keepdim=True)
    guided_norm = guided.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (guided.float() * (cond_norm / guided_norm)).to(v_cond.dtype)


def step_velocity(v: torch.Tensor, guidance: float) -> torch.Tensor:
    """The step's velocity from the DiT output of a `guidance_batch(guidance)`-row batch."""
    return guided_velocity(v[:1], v[1:], guidance) if guidance_batch(guidance) == 2 else v


class BatchedGuidance:
    """How a denoising step gets its guided velocity: both CFG rows in this process, as one DiT batch.

    The pipeline asks its strategy which text rows to run (`select`), how many rows a forward has
    (`rows`) and how the DiT output becomes the step's velocity (`velocity`);
    `lowmem.parallel.CFGParallel` runs one row per process and exchanges the velocities instead."""

    def rows(self, guidance: float) -> int:
        return guidance_batch(guidance)

    def select(self, states: torch.Tensor, padding):
        return states, padding

    def velocity(self, v: torch.Tensor, guidance: float) -> torch.Tensor:
        return step_velocity(v, guidance)
