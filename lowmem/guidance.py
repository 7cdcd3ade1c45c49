"""Classifier-free guidance as the official SpatialEdit sampler applies it."""

from __future__ import annotations

import torch


def guided_velocity(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG, then rescaled per position to the conditional velocity's norm over channels."""
    guided = v_uncond + guidance * (v_cond - v_uncond)
    cond_norm = v_cond.float().norm(dim=1, keepdim=True)
    guided_norm = guided.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (guided.float() * (cond_norm / guided_norm)).to(v_cond.dtype)
