"""A failed edit leaves the device as it found it (issue 24): an exception or Ctrl-C inside a DiT
block or inside SpotEdit's selector gives back what the edit placed (the DiT's device part and the
streamer's slots, SpotEdit's caches and their pinned arena), the ledger holds what it held before,
and the next edit in the same process makes the image it would have made anyway. A pinned arena
dropped without `close()` is still unpinned, and a closed pipeline lets go of its models."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lowmem.offload.arena as arena_module
from lowmem.offload.arena import PinnedArena
from lowmem.offload.streams import RecordingStreams
from lowmem.pipeline import SpatialEditPipeline
from lowmem.spotedit import DiTSpotModel, SpotConfig, SpotKVCache, SpotSelector, spot_denoise

SIZE = 64
SPOT = SpotConfig(threshold="auto", dilation=0, initial_steps=1, reset_steps=(), reference_steps=None)


class Failure(RuntimeError):
    """What the tests raise inside an edit."""


def edit(pipe: SpatialEditPipeline, scene) -> np.ndarray:
    result = pipe.edit(scene, "rotate the object", steps=4, guidance=1.0, seed=3, resolution=SIZE, progress=False,
                       spot=SPOT)
    return np.asarray(result.image)


@pytest.fixture
def taking_turns(tiny_model):
    """The tiny model under a budget so small that the plan evicts the conditioner: the DiT's device
    part is placed for each edit and must leave after it."""
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="cpu", memory_budget="4MB", resolution=SIZE, spot=True,
                                           guidance=1.0, max_resident_blocks=1)
    assert not pipe.offload.together and pipe.offload.dit.streamer.streamed
    yield pipe
    pipe.close()


def raise_on_call(n: int, error: BaseException):
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return fail.real(*args, **kwargs)

    return fail


def in_a_streamed_block(pipe, monkeypatch, error):
    block = pipe.dit.double_blocks[pipe.offload.dit.streamer.streamed[-1]]
    fail = raise_on_call(2, error)
    fail.real = block.forward
    monkeypatch.setattr(block, "forward", fail)


def in_the_selector(pipe, monkeypatch, error):
    fail = raise_on_call(1, error)
    real = SpotSelector.select
    fail.real = lambda *args, **kwargs: real(*args, **kwargs)
    monkeypatch.setattr(SpotSelector, "select", lambda self, x0_hat: fail(self, x0_hat))


FAULTS = {
    "an exception in a streamed DiT block": (in_a_streamed_block, Failure("block")),
    "Ctrl-C in a streamed DiT block": (in_a_streamed_block, KeyboardInterrupt()),
    "an exception in SpotEdit's selector": (in_the_selector, Failure("selector")),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_failed_edit_gives_back_what_it_placed(taking_turns, scene, monkeypatch, fault):
    pipe = taking_turns
    runtime = pipe.offload
    expected = edit(pipe, scene)
    before = dict(runtime.ledger.items)
    assert not runtime.dit.placed and runtime.dit.streamer.slots is None  # what an edit that succeeded leaves
    inject, error = FAULTS[fault]
    with monkeypatch.context() as patch:
        inject(pipe, patch, error)
        with pytest.raises(type(error)):
            edit(pipe, scene)
    assert not runtime.dit.placed, "the DiT's device part stayed placed"
    assert runtime.dit.streamer.slots is None, "the streamer kept its slots"
    assert runtime.ledger.items == before
    for index in runtime.dit.streamer.streamed:  # no block still points into a freed slot
        assert all(p.stride() == (0,) * p.dim() for p in pipe.dit.double_blocks[index].parameters())
    assert np.array_equal(edit(pipe, scene), expected), "the next edit differs"


class HostCached(DiTSpotModel):
    """SpotEdit's caches forced onto the host ring (a pinned arena and device slots), on recording streams."""

    def __init__(self, dit, streams):
        super().__init__(dit)
        self.streams = streams
        self.caches: list[SpotKVCache] = []

    def new_cache(self, device=None) -> SpotKVCache:
        self.caches.append(SpotKVCache(len(self.dit.double_blocks), placement="host", streams=self.streams))
        return self.caches[-1]


