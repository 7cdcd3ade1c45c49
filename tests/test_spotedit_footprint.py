"""spot_cache_bytes: the planner's number for SpotEdit's caches is what the cache really allocates."""

from __future__ import annotations

import pytest
import torch

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, TINY_DIT_CONFIG
from lowmem.offload.streams import RecordingStreams
from lowmem.planning.spot_footprint import spot_cache_bytes
from lowmem.spotedit import DiTSpotModel


def test_full_size_at_1024_by_hand():
    n = 64 * 64  # 1024² -> 128² latent -> 64² tokens per image
    on_device = spot_cache_bytes(FULL_DIT_CONFIG, n, "device")
    block = (2 * n) * 2 * 2 * 4096 * 2  # (target + condition) x K,V x CFG batch 2 x hidden x bf16
    assert on_device.block == block == 268_435_456
    assert on_device.device_caches == 40 * block and on_device.pinned_host == 0
    # fusion: the selected condition entries and the selected cached target entries, n - 1 tokens each
    # (one token active); the key rotation's float32 temporaries cover 16 of 128 channels and peak lower
    assert on_device.fusion == 2 * (n - 1) * 2 * 2 * 4096 * 2
    on_host = spot_cache_bytes(FULL_DIT_CONFIG, n, "host", slots=2)
    assert on_host.device_caches == 2 * block and on_host.fusion == on_device.fusion
    assert on_host.pinned_host == 40 * block and on_host.device == 2 * block + on_host.fusion
    with pytest.raises(ValueError, match="at least 1 device slot"):
        spot_cache_bytes(FULL_DIT_CONFIG, n, "host", slots=0)


@pytest.mark.parametrize("placement, slots", [("device", 2), ("host", 1), ("host", 3)])
def test_equals_what_the_cache_allocates(placement, slots):
    torch.manual_seed(0)
    dit = build_dit(TINY_DIT_CONFIG, device="cpu", dtype=torch.float32)
    cache = DiTSpotModel(dit).new_cache(placement=placement, slots=slots, prefetch=0)
    cache.streams = RecordingStreams()
    latents = torch.randn(2, 2, 16, 1, 8, 8)
    DiTSpotModel(dit).full(latents, torch.tensor([500.0, 500.0]), torch.randn(2, 5, TINY_DIT_CONFIG.text_states_dim), None, cache)
    expected = spot_cache_bytes(TINY_DIT_CONFIG, 16, placement, slots=slots, dtype=torch.float32)
    if placement == "device":
        assert cache.nbytes == expected.device_caches
    else:
        ring = cache.ring
        assert sum(s.tensor.numel() for s in ring.slots) == expected.device_caches
        assert ring.arena.nbytes == cache.nbytes == expected.pinned_host
