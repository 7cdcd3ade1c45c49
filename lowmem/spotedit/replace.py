"""Token replacement at the end of a SpotEdit run: non-edited tokens take the condition's latents.

Interior non-edited tokens take the condition latent; non-edited tokens that touch the edited region
(8-neighbourhood) take 0.7 * condition + 0.3 * generated, which hides the seam.
"""

from __future__ import annotations

import torch

from lowmem.spotedit.selector import dilate, tokens_to_latent

BORDER_SOURCE_WEIGHT = 0.7


def replace_tokens(
    generated: torch.Tensor, condition: torch.Tensor, edited: torch.Tensor, patch: tuple[int, int] = (2, 2)
) -> torch.Tensor:
    """generated/condition (1, C, 1, H, W), edited token mask (h, w) -> the merged latents."""
    border = dilate(edited, 1) & ~edited
    interior = ~edited & ~border
    w = BORDER_SOURCE_WEIGHT
    blended = w * condition + (1 - w) * generated
    out = torch.where(tokens_to_latent(border, patch), blended, generated)
    return torch.where(tokens_to_latent(interior, patch), condition, out)
