"""The DiT's two forwards under SpotEdit, both through `dit.block_runner` (so streamed weights work).

`full` is `SpatialEditDiT.forward` step for step (same ops, same order), optionally with a hook that
records every block's image K/V; `partial` embeds the target, keeps the active tokens only (with
their own RoPE rows) and lets `SpotHook` supply the K/V of everything left out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from lowmem.models.dit import SpatialEditDiT, TokenGrid
from lowmem.spotedit.attention import RecordHook, SpotHook, frame_shift_rope, gather_rope
from lowmem.spotedit.cache import CACHE_PREFETCH, CACHE_SLOTS, SpotKVCache


def token_indices(active: torch.Tensor, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(active, reused) flat indices of `n` tokens on `device`. The complement is taken on the host (a
    nonzero on the device would make the host wait for it), then both lists go to the device once."""
    host_active = active.cpu()
    keep = torch.ones(n, dtype=torch.bool)
    keep[host_active] = False
    return host_active.to(device), keep.nonzero().squeeze(1).to(device)


class DiTSpotModel:
    def __init__(self, dit: SpatialEditDiT):
        self.dit = dit

    def new_cache(self, device: Optional[torch.device | str] = None, placement: Optional[str] = None,
                  slots: int = CACHE_SLOTS, prefetch: int = CACHE_PREFETCH) -> SpotKVCache:
        """Caches for every block, living on `device` (None: where the blocks run); a host-placed
        cache moves through its ring on the same streams as the DiT's streamed weights."""
        streams = getattr(self.dit.block_runner, "streams", None)
        return SpotKVCache(len(self.dit.double_blocks), device, placement, slots, prefetch, streams)

    def full(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: Optional[torch.Tensor],
        cache: Optional[SpotKVCache] = None,
    ) -> torch.Tensor:
        """Velocity of the target over all tokens; fills `cache` when one is given."""
        dit = self.dit
        img, grid = dit.embed_image(latents)
        hook = RecordHook(cache, grid.per_item) if cache is not None else None
        txt, ctx = dit.context(timestep, text_states, text_mask, grid, kv_hook=hook)
        if cache is not None:
            cache.begin_forward(spot=False)
        img, _ = dit.block_runner(dit.double_blocks, img, txt, ctx)
        if cache is not None:
            cache.end_forward()
        return dit.head(img[:, : grid.per_item], grid)

    def partial(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: Optional[torch.Tensor],
        active: torch.Tensor,
        cache: SpotKVCache,
        alpha: Optional[float],
        reused: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Velocity (B, C, 1, H, W) computed for the target tokens at `active` (flat token indices);
        the other positions of the result are meaningless (the caller fills them). `reused`: the other
        tokens' indices, on the device with `active` (the denoising loop decides both once per
        selection); without it they are derived here, on the host."""
        dit = self.dit
        tokens, target_grid = dit.embed_image(latents[:, -1:])
        n = target_grid.per_item
        if reused is None:
            active, reused = token_indices(active, n, tokens.device)
        img = tokens.index_select(1, active)
        grid = TokenGrid(items=latents.shape[1], height=target_grid.height, width=target_grid.width)
        shift = None
        if alpha is not None:
            cfg = dit.config
            shift = frame_shift_rope(cfg.rope_dim_list, cfg.theta, from_frame=1, to_frame=0, device=tokens.device)
        hook = SpotHook(cache, active, reused, alpha, shift)
        cache.begin_forward(spot=True)  # the first blocks' caches start moving in now
        txt, ctx = dit.context(timestep, text_states, text_mask, grid, kv_hook=hook)
        cos, sin = gather_rope(ctx.rope_cos, ctx.rope_sin, active)  # target tokens come first
        ctx = replace(ctx, rope_cos=cos, rope_sin=sin)
        img, _ = dit.block_runner(dit.double_blocks, img, txt, ctx)
        cache.end_forward()
        hidden = img.new_zeros(img.shape[0], n, img.shape[2]).index_copy_(1, active, img)
        return dit.head(hidden, target_grid)