@pytest.mark.parametrize("error", [Failure("selector"), KeyboardInterrupt()], ids=["exception", "Ctrl-C"])
def test_host_placed_caches_go_back_when_the_loop_fails(tiny_pipeline, monkeypatch, cache_arenas, error):
    arenas = cache_arenas
    fail = raise_on_call(1, error)
    real = SpotSelector.select
    fail.real = lambda *args, **kwargs: real(*args, **kwargs)
    monkeypatch.setattr(SpotSelector, "select", lambda self, x0_hat: fail(self, x0_hat))
    streams = RecordingStreams()
    model = HostCached(tiny_pipeline.dit, streams)
    condition = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 5, tiny_pipeline.dit.config.text_states_dim)
    from lowmem.models.joint_attention import TextPadding

    with pytest.raises(type(error)):
        spot_denoise(model, tiny_pipeline.vae, condition, text, TextPadding(torch.zeros(1, dtype=torch.long)), 4, 1.0,
                     torch.Generator().manual_seed(0), SPOT, torch.device("cpu"), torch.float32, progress=False)
    (cache,) = model.caches
    assert arenas and cache.ring is None, "the cache ring was not released"
    assert all(arena.nbytes == 0 and arena.flat.numel() == 0 for arena in arenas), "an arena was left open"
    slots = {op.buffer for op in streams.log if op.kind == "allocate"}
    assert slots and slots == {op.buffer for op in streams.log if op.kind == "free"}, "a device slot was not freed"


class FakeCudart:
    """Stands in for CUDA's runtime: records page-locking calls by address; `refuse` is the error it
    answers a registration with (0: success)."""

    cudaError = SimpleNamespace(success=0)

    def __init__(self):
        self.registered: list[int] = []
        self.unregistered: list[int] = []
        self.refuse = 0

    def cudaHostRegister(self, pointer, nbytes, flags):
        self.registered.append(pointer)
        return self.refuse

    def cudaGetErrorString(self, error):
        return "out of memory" if error == 2 else f"error {error}"

    def cudaHostUnregister(self, pointer):
        self.unregistered.append(pointer)
        return 0


@pytest.fixture
def cudart(monkeypatch) -> FakeCudart:
    fake = FakeCudart()
    monkeypatch.setattr(arena_module.torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(arena_module.torch.cuda, "check_error", lambda result: None)
    return fake


def test_an_arena_dropped_without_close_is_still_unpinned(cudart):
    arena = PinnedArena([1000, 24], pin=True)
    pointer = arena.flat.data_ptr()
    assert arena.pinned and cudart.registered == [pointer]
    del arena
    gc.collect()
    assert cudart.unregistered == [pointer]


def test_close_unpins_once(cudart):
    arena = PinnedArena([4096], pin=True)
    pointer = arena.flat.data_ptr()
    arena.close()
    assert not arena.pinned and arena.nbytes == 0
    arena.close()
    del arena
    gc.collect()
    assert cudart.unregistered == [pointer]


def test_a_refused_page_lock_warns_and_stays_pageable(cudart, monkeypatch):
    """A container's locked-memory limit makes cudaHostRegister fail: the run goes on, unpinned, with
    one warning that says what to change, and CUDA's leftover error is cleared."""
    cleared = []
    monkeypatch.setattr(arena_module, "_forget_cuda_error", lambda: cleared.append(1))
    cudart.refuse = 2
    with pytest.warns(RuntimeWarning, match=r"could not page-lock .*out of memory.*ulimit -l"):
        arena = PinnedArena([1 << 20], pin=True)
    assert not arena.pinned and cleared == [1] and arena.views[0].numel() == 1 << 20
    arena.close()
    assert cudart.unregistered == []


def test_a_closed_pipeline_lets_go_of_its_models(tiny_model, scene):
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="cpu", memory_budget="4MB", resolution=SIZE, guidance=1.0)
    edit(pipe, scene)
    models = [weakref.ref(m) for m in (pipe.dit, pipe.vae.module, pipe.conditioner.model)]
    pipe.close()
    gc.collect()
    assert [ref() for ref in models] == [None, None, None]
