"""The stream protocol: the happens-before checker catches each kind of misordering, the recording
stand-in keeps results correct, and the pinned arena holds exactly the planned bytes."""

from __future__ import annotations

import functools
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
    arena = PinnedArena([1 << 24], pin=True)
    host = streams.host("h", arena.views[0].fill_(3))
    slot = streams.allocate("slot", 1 << 24)
    streams.wait_stream(COPY, COMPUTE)
    with torch.cuda.stream(streams.stream(COPY)):
        torch.cuda._sleep(50_000_000)  # a slow copy stream: compute must still wait for the copy
    streams.copy(slot, host, "threes")
    loaded = streams.event("loaded")
    streams.record(loaded, COPY)
    streams.wait(loaded, COMPUTE)
    assert int(slot.tensor.sum()) == 3 << 24
    streams.host_wait_stream(COPY)
    arena.close()


# -- the streamer's protocol over many steps of every plan kind ------------------------------------

from test_offload_streamer import inputs, one_thread, random_dit, run_steps  # noqa: E402,F401 (one_thread: autouse)

from lowmem.offload import MemoryLedger, apply_plan  # noqa: E402
from lowmem.offload.streamer import BlockStreamer, pinned_bytes  # noqa: E402
from lowmem.planning import plan_for  # noqa: E402

STEPS = 4


@functools.lru_cache(maxsize=None)
def expected_steps(steps=STEPS):
    return run_steps(random_dit(torch.float32), torch.float32, steps=steps)


def recorded(kw: dict, storage: str = "pageable", tmp_path=None, evictable: bool = False, streamer_class=None,
             async_copies: bool = True):
    """A DiT under a plan, run through a RecordingStreams: (dit, offloaded, streams)."""
    dit = random_dit(torch.float32)
    plan = plan_for(dit, "256MB", 128, device="cpu", storage=storage, **kw)
    streams = RecordingStreams(async_copies=async_copies)
    if streamer_class is not None:  # a deliberately old or broken ordering
        import lowmem.offload.install as install
        original, install.BlockStreamer = install.BlockStreamer, streamer_class
        try:
            offloaded = apply_plan(dit, plan, "cpu", streams=streams, disk_dir=tmp_path, evictable=evictable)
        finally:
            install.BlockStreamer = original
    else:
        offloaded = apply_plan(dit, plan, "cpu", streams=streams, disk_dir=tmp_path, evictable=evictable)
    return dit, offloaded, streams


RINGS = {
    "static ring": dict(max_resident_blocks=3, slots=3, prefetch_depth=2),
    "one slot": dict(max_resident_blocks=0, slots=1, prefetch_depth=0),
    **{f"wrapping ring of 3, depth {d}": dict(max_resident_blocks=1, slots=3, prefetch_depth=d) for d in range(3)},
    **{f"wrapping ring of 2, depth {d}": dict(max_resident_blocks=0, slots=2, prefetch_depth=d) for d in range(2)},
}


@pytest.mark.parametrize("storage", ["pageable", "disk"])
@pytest.mark.parametrize("name", list(RINGS))
def test_every_ring_is_ordered_over_many_steps(name, storage, tmp_path):
    dit, offloaded, streams = recorded(RINGS[name], storage, tmp_path / "blocks")
    got = run_steps(dit, torch.float32, steps=STEPS)
    assert all(torch.equal(a, b) for a, b in zip(got, expected_steps()))  # bit-identical to resident
    offloaded.close()
    assert_ordered(streams.log)
    streamer = offloaded.streamer
    uses = [op for op in streams.log if op.kind == "use"]
    assert len(uses) == STEPS * len(streamer.streamed)  # every streamed block run was checked
    copies = [op for op in streams.log if op.kind == "copy"]
    assert len(copies) == (len(streamer.streamed) if streamer.static else STEPS * len(streamer.streamed) + streamer.depth)
    if storage == "disk":  # defect 7: every read is done by the reader thread, never by the compute thread
        reads = [op for op in streams.log if op.kind == "write"]
        assert len(reads) == len(copies) and {op.agent for op in reads} == {"dit reader"}
    assert [op.kind for op in streams.log[-2:]] == ["record", "host_wait"]  # close waited for the copy stream


