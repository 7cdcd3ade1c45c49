"""The official sampling schedule through diffusers' flow-matching Euler scheduler.

SpatialEdit samples with FlowMatchDiscreteScheduler(1000 train steps, shift 1.5) over sigmas
linspace(1, 0, steps + 1) (the last one is the terminal 0). diffusers' scheduler applies the same
shift sigma' = s*sigma / (1 + (s-1)*sigma) to the sigmas we hand it and takes the Euler step
x <- x + (sigma_next - sigma) * v, where v = noise - x0.
"""

from __future__ import annotations

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler

SHIFT = 1.5
TRAIN_TIMESTEPS = 1000


def make_scheduler(steps: int, shift: float = SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """A scheduler set up for `steps` sampling steps; `.timesteps` are sigma * 1000."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    return scheduler
