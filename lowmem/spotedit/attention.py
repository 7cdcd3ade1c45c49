"""Partial attention for SpotEdit through the DiT's `BlockContext.kv_hook`.

In a spot step the image stream holds only the regenerated (active) target tokens, each with its
own RoPE row gathered from the full table; the prompt tokens run as usual. At every block the hook
hands the block's SDPA the keys/values [active ; cached non-edited target ; cached condition], so
queries are active + prompt tokens and keys are everything the full forward would see.

SpotFusion: per block and step the cached K/V of non-edited target tokens move toward the
condition token at the same spatial position, h <- alpha h + (1 - alpha) h_cond with
alpha(t) = cos^2(pi t / 2), t = sigma. Keys carry RoPE, so the condition key is first rotated from
the condition's temporal index to the target's (a constant rotation: same row and column, other
frame) and the blend happens in the target's frame.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from lowmem.models.rope import apply_rope, grid_rope
from lowmem.spotedit.cache import SpotKVCache


def fusion_alpha(sigma: float) -> float:
    """SpotFusion weight of the previous cached features at noise level sigma in [0, 1]."""
    return math.cos(math.pi * sigma / 2) ** 2


def gather_rope(cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE rows (L, D) or (B, L, D) of the tokens at `index` (positions along L)."""
    dim = cos.dim() - 2
    return cos.index_select(dim, index), sin.index_select(dim, index)


def frame_shift_rope(rope_dim_list, theta: float, from_frame: int, to_frame: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (1, D) of the rotation that moves a rotated key from frame `from_frame` to `to_frame`."""
    cos, sin = grid_rope((max(from_frame, to_frame) + 1, 1, 1), tuple(rope_dim_list), theta, device)
    ca, sa, cb, sb = cos[to_frame], sin[to_frame], cos[from_frame], sin[from_frame]
    # angle(to) - angle(from): cos(a-b) = ca cb + sa sb, sin(a-b) = sa cb - ca sb
    return (ca * cb + sa * sb)[None], (sa * cb - ca * sb)[None]


class RecordHook:
    """Full-step hook: stores each block's image K/V in the cache and changes nothing."""

    def __init__(self, cache: SpotKVCache, tokens_per_item: int):
        self.cache = cache
        self.tokens_per_item = tokens_per_item

    def __call__(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.cache.record(index, k, v, self.tokens_per_item)
        return k, v


class SpotHook:
    """Spot-step hook: active K/V + fused non-edited target K/V + condition K/V."""

    def __init__(
        self,
        cache: SpotKVCache,
        active: torch.Tensor,
        reused: torch.Tensor,
        alpha: Optional[float],
        shift: Optional[tuple[torch.Tensor, torch.Tensor]],
    ):
        self.cache = cache
        self.active = active  # (La,) long, target positions recomputed in this step
        self.reused = reused  # (Lr,) long, target positions taken from the cache
        self.alpha = alpha  # None: no fusion (cached K/V used as they are)
        self.shift = shift  # frame-shift rotation condition -> target for keys

    def __call__(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, target = self.cache.fetch(index, k.device)
        target[0].index_copy_(1, self.active, k.to(target.dtype))
        target[1].index_copy_(1, self.active, v.to(target.dtype))
        reused_kv = target.index_select(2, self.reused)  # (2, B, Lr, H, D)
        if self.alpha is not None and self.reused.numel():
            ref = cond[:, :, : target.shape[2]].index_select(2, self.reused)  # first condition item, same positions
            ref_k = apply_rope(ref[0], *self.shift) if self.shift is not None else ref[0]
            ref = torch.stack((ref_k, ref[1]))
            reused_kv = torch.lerp(ref, reused_kv, self.alpha)  # alpha * cached + (1 - alpha) * condition
            target.index_copy_(2, self.reused, reused_kv)
        self.cache.store(index, target)
        keys = torch.cat((k, reused_kv[0].to(k.dtype), cond[0].to(k.dtype)), dim=1)
        values = torch.cat((v, reused_kv[1].to(v.dtype), cond[1].to(v.dtype)), dim=1)
        return keys, values
