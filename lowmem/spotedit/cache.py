"""Per-block K/V caches of SpotEdit: every image token (target and condition) of every block.

One forward of the DiT sees, per block, image keys/values laid out as [target (n) ; condition
(items-1)*n] (keys after RoPE). A full step records them as they are; a spot step overwrites the
entries of the tokens it recomputes, fuses the non-edited target entries toward the condition (see
`attention.SpotHook`) and hands the whole image K/V to the block's attention. Attention does not
care about key order (each key carries its own RoPE), so the cache itself is the key/value tensor:
no per-block concatenation of image keys.

Each block owns one tensor `kv[b]` (2, B, L_img, H, D) (index 0 keys, 1 values), so a block's cache
moves as one copy. Caches live on `device`: the compute device when they fit, else the host, and
`fetch`/`store` copy one block's tensor to where the block runs and back. `nbytes` and
`estimate_cache_bytes` give the offload planner the size to place.
"""

from __future__ import annotations

from typing import Optional

import torch


def estimate_cache_bytes(
    blocks: int, batch: int, tokens_per_item: int, items: int, hidden_size: int, dtype: torch.dtype
) -> int:
    """Bytes of a full SpotKVCache: K and V of every image token (target + conditions), every block."""
    element = torch.empty((), dtype=dtype).element_size()
    return blocks * 2 * batch * tokens_per_item * items * hidden_size * element


class SpotKVCache:
    def __init__(self, blocks: int, device: Optional[torch.device | str] = None):
        self.blocks = blocks
        self.device = torch.device(device) if device is not None else None  # None: where the first record runs
        self.kv: list[Optional[torch.Tensor]] = [None] * blocks
        self.tokens_per_item = 0  # target tokens n: positions [0, n) of every kv[b]
        self.recorded_steps = 0

    @property
    def ready(self) -> bool:
        return all(t is not None for t in self.kv)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv if t is not None)

    def record(self, index: int, k: torch.Tensor, v: torch.Tensor, tokens_per_item: int) -> None:
        """Keep block `index`'s image K/V of a full forward (k, v: (B, items*n, H, D), target first)."""
        self.tokens_per_item = tokens_per_item
        if self.device is None:
            self.device = k.device
        held = self.kv[index]
        if held is not None and held.shape[1:] == k.shape and held.dtype == k.dtype:
            held[0].copy_(k)  # reuse the allocation across refreshes
            held[1].copy_(v)
        else:
            self.kv[index] = torch.stack((k, v)).to(self.device)

    def fetch(self, index: int, device: torch.device) -> torch.Tensor:
        """Block `index`'s cache on `device` (no copy when it already lives there)."""
        held = self.kv[index]
        if held is None:
            raise RuntimeError(f"SpotEdit cache of block {index} is empty: a full step must run first")
        return held.to(device, non_blocking=True)

    def store(self, index: int, kv: torch.Tensor) -> None:
        """Write back block `index`'s cache after a spot step changed it (no-op when changed in place)."""
        held = self.kv[index]
        if held is not None and held.data_ptr() != kv.data_ptr():
            held.copy_(kv, non_blocking=True)

    def to(self, device: torch.device | str) -> "SpotKVCache":
        """Move every cache to `device` (the plan's placement)."""
        self.device = torch.device(device)
        self.kv = [t.to(self.device) if t is not None else None for t in self.kv]
        return self
