"""Per-block K/V caches of SpotEdit: the condition image tokens and every target token.

One forward of the DiT sees, per block, image keys/values laid out as [target (n) ; condition
(items-1)*n] (after RoPE for keys). A full step records both parts; a spot step reads the
condition part as it is and the target part for the tokens it does not recompute, and writes the
target part back (recomputed tokens overwrite their entries, non-edited ones are fused toward the
condition, see `attention.SpotHook`).

Each block owns two tensors, `cond[b]` (2, B, Lc, H, D) and `target[b]` (2, B, n, H, D) (index 0
keys, 1 values), so a block's caches move as two copies. They live on `device`: the compute device
when they fit, else the host, and `fetch`/`store` copy one block's tensors to where the block runs
and back. `nbytes` and `estimate_cache_bytes` give the offload planner the size to place.
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
        self.cond: list[Optional[torch.Tensor]] = [None] * blocks
        self.target: list[Optional[torch.Tensor]] = [None] * blocks
        self.recorded_steps = 0

    @property
    def ready(self) -> bool:
        return all(t is not None for t in self.target)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.cond, *self.target) if t is not None)

    def _home(self, like: torch.Tensor) -> torch.device:
        if self.device is None:
            self.device = like.device
        return self.device

    def record(self, index: int, k: torch.Tensor, v: torch.Tensor, tokens_per_item: int) -> None:
        """Keep block `index`'s image K/V of a full forward (k, v: (B, items*n, H, D), target first)."""
        n = tokens_per_item
        home = self._home(k)
        for store, part in ((self.target, slice(0, n)), (self.cond, slice(n, None))):
            kv = torch.stack((k[:, part], v[:, part]))
            if store[index] is not None and store[index].shape == kv.shape and store[index].dtype == kv.dtype:
                store[index].copy_(kv)  # reuse the allocation across refreshes
            else:
                store[index] = kv.to(home)

    def fetch(self, index: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Block `index`'s (cond, target) caches on `device` (no copy when they already live there)."""
        cond, target = self.cond[index], self.target[index]
        if cond is None or target is None:
            raise RuntimeError(f"SpotEdit cache of block {index} is empty: a full step must run first")
        return cond.to(device, non_blocking=True), target.to(device, non_blocking=True)

    def store(self, index: int, target: torch.Tensor) -> None:
        """Write back block `index`'s target cache after a spot step changed it (no-op when in place)."""
        home = self.target[index]
        if home is not None and home.data_ptr() != target.data_ptr():
            home.copy_(target, non_blocking=True)

    def to(self, device: torch.device | str) -> "SpotKVCache":
        """Move every cache to `device` (the plan's placement)."""
        self.device = torch.device(device)
        self.cond = [t.to(self.device) if t is not None else None for t in self.cond]
        self.target = [t.to(self.device) if t is not None else None for t in self.target]
        return self