@pytest.mark.parametrize("storage", ["pageable", "disk"])
def test_immediate_protocol_is_ordered(storage, tmp_path):
    """The host tier (copies land at once, the disk reader writes the slot itself) checks too."""
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 2"], storage, tmp_path / "b", async_copies=False)
    assert all(torch.equal(a, b) for a, b in zip(run_steps(dit, torch.float32, steps=STEPS), expected_steps()))
    offloaded.close()
    assert_ordered(streams.log)
    assert not any(op.stream == "copy" for op in streams.log)


@pytest.mark.parametrize("storage", ["pageable", "disk"])
def test_free_slots_between_forwards_and_place_release_cycles(storage, tmp_path):
    """Defects 2, 3, 6: the evictable DiT leaves after each forward (slots freed, resident part
    re-pointed to its host copy) and comes back, with no wait on a stale `done` event."""
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 1"], storage, tmp_path / "b", evictable=True)
    ledger = offloaded.ledger = MemoryLedger()
    latents, t, text = inputs(torch.float32)
    expected = expected_steps()
    part = offloaded.part
    host = part.arena.flat
    for step in range(STEPS):
        offloaded.place()
        with torch.inference_mode():
            assert torch.equal(dit(latents, t * (1 - step / 10), text), expected[step])
        offloaded.release()
        assert offloaded.streamer.slots is None and "dit slots" not in ledger.items  # defect 3
        params = [p for m in part.modules for p in m.parameters()]
        start = host.data_ptr()
        assert all(start <= p.data_ptr() < start + host.numel() for p in params)  # defect 6: back on the host copy
    offloaded.close()
    assert_ordered(streams.log)
    up = [op for op in streams.log if op.kind == "copy" and op.src == "dit resident part host copy"]
    assert len(up) == STEPS  # copied up once per place
    assert not any(op.kind == "copy" and op.buffer == "dit resident part host copy" for op in streams.log)  # never back
    frees = [op.buffer for op in streams.log if op.kind == "free"]
    assert frees.count("dit slot 0") == STEPS and frees.count("dit resident part on device") == STEPS


def test_interrupted_forward_is_ordered(tmp_path):
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 2"], "disk", tmp_path / "b")
    latents, t, text = inputs(torch.float32)
    victim = dit.double_blocks[offloaded.streamer.streamed[2]]
    forward = victim.forward
    victim.forward = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    with torch.inference_mode(), pytest.raises(KeyboardInterrupt):
        dit(latents, t, text)
    victim.forward = forward
    got = run_steps(dit, torch.float32, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(got, expected_steps(steps=2)))
    offloaded.close()
    assert_ordered(streams.log)


class MainOrder(BlockStreamer):
    """The order of main before defect 2 was fixed: the copy stream never waits for the compute
    stream after slots are allocated (or after an interrupted forward), and every copy waits on the
    slot's `done` event, recorded or not (never recorded at first, stale after free_slots)."""

    def _allocate(self):
        self.slots = [self.streams.allocate(f"{self.name} slot {s}", self.slot_bytes) for s in range(self.num_slots)]

    def _issue(self, k):
        self.done_since_allocated = [True] * self.num_slots
        super()._issue(k)

    def reset(self):
        self.async_copies = False  # skips the copy stream's wait for compute
        try:
            super().reset()
        finally:
            self.async_copies = True


class WithoutLoadedWait(BlockStreamer):
    """A deliberately broken ordering: compute does not wait for the copy into its slot."""

    def enter(self, i):
        self.async_copies = False
        try:
            super().enter(i)
        finally:
            self.async_copies = True


class WithoutDoneWait(BlockStreamer):
    """A deliberately broken ordering: a copy overwrites a slot whose block may still compute."""

    def _copy_in(self, s, slot, src, tag, wait_done):
        super()._copy_in(s, slot, src, tag, False)


@pytest.mark.parametrize("broken, why", [
    (MainOrder, "never recorded"),
    (WithoutLoadedWait, "use dit slot"),
    (WithoutDoneWait, "copy dit slot"),
])
def test_old_and_broken_orders_are_caught(broken, why):
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 1"], streamer_class=broken, evictable=True)
    for _ in range(2):  # two forwards with the slots freed in between
        offloaded.place()
        run_steps(dit, torch.float32, steps=1)
        offloaded.release()
    problems = check(streams.log)
    assert any(why in p for p in problems), problems


