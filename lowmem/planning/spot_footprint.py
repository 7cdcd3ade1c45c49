"""The exact bytes SpotEdit's K/V caches take, for the offload planner.

`spot_cache_bytes` sizes the caches as `SpotKVCache` allocates them (device placement: every block
on the device; host placement: the pinned arena on the host and the ring's device slots), and the
fusion temporaries of one block's spot step by tracing the real `SpotHook` on the `meta` device
(worst case: one active token, every other target token fused). The fusion temporaries live inside
the block's kv hook, on top of what the block itself holds at that point (its q/k/v); they are
freed before the hook returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowmem.models.dit_config import DiTConfig
from lowmem.offload.arena import arena_bytes
from lowmem.planning.live_bytes import trace_peak
from lowmem.spotedit.attention import SpotHook, frame_shift_rope
from lowmem.spotedit.cache import CACHE_SLOTS, SpotKVCache, block_cache_shape


@dataclass(frozen=True)
class SpotCacheBytes:
    block: int  # one block's cache (K and V of every image token)
    device_caches: int  # on the compute device: every block (device placement) or the ring's slots (host)
    pinned_host: int  # the host arena (host placement), else 0
    fusion: int  # peak temporaries of one block's spot-step hook, freed before the block's attention

    @property
    def device(self) -> int:
        """Device bytes SpotEdit adds to a denoising step at its peak."""
        return self.device_caches + self.fusion


def spot_cache_bytes(config: DiTConfig, image_tokens: int, placement: str, slots: int = CACHE_SLOTS,
                     batch: int = 2, items: int = 2, dtype: torch.dtype = torch.bfloat16) -> SpotCacheBytes:
    """Bytes of SpotEdit's caches for a DiT `config` at `image_tokens` target tokens per image
    ((height // 16) * (width // 16)), `items` images per forward (target + conditions), CFG
    `batch`, caches in `dtype` (the compute dtype); `placement` "device" or "host" (with `slots`
    device slots; the same number `SpotKVCache` is given)."""
    if placement not in ("device", "host"):
        raise ValueError(f"SpotEdit cache placement is 'device' or 'host', got {placement!r}")
    if placement == "host" and slots < 1:
        raise ValueError(f"host-placed SpotEdit caches move through at least 1 device slot, got slots={slots}")
    blocks = config.mm_double_blocks_depth
    shape = block_cache_shape(batch, items * image_tokens, config.heads_num, config.head_dim)
    block = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    host = placement == "host"
    return SpotCacheBytes(
        block=block,
        device_caches=block * (max(1, min(slots, blocks)) if host else blocks),
        pinned_host=arena_bytes([block] * blocks) if host else 0,
        fusion=_fusion_peak(config, shape, image_tokens, dtype),
    )


def _fusion_peak(config: DiTConfig, shape: tuple[int, ...], image_tokens: int, dtype: torch.dtype) -> int:
    """Traced peak of `SpotHook` on one block's cache with one active token (the most fused)."""
    tokens, _, batch, heads, head_dim = shape
    meta = torch.device("meta")
    k = torch.empty(batch, tokens, heads, head_dim, dtype=dtype, device=meta)
    cache = SpotKVCache(1, meta, placement="device")
    cache.record(0, k, k, image_tokens)
    active = torch.zeros(1, dtype=torch.long, device=meta)
    reused = torch.empty(image_tokens - 1, dtype=torch.long, device=meta)
    shift = frame_shift_rope(config.rope_dim_list, config.theta, from_frame=1, to_frame=0, device=meta)
    hook = SpotHook(cache, active, reused, alpha=0.5, shift=shift)
    k_active = k[:, :1].clone()
    return trace_peak(lambda: hook(0, k_active, k_active))
