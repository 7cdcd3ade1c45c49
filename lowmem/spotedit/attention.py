"""Partial attention for SpotEdit through the DiT's `BlockContext.kv_hook`.

In a spot step the image stream holds only the regenerated (active) target tokens, each with its
own RoPE row gathered from the full table; the prompt tokens run as usual. At every block the hook
writes the active tokens' K/V into the block's cache and hands the block's SDPA the whole cache
(fresh active + cached non-edited target + cached condition), so queries are active + prompt
tokens and keys are everything the full forward would see.

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
from lowmem.spotedit.cache import SpotKVCache, kv_views


def fusion_alpha(sigma: float) -> float:
    """SpotFusion weight of the previous cached features at noise level sigma in [0, 1]."""
    return math.cos(math.pi * sigma / 2) ** 2


def gather_rope(cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE rows (L, D) or (B, L, D) of the tokens at `index` (positions along L)."""
    dim = cos.dim() - 2
    return cos.index_select(dim, index), sin.index_select(dim, index)


def frame_shift_rope(rope_dim_list, theta: float, from_frame: int, to_frame: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (1, rope_dim_list[0]) of the rotation that moves a rotated key from frame `from_frame`
    to `to_frame`. Only the temporal channels (the first rope_dim_list[0]) turn; row and column
    channels are unchanged (same position), so the rotation is applied to those channels only."""
    dims = rope_dim_list[0]
    cos, sin = grid_rope((max(from_frame, to_frame) + 1, 1, 1), tuple(rope_dim_list), theta, device)
    ca, sa, cb, sb = cos[to_frame, :dims], sin[to_frame, :dims], cos[from_frame, :dims], sin[from_frame, :dims]
    # angle(to) - angle(from): cos(a-b) = ca cb + sa sb, sin(a-b) = sa cb - ca sb
    return (ca * cb + sa * sb)[None], (sa * cb - ca * sb)[None]


def fuse_reused(target: torch.Tensor, condition: torch.Tensor, reused: torch.Tensor, alpha: float,
                shift: Optional[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """SpotFusion in place on a block's cache: the target entries at `reused` (target (n, 2, B, H, D),
    token-major) become alpha * cached + (1 - alpha) * the condition entry at the same position
    (condition (n, 2, B, H, D), the first condition item), condition keys turned by `shift` first.
    Temporaries: the selected condition and target entries (2 x Lr x 2BHD) and the key rotation's."""
    ref = condition.index_select(0, reused)
    if shift is not None:
        dims = shift[0].shape[-1]
        ref[:, 0, ..., :dims] = apply_rope(ref[:, 0, ..., :dims], *shift)
    cached = target.index_select(0, reused)
    torch.lerp(ref, cached, alpha, out=cached)
    target.index_copy_(0, reused, cached)


class RecordHook:
    """Full-step hook: stores each block's image K/V in the cache and changes nothing."""

    def __init__(self, cache: SpotKVCache, tokens_per_item: int):
        self.cache = cache
        self.tokens_per_item = tokens_per_item

    def __call__(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.cache.record(index, k, v, self.tokens_per_item)
        return k, v


class SpotHook:
    """Spot-step hook: the block's image K/V become the cache with the active tokens written in and
    the non-edited target tokens fused toward the condition."""

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
        self.shift = shift  # frame-shift rotation condition -> target for the temporal key channels

    def __call__(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.cache.open(index)  # (L_img, 2, B, H, D) on the compute device, target tokens first
        keys, values = kv_views(block)
        keys.index_copy_(1, self.active, k.to(block.dtype))
        values.index_copy_(1, self.active, v.to(block.dtype))
        if self.alpha is not None and self.reused.numel():
            n = self.cache.tokens_per_item
            fuse_reused(block[:n], block[n : 2 * n], self.reused, self.alpha, self.shift)
        self.cache.close(index)  # a host-placed cache writes the target part back
        return keys.to(k.dtype), values.to(v.dtype)
