"""SpotConfig: the knobs of SpotEdit token skipping, and their schedule for a given step count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from lowmem.common.validation import spot_dilation, spot_threshold

# The official defaults are written for a 50-step schedule; `schedule()` scales them.
REFERENCE_STEPS = 50


@dataclass
class SpotConfig:
    """SpotEdit settings for one edit.

    threshold: tokens whose perceptual score against the condition is under it are non-edited
        (a negative value marks every token edited: the run equals the full path); "auto" splits
        each step's scores in two clusters instead of using a fixed value.
    initial_steps / reset_steps: full steps (all tokens recomputed, K/V caches refreshed), given
        for a `reference_steps`-step schedule and scaled to the actual step count; set
        `reference_steps=None` to take them literally.
    dilation: radius (in tokens) of the max-pool that grows the edited region.
    cache_device: where the per-block K/V caches live (None: the compute device); the offload
        plan sets the host when they do not fit beside the weights.
    """

    enabled: bool = True
    threshold: Union[float, str] = 0.15
    initial_steps: int = 4
    reset_steps: tuple[int, ...] = (13, 22, 31)
    dilation: int = 1
    reference_steps: Optional[int] = REFERENCE_STEPS
    cache_device: Optional[str] = None

    def __post_init__(self) -> None:
        self.threshold = spot_threshold(self.threshold)  # a number that is finite, or "auto"
        if self.initial_steps < 1:
            raise ValueError(f"initial_steps must be at least 1 (the caches come from a full step), got {self.initial_steps}")
        self.dilation = spot_dilation(self.dilation)
        self.reset_steps = tuple(int(s) for s in self.reset_steps)

    def schedule(self, steps: int) -> tuple[int, frozenset[int]]:
        """(number of initial full steps, indices of reset full steps) for a run of `steps` steps."""
        if self.reference_steps is None or steps == self.reference_steps:
            initial, resets = self.initial_steps, set(self.reset_steps)
        else:
            scale = steps / self.reference_steps
            initial = max(1, round(self.initial_steps * scale))
            resets = {round(s * scale) for s in self.reset_steps}
        return initial, frozenset(r for r in resets if initial <= r < steps)

    def selection_steps(self, steps: int) -> frozenset[int]:
        """Steps whose edited-token mask the selector chooses (from the step before's X0_hat): the
        first spot step after the initial steps and after each reset, as the official code does;
        the rest of a segment keeps its mask."""
        initial, resets = self.schedule(steps)
        starts = {initial} | {r + 1 for r in resets}
        return frozenset(s for s in starts if s < steps and s not in resets)
