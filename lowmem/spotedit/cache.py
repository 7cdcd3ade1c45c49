"""Per-block K/V caches of SpotEdit: every image token (target and condition) of every block.

One forward of the DiT sees, per block, image keys/values laid out as [target (n) ; condition
(items-1)*n] (keys after RoPE). A full step records them as they are; a spot step overwrites the
entries of the tokens it recomputes, fuses the non-edited target entries toward the condition (see
`attention.SpotHook`) and hands the whole image K/V to the block's attention. Attention does not
care about key order (each key carries its own RoPE), so the cache itself is the key/value tensor:
no per-block concatenation of image keys.

A block's cache is one token-major tensor (L_img, 2, B, H, D) (index 0 keys, 1 values): the target
part is the contiguous prefix [:n], so a spot step writes back exactly that part (the condition part
does not change between full steps) in one copy, and a whole block moves in one copy.

Placement: on the compute device ("device": every block's cache stays there, updated in place), or
on the host ("host": one pinned arena holds every block, and a `CacheRing` of device slots moves
them on the copy stream, ordered with events, as the streamer moves weights). `spot_cache_bytes`
gives the planner the exact bytes of either placement.
"""

from __future__ import annotations

from typing import Optional

import torch

from lowmem.offload.streams import Streams, streams_for
from lowmem.spotedit.cache_ring import CacheRing

CACHE_SLOTS = 2  # device slots of a host-placed cache: one block computing, one being copied
CACHE_PREFETCH = 1  # blocks loaded ahead of the one computing (at most slots - 1)


def block_cache_shape(batch: int, tokens: int, heads: int, head_dim: int) -> tuple[int, ...]:
    """Shape of one block's cache: (L_img, 2, B, H, D), token-major so the target part is a prefix."""
    return (tokens, 2, batch, heads, head_dim)


def kv_views(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, L_img, H, D) of a block's cache, as views (writes go into the cache)."""
    return block[:, 0].transpose(0, 1), block[:, 1].transpose(0, 1)


class SpotKVCache:
    def __init__(self, blocks: int, device: Optional[torch.device | str] = None, placement: Optional[str] = None,
                 slots: int = CACHE_SLOTS, prefetch: int = CACHE_PREFETCH, streams: Optional[Streams] = None):
        """`device`: where the caches live (None: where the blocks run). `placement`: "device" (every
        block's cache where the blocks run) or "host" (a pinned arena on the host, moved through
        `slots` device slots `prefetch` blocks ahead, ordered by `streams`, by default the
        implementation for the compute device); None: "host" when `device` is not the device the
        blocks run on."""
        if placement not in (None, "device", "host"):
            raise ValueError(f"SpotEdit cache placement is 'device' or 'host', got {placement!r}")
        if slots < 1 or not 0 <= prefetch < slots:
            raise ValueError(f"SpotEdit cache ring: need slots >= 1 and 0 <= prefetch <= slots - 1, got slots={slots}, "
                             f"prefetch={prefetch}")
        self.blocks = blocks
        self.device = torch.device(device) if device is not None else None
        self.placement = placement
        self.slots, self.prefetch, self.streams = slots, prefetch, streams
        self.shape: Optional[tuple[int, ...]] = None  # one block's cache, set by the first record
        self.dtype: Optional[torch.dtype] = None
        self.on_device: list[Optional[torch.Tensor]] = [None] * blocks  # "device" placement
        self.ring: Optional[CacheRing] = None  # "host" placement
        self.recorded = [False] * blocks
        self.tokens_per_item = 0  # target tokens n: positions [0, n) of every block's cache

    @property
    def ready(self) -> bool:
        return all(self.recorded)

    @property
    def nbytes(self) -> int:
        """Bytes of every block's cache where it lives (the host arena, or the device)."""
        if self.ring is not None:
            return self.ring.host_bytes
        return sum(t.numel() * t.element_size() for t in self.on_device if t is not None)

    @property
    def bytes_loaded(self) -> int:
        """Bytes copied host -> device so far (0 for a device-placed cache)."""
        return self.ring.bytes_loaded if self.ring is not None else 0

    @property
    def bytes_written_back(self) -> int:
        """Bytes copied device -> host so far (0 for a device-placed cache)."""
        return self.ring.bytes_written_back if self.ring is not None else 0

    def _allocate(self, k: torch.Tensor) -> None:
        """Lay the caches out for K/V like `k` (B, L_img, H, D) on the compute device `k.device`."""
        self.release()
        self.shape, self.dtype = block_cache_shape(*k.shape), k.dtype
        if self.device is None:
            self.device = k.device
        if self.placement is None:
            self.placement = "device" if self.device.type == k.device.type else "host"
        if self.placement == "host":
            streams = self.streams if self.streams is not None else streams_for(k.device)
            self.ring = CacheRing(self.blocks, self.shape, self.dtype, k.device, self.slots, self.prefetch, streams)

    def record(self, index: int, k: torch.Tensor, v: torch.Tensor, tokens_per_item: int) -> None:
        """Keep block `index`'s image K/V of a full forward (k, v: (B, items*n, H, D), target first)."""
        if self.shape != block_cache_shape(*k.shape) or self.dtype != k.dtype:
            self._allocate(k)
        self.tokens_per_item = tokens_per_item
        if self.ring is not None:
            block = self.ring.stage(index)  # a device slot, free of earlier copies
        else:
            block = self.on_device[index]
            if block is None:
                block = self.on_device[index] = k.new_empty(self.shape)
        keys, values = kv_views(block)
        keys.copy_(k)
        values.copy_(v)
        if self.ring is not None:
            self.ring.write_back(index, block.shape[0])  # the whole block: condition K/V changed too
        self.recorded[index] = True

    def open(self, index: int) -> torch.Tensor:
        """Block `index`'s cache (L_img, 2, B, H, D) on the compute device, for a spot step to update
        in place; `close(index)` hands it back."""
        if not self.recorded[index]:
            raise RuntimeError(f"SpotEdit cache of block {index} is empty: a full step must run first")
        if self.ring is not None:
            return self.ring.acquire(index)
        return self.on_device[index]

    def close(self, index: int) -> None:
        """After a spot step updated block `index`'s target part: a host-placed cache writes back
        that part only (the condition part is unchanged until the next full step)."""
        if self.ring is not None:
            self.ring.write_back(index, self.tokens_per_item)

    def begin_forward(self, spot: bool) -> None:
        """Before a DiT forward that uses the cache: a spot step starts loading the first blocks."""
        if self.ring is not None:
            self.ring.begin_forward(load=spot)

    def end_forward(self) -> None:
        """After the forward's last block was issued: the compute stream is done with every slot."""
        if self.ring is not None:
            self.ring.end_forward()

    def view(self, index: int) -> torch.Tensor:
        """Block `index`'s cache as (2, B, L_img, H, D) where it lives, after every copy into it is done
        (for inspection and tests; the hot path uses `open`/`close`)."""
        if self.ring is not None:
            self.ring.synchronize()
            block = self.ring.host_block(index)
        else:
            block = self.on_device[index]
        return block.permute(1, 2, 0, 3, 4)

    def release(self, keep_host: bool = False) -> None:
        """After an edit: give the device memory back, and the pinned arena unless `keep_host`. A kept
        arena serves the next edit whose caches have the same shape (pinning tens of GB costs seconds)."""
        self.on_device = [None] * self.blocks
        self.recorded = [False] * self.blocks
        if self.ring is not None and keep_host:
            self.ring.free_slots()
            return
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.shape = self.dtype = None