def test_main_order_races_with_the_allocator():
    """Defect 2: on main a fresh slot (first forward, after free_slots, after an interrupted
    forward) is copied into while compute may still use that memory."""
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 1"], streamer_class=MainOrder)
    run_steps(dit, torch.float32, steps=1)
    first = check(streams.log)
    assert any("races with" in p and "allocate dit slot" in p for p in first), first
    offloaded.streamer.free_slots()
    mark = len(streams.log)
    run_steps(dit, torch.float32, steps=1)
    after_free = [p for p in check(streams.log) if int(p.split()[0][1:]) >= mark]
    # the `done` it waits on predates the free: the new slot races with the allocation
    assert any("races with" in p and "allocate dit slot" in p for p in after_free), after_free


def test_close_waits_for_copies_and_gives_everything_back(tmp_path):
    """Defect 3 (close) and 4 (the arena is released)."""
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 2"], "disk", tmp_path / "b")
    streamer = offloaded.streamer
    run_steps(dit, torch.float32, steps=1)
    streamer.enter(streamer.streamed[0])  # an interrupted forward: copies issued ahead, never used
    assert streamer.slots is not None and streamer.staging_arena.nbytes
    offloaded.close()
    assert streamer.slots is None and streamer.staging_arena.nbytes == 0 and streamer.reader._thread is None
    assert_ordered(streams.log)
    kinds = [op.kind for op in streams.log]
    last_copy = max(i for i, k in enumerate(kinds) if k == "copy")
    assert "free" in kinds[last_copy:] and kinds[-1] == "host_wait"


def test_pinned_store_is_one_arena_of_exactly_the_planned_bytes():
    """Defect 4: one allocation holding every streamed block's image, sized exactly, released on close."""
    dit = random_dit(torch.bfloat16)
    plan = plan_for(dit, "256MB", 128, device="cpu", storage="pageable", max_resident_blocks=2)
    offloaded = apply_plan(dit, plan, "cpu")
    streamer = offloaded.streamer
    images = list(streamer.store.images.values())
    sizes = [streamer.layouts[i].nbytes for i in streamer.streamed]
    assert len({t.untyped_storage().data_ptr() for t in images}) == 1  # one allocation
    assert streamer.store.arena.flat.numel() == arena_bytes(sizes) == streamer.stats()["host_bytes"]
    assert pinned_bytes(sizes, "pinned", plan.dit.slots) == arena_bytes(sizes)
    assert pinned_bytes(sizes, "disk", plan.dit.slots) == arena_bytes([max(sizes)] * plan.dit.slots)
    assert arena_bytes(sizes) - sum(sizes) < ALIGN * len(sizes)  # no power-of-two rounding
    offloaded.close()
    assert streamer.store.host_bytes() == 0


def test_disk_reads_leave_the_compute_thread(tmp_path, monkeypatch):
    """Defect 7: with the disk tier, no read runs on the thread that runs the blocks."""
    import os

    import lowmem.offload.store as store

    readers = []
    real = os.preadv

    def spy(*args):
        readers.append(threading.current_thread() is threading.main_thread())
        return real(*args)

    monkeypatch.setattr(store.os, "preadv", spy)
    dit = random_dit(torch.float32)
    plan = plan_for(dit, "256MB", 128, device="cpu", storage="disk", max_resident_blocks=1, slots=3, prefetch_depth=2)
    offloaded = apply_plan(dit, plan, "cpu", disk_dir=tmp_path / "b")
    got = run_steps(dit, torch.float32, steps=2)
    offloaded.close()
    assert all(torch.equal(a, b) for a, b in zip(got, expected_steps(steps=2)))
    assert readers and not any(readers)


def test_a_whole_edit_with_a_streamed_conditioner_is_ordered(tiny_model, tiny_pipeline, scene):
    """Conditioner hooks (`attach`), its slots freed after each prompt, the DiT's resident part and
    the conditioner taking turns on the device, two edits: one log, checked; same image."""
    import numpy as np

    from lowmem.offload import OffloadRuntime
    from lowmem.pipeline import SpatialEditPipeline

    expected = tiny_pipeline.edit(scene, "move it left", steps=2, seed=4, resolution=64, progress=False)
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="cpu")
    plan = plan_for(pipe.dit, "300MB", 64, device="cpu", max_resident_blocks=1, slots=2, prefetch_depth=1,
                    vlm_bytes=pipe.conditioner.weight_bytes(), vae_bytes=pipe.vae.weight_bytes())
    plan.vlm.placement = "streamed"  # what the planner picks when Qwen3-VL does not fit whole
    streams = RecordingStreams()
    pipe.offload = OffloadRuntime(plan, pipe.dit, pipe.vae, pipe.conditioner, pipe.device, streams=streams)
    for _ in range(2):
        got = pipe.edit(scene, "move it left", steps=2, seed=4, resolution=64, progress=False)
        assert np.array_equal(np.asarray(got.image), np.asarray(expected.image))
    pipe.offload.close()
    assert_ordered(streams.log)
    used = {op.buffer for op in streams.log if op.kind == "use"}
    assert {"vlm slot 0", "dit slot 0", "vlm outside layers on device", "dit resident part on device"} <= used
    frees = [op.buffer for op in streams.log if op.kind == "free"]
    assert frees.count("vlm slot 0") == 2 and frees.count("dit slot 0") == 2  # given back after each phase


