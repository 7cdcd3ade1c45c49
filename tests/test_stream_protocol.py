"""The stream protocol: the happens-before checker catches each kind of misordering, the recording
stand-in keeps results correct, and the pinned arena holds exactly the planned bytes."""

from __future__ import annotations

import threading

import pytest
import torch

from lowmem.offload.arena import ALIGN, PinnedArena, arena_bytes
from lowmem.offload.stream_check import assert_ordered, check
from lowmem.offload.streams import COMPUTE, COPY, RecordingStreams, streams_for


def ring_protocol(streams: RecordingStreams, skip: str = "") -> None:
    """Two blocks through one slot and a prefetch that is never used, the way the streamer orders
    them, then the slot is freed; `skip` drops one step."""
    host = [streams.host(f"block {i}", torch.full((32,), i, dtype=torch.uint8)) for i in range(2)]
    slot = streams.allocate("slot 0", 32)
    if skip != "wait_stream":
        streams.wait_stream(COPY, COMPUTE)
    loaded, done = streams.event("loaded 0"), streams.event("done 0")
    for i in range(2):
        if i and skip != "wait done":
            streams.wait(done, COPY)
        streams.copy(slot, host[i], f"block {i}")
        streams.record(loaded, COPY)
        if skip != "wait loaded":
            streams.wait(loaded, COMPUTE)
        streams.use(slot, f"block {i}")
        streams.record(done, COMPUTE)
    streams.wait(done, COPY)
    streams.copy(slot, host[0], "block 0")  # a prefetch the next forward would have used
    if skip != "wait before free":
        streams.wait_stream(COMPUTE, COPY)
    streams.free(slot)


def test_ordered_ring_passes_and_results_are_real():
    streams = RecordingStreams()
    ring_protocol(streams)
    assert check(streams.log) == []
    slot = streams.allocate("probe", 4)
    streams.copy(slot, streams.host("src", torch.arange(4, dtype=torch.uint8)), "x")
    assert slot.tensor.tolist() == [0, 1, 2, 3]  # the recording stand-in really copies


@pytest.mark.parametrize("skip, why", [
    ("wait_stream", "races with #0 allocate slot 0"),  # defect 2: copy into memory compute may still use
    ("wait loaded", "use slot 0 [block 0] on compute (issued by host) races with"),
    ("wait done", "copy slot 0 [block 1] on copy (issued by host) races with"),
    ("wait before free", "free slot 0 on compute (issued by host) races with"),
])
def test_dropping_any_wait_is_caught(skip, why):
    streams = RecordingStreams()
    ring_protocol(streams, skip=skip)
    problems = check(streams.log)
    assert problems and any(why in p for p in problems), problems
    with pytest.raises(AssertionError, match="stream-ordering problem"):
        assert_ordered(streams.log)


def test_wait_on_an_event_never_recorded_is_caught():
    streams = RecordingStreams()
    streams.wait(streams.event("done 0"), COPY)  # on CUDA a silent no-op
    assert "never recorded" in check(streams.log)[0]


def test_stale_or_missing_content_is_caught():
    streams = RecordingStreams()
    slot = streams.allocate("slot", 8)
    streams.wait_stream(COPY, COMPUTE)
    streams.copy(slot, streams.host("block 0", torch.zeros(8, dtype=torch.uint8)), "block 0")
    streams.wait_stream(COMPUTE, COPY)
    streams.use(slot, "block 1")  # ordered, but the slot holds the previous occupant
    assert check(streams.log) == ["#4 use slot [block 1] on compute (issued by host): reads 'slot' expecting 'block 1', but it holds 'block 0'"]
    streams.free(slot)
    streams.use(slot, "block 0")
    assert "holds '<freed>'" in check(streams.log)[-1]


