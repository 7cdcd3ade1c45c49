"""SpotSelector: which target tokens are still being edited, from a token-level perceptual score.

The score compares the rectified-flow estimate of the clean target, X0_hat = x_t - sigma * v, with
the condition latent through the first three stages of the Wan VAE decoder (conv_in, mid_block,
up_blocks[0]), LPIPS-style: per stage, unit-normalise over channels, square the difference and sum
over channels, resize to the latent grid; average the stages; 2x2 average-pool to one score per DiT
token (patch 2x2). Tokens scoring under the threshold are non-edited; the edited set is dilated by
a (2r+1)^2 max-pool.

Cost: the stages run as `ScoreStages` (one-frame 2-D convolutions, in the compute dtype, on the
compute device), the condition's features are computed once per edit, and the loop asks for a
mask only where the official schedule makes one (`SpotConfig.selection_steps`), not every step.

The threshold is fixed (the paper's tau, 0.15 by default) or "auto": a 1-D 2-means split of the
step's token scores (the official code's later, adaptive variant), for models or images whose
score scale differs from the one tau was tuned on.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from lowmem.models.vae import WanVAE
from lowmem.spotedit.score_stages import ScoreStages

MIN_THRESHOLD = 1e-4
AUTO = "auto"
Threshold = Union[float, str]


def two_means_threshold(scores: torch.Tensor, iterations: int = 32) -> float:
    """Midpoint between the two cluster means of a 1-D 2-means split of `scores` (Lloyd's iterations
    from the min and the max; the scores are few, one per token)."""
    values = scores.flatten().float()
    low, high = values.min(), values.max()
    for _ in range(iterations):
        cut = (low + high) / 2
        upper = values >= cut
        if bool(upper.all()):
            break
        new_low, new_high = values[~upper].mean(), values[upper].mean()
        if bool(new_low == low) and bool(new_high == high):
            break
        low, high = new_low, new_high
    return float((low + high) / 2)


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a boolean token mask (..., h, w) by `radius` tokens (max-pool, square neighbourhood)."""
    if radius <= 0:
        return mask
    shape = mask.shape
    grid = mask.reshape(-1, 1, *shape[-2:]).float()
    grown = F.max_pool2d(grid, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return grown.reshape(shape) > 0


def tokens_to_latent(mask: torch.Tensor, patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Token mask (h, w) -> latent-pixel mask (1, 1, 1, h*ph, w*pw)."""
    ph, pw = patch
    return mask.repeat_interleave(ph, dim=0).repeat_interleave(pw, dim=1)[None, None, None]


class SpotSelector:
    def __init__(self, vae: WanVAE, condition: torch.Tensor, threshold: Threshold, dilation: int = 1,
                 patch: tuple[int, int] = (2, 2), dtype: Optional[torch.dtype] = None):
        """condition: normalised condition latent (1, C, 1, H, W) on the compute device; `dtype`: the
        compute dtype the decoder stages run in (default: the VAE's)."""
        self.stages = ScoreStages(vae, dtype or vae.dtype, condition.device)
        self.threshold = threshold
        self.dilation = dilation
        self.patch = patch
        self.grid = condition.shape[-2:]
        self.condition_features = [_unit(f.float()) for f in self.stages(condition)]
        self.last_scores: Optional[torch.Tensor] = None

    def scores(self, x0_hat: torch.Tensor) -> torch.Tensor:
        """Token scores (h, w) of X0_hat (1, C, 1, H, W) against the condition."""
        total = None
        for feat, ref in zip(self.stages(x0_hat), self.condition_features):
            diff = (_unit(feat.float()) - ref).pow(2).sum(dim=1, keepdim=True)  # (1, 1, h', w')
            if diff.shape[-2:] != self.grid:
                diff = F.interpolate(diff, size=tuple(self.grid), mode="area")
            total = diff if total is None else total + diff
        stage_mean = total / 3.0
        tokens = F.avg_pool2d(stage_mean, kernel_size=self.patch, stride=self.patch)
        self.last_scores = tokens[0, 0]
        return self.last_scores

    def select(self, x0_hat: torch.Tensor) -> Optional[torch.Tensor]:
        """Edited (active) token mask (h, w) on the host, dilated; None when no threshold >= 1e-4 finds
        any edited token (full-reuse guard: then the caller runs the step in full). The scores come to
        the host once and the threshold is found there: one wait for the device per selection, not one
        per comparison of the threshold search."""
        scores = self.scores(x0_hat).float().cpu()
        tau = two_means_threshold(scores) if self.threshold == AUTO else self.threshold
        edited = scores >= tau
        while not bool(edited.any()):
            tau /= 2
            if tau < MIN_THRESHOLD or not math.isfinite(tau):  # inf / 2 and nan / 2 never get smaller
                return None
            edited = scores >= tau
        return dilate(edited, self.dilation)