def test_device_part_keeps_tied_weights_tied_and_stores_them_once():
    from lowmem.offload.device_part import DevicePart, host_copy_bytes

    embed, head = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16, bias=False)
    head.weight = embed.weight
    model = torch.nn.ModuleDict({"embed": embed, "head": head})
    expected = head(embed(torch.arange(4))).detach()
    streams = RecordingStreams()
    part = DevicePart([model], torch.device("cpu"), streams, "tied", evictable=True)
    assert part.arena.nbytes == host_copy_bytes([model]) == 16 * 8 * 4
    for _ in range(2):
        part.place()
        assert head.weight is embed.weight and head.weight.data_ptr() == part.on_device.tensor.data_ptr()
        assert torch.equal(head(embed(torch.arange(4))), expected)
        part.release()
        assert head.weight is embed.weight and head.weight.data_ptr() == part.arena.flat.data_ptr()
    part.close()
    assert_ordered(streams.log)


def test_a_failed_read_surfaces_on_the_compute_thread_and_nothing_hangs(tmp_path):
    dit, offloaded, streams = recorded(RINGS["wrapping ring of 3, depth 2"], "disk", tmp_path / "b")
    streamer = offloaded.streamer
    for p in (3, 4):  # block 3 is read while a forward waits for it, block 4 as a prefetch
        victim = streamer.store.path(streamer.streamed[p])
        victim.write_bytes(victim.read_bytes()[:100])  # truncated on disk
    with torch.inference_mode(), pytest.raises(OSError, match="ended after 100 of"):
        dit(*inputs(torch.float32))
    offloaded.close()  # block 4's failed prefetch is not needed any more: no second error
    assert streamer.reader._thread is None and streamer.slots is None and streamer.host_bytes() == 0


def test_an_unclosed_streamer_stops_its_reader_thread(tmp_path):
    import gc

    dit, offloaded, _ = recorded(RINGS["wrapping ring of 3, depth 2"], "disk", tmp_path / "b")
    run_steps(dit, torch.float32, steps=1)
    thread = offloaded.streamer.reader._thread
    assert thread.is_alive()
    del dit, offloaded
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("evictable", [False, True], ids=["placed", "evictable"])
@pytest.mark.parametrize("storage", ["pageable", "disk"])
def test_meta_device_runs_the_immediate_protocol_ordered(storage, evictable, tmp_path):
    """Compute on `meta` (the CPU-only checks' device): host images and staging on the CPU, slots
    and the placed resident part on `meta`, the evictable part never moved there before `place`."""
    dit = random_dit(torch.float32)
    plan = plan_for(dit, "256MB", 128, device="cpu", storage=storage, max_resident_blocks=1, slots=3, prefetch_depth=2)
    streams = RecordingStreams("meta", async_copies=False)
    offloaded = apply_plan(dit, plan, "meta", streams=streams, disk_dir=tmp_path / "b", evictable=evictable)
    resident = dit.double_blocks[offloaded.streamer.resident[0]]
    assert all(p.device.type == ("cpu" if evictable else "meta") for p in resident.parameters())
    offloaded.place()
    assert all(p.device.type == "meta" for p in resident.parameters())
    latents, t, text = (x.to("meta") for x in inputs(torch.float32))
    with torch.inference_mode():
        outputs = [dit(latents, t, text) for _ in range(3)]
    assert all(o.device.type == "meta" and o.shape == latents.shape[1:] for o in outputs)
    if evictable:
        offloaded.release()
    offloaded.close()
    assert_ordered(streams.log)