def reader_protocol(streams: RecordingStreams, wait_for_copy: bool) -> None:
    """A reader thread fills one staging buffer twice; the copy stream empties it in between."""
    staging = streams.host("staging", torch.zeros(8, dtype=torch.uint8))
    slot = streams.allocate("slot", 8)
    streams.wait_stream(COPY, COMPUTE)
    copied = streams.event("staging copied")
    filled = [streams.event(f"filled {i}") for i in range(2)]

    def reader():
        for i in range(2):
            if i and wait_for_copy:
                streams.host_wait(copied)
            streams.write(staging, f"block {i}", lambda t, i=i: t.fill_(i))
            streams.record(filled[i])  # on this host thread

    thread = threading.Thread(target=reader, name="reader")
    thread.start()
    for i in range(2):
        streams.host_wait(filled[i])
        if i:
            streams.wait(streams_done, COPY)
        streams.copy(slot, staging, f"block {i}")
        streams.record(copied, COPY)
        loaded = streams.event(f"loaded {i}")
        streams.record(loaded, COPY)
        streams.wait(loaded, COMPUTE)
        streams.use(slot, f"block {i}")
        streams_done = streams.event(f"done {i}")
        streams.record(streams_done, COMPUTE)
    thread.join()


def test_reader_thread_is_its_own_agent():
    streams = RecordingStreams()
    reader_protocol(streams, wait_for_copy=True)
    assert {op.agent for op in streams.log} == {"host", "reader"}
    assert check(streams.log) == []
    streams = RecordingStreams()
    reader_protocol(streams, wait_for_copy=False)  # may refill staging while the copy still reads it
    problems = check(streams.log)
    assert any("write staging [block 1] on reader" in p and "copy slot [block 0]" in p for p in problems), problems


def test_immediate_streams_for_cpu_and_meta():
    for device in ("cpu", "meta"):
        streams = streams_for(device)
        assert not streams.async_copies and not streams.pin
        buf = streams.allocate("b", 16)
        assert buf.tensor.device.type == device
        streams.copy(buf, streams.host("h", torch.zeros(16, dtype=torch.uint8, device=device)), "zeros")
        event = streams.event("e")
        with pytest.raises(RuntimeError, match="never recorded"):
            streams.wait(event, COMPUTE)
        streams.record(event, COMPUTE)
        streams.wait(event, COMPUTE)
        streams.host_wait(event)


def test_arena_holds_exactly_the_planned_bytes_in_aligned_views():
    sizes = [1000, 256, 1, 4096]
    arena = PinnedArena(sizes, pin=False)
    assert arena.nbytes == arena_bytes(sizes) == 1024 + 256 + 256 + 4096
    assert arena.flat.numel() == arena.nbytes
    assert [v.numel() for v in arena.views] == sizes
    base = arena.flat.data_ptr()
    assert all((v.data_ptr() - base) % ALIGN == 0 for v in arena.views)
    for i, v in enumerate(arena.views):
        v.fill_(i + 1)
    assert [int(v[0]) for v in arena.views] == [1, 2, 3, 4]  # no two views overlap
    arena.close()
    assert arena.nbytes == 0 and arena.views == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_arena_is_pinned_exactly_and_unpinned_on_close():
    sizes = [805_600_000 // 64, 3 * 2**20 + 1]
    arena = PinnedArena(sizes, pin=True)
    assert arena.flat.is_pinned() and all(v.is_pinned() for v in arena.views)
    assert arena.nbytes == arena_bytes(sizes) < sum(sizes) + ALIGN * len(sizes)
    device = torch.empty(sizes[1], dtype=torch.uint8, device="cuda").fill_(7)
    arena.views[1].copy_(device, non_blocking=True)
    torch.cuda.synchronize()
    assert int(arena.views[1].sum()) == 7 * sizes[1]
    flat = arena.flat
    arena.close()
    assert not flat.is_pinned()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streams_order_a_slow_copy():
    streams = streams_for("cuda")
    host = streams.host("h", PinnedArena([1 << 24], pin=True).views[0].fill_(3))
    slot = streams.allocate("slot", 1 << 24)
    streams.wait_stream(COPY, COMPUTE)
    with torch.cuda.stream(streams.stream(COPY)):
        torch.cuda._sleep(50_000_000)  # a slow copy stream: compute must still wait for the copy
    streams.copy(slot, host, "threes")
    loaded = streams.event("loaded")
    streams.record(loaded, COPY)
    streams.wait(loaded, COMPUTE)
    assert int(slot.tensor.sum()) == 3 << 24
