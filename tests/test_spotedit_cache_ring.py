"""SpotEdit's host-placed K/V caches: a pinned arena moved through a ring of device slots.

Every scenario runs the real DiT forwards (record steps, spot steps, reset steps, several edits in a
row, ring sizes 1..blocks, every prefetch depth) through the recording stand-in of the stream
protocol and replays the log through the happens-before checker; the numbers must be bit-identical
to caches kept on the device, and a spot step writes back the target part only."""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import pytest
import torch

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import TINY_DIT_CONFIG
from lowmem.offload.stream_check import assert_ordered, check
from lowmem.offload.streams import RecordingStreams, Streams
from lowmem.spotedit import DiTSpotModel, SpotConfig, SpotKVCache, fusion_alpha, spot_denoise
from lowmem.spotedit.cache_ring import LOAD, WRITEBACK

BLOCKS = 4
CFG = replace(TINY_DIT_CONFIG, mm_double_blocks_depth=BLOCKS)
N = 16  # target tokens of an 8x8 latent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These forwards are tiny: with several threads on a shared machine, spinning costs 40x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    model = build_dit(CFG, device="cpu", dtype=torch.float32)
    for name, p in model.named_parameters():  # the default init leaves modulation at zero: make it matter
        if name.endswith("modulate_table"):
            p.data.normal_(std=0.1)
    return model


def inputs(seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 2, 16, 1, 8, 8, generator=g).expand(2, -1, -1, -1, -1, -1).contiguous()
    text = torch.randn(2, 5, CFG.text_states_dim, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return latents.to(device, dtype), text.to(device, dtype), mask.to(device)


ACTIVE = torch.tensor([0, 3, 4, 9, 10, 15])
# One edit: record, spot (6 active tokens), spot (1 active), reset (record), spot (all active: nothing fused).
SCHEDULE = [None, ACTIVE, torch.tensor([5]), None, torch.arange(N)]


def run_edits(spot: DiTSpotModel, cache: SpotKVCache, edits: int = 2, device: str = "cpu",
              dtype: torch.dtype = torch.float32, keep_host: bool = False) -> list[torch.Tensor]:
    """`edits` edits in a row on one cache; the outputs of every forward and the caches after each."""
    outs = []
    for edit in range(edits):
        latents, text, mask = inputs(edit, device, dtype)
        for step, active in enumerate(SCHEDULE):
            t = torch.tensor([900.0 - 150 * step] * 2, device=device)
            if active is None:
                outs.append(spot.full(latents, t, text, mask, cache))
            else:
                alpha = fusion_alpha(float(t[0]) / 1000)
                outs.append(spot.partial(latents, t, text, mask, active.to(device), cache, alpha))
        outs += [cache.view(i).to("cpu", copy=True) for i in range(BLOCKS)]
        cache.release(keep_host=keep_host)
    return outs


@pytest.fixture(scope="module")
def device_placed(dit):
    return run_edits(DiTSpotModel(dit), SpotKVCache(BLOCKS))


# From one slot to one per block, each loading nothing ahead or as far ahead as the ring allows.
RINGS = sorted({(slots, prefetch) for slots in range(1, BLOCKS + 1) for prefetch in (0, slots - 1)})


@pytest.mark.parametrize("slots, prefetch", RINGS)
def test_host_ring_is_ordered_and_bit_identical_to_device_caches(dit, device_placed, slots, prefetch):
    streams = RecordingStreams()
    cache = SpotKVCache(BLOCKS, placement="host", slots=slots, prefetch=prefetch, streams=streams)
    outs = run_edits(DiTSpotModel(dit), cache)
    assert_ordered(streams.log)
    assert all(torch.equal(a, b) for a, b in zip(outs, device_placed))
    copies = [op for op in streams.log if op.kind == "copy"]
    loads = [op for op in copies if op.stream != WRITEBACK]
    # 2 edits x 3 spot steps load every block; 2 edits x 5 steps write every block back
    assert len(loads) == 2 * 3 * BLOCKS and len(copies) - len(loads) == 2 * 5 * BLOCKS


def test_spot_step_writes_back_the_target_part_only(dit):
    latents, text, mask = inputs(0)
    t = torch.tensor([600.0, 600.0])
    cache = SpotKVCache(BLOCKS, placement="host", streams=RecordingStreams())
    spot = DiTSpotModel(dit)
    spot.full(latents, t, text, mask, cache)
    block = 2 * N * 2 * 2 * CFG.hidden_size * 4  # (target + condition) x K,V x batch 2 x hidden x fp32
    assert cache.nbytes == BLOCKS * block and cache.bytes_written_back == BLOCKS * block and cache.bytes_loaded == 0
    before = [cache.view(i).clone() for i in range(BLOCKS)]
    spot.partial(latents, t, text, mask, ACTIVE, cache, fusion_alpha(0.6))
    assert cache.bytes_loaded == BLOCKS * block
    assert cache.bytes_written_back - BLOCKS * block == BLOCKS * block // 2  # the target part: half the block
    for i in range(BLOCKS):
        after = cache.view(i)
        assert torch.equal(after[:, :, N:], before[i][:, :, N:])  # the condition part was not touched
        assert not torch.equal(after[:, :, :N], before[i][:, :, :N])


def test_full_step_recording_leaves_through_the_writeback_stream_after_its_compute(dit):
    streams = RecordingStreams()
    cache = SpotKVCache(BLOCKS, placement="host", slots=2, streams=streams)
    latents, text, mask = inputs(0)
    DiTSpotModel(dit).full(latents, torch.tensor([500.0, 500.0]), text, mask, cache)
    log = streams.log
    for i in range(BLOCKS):
        copy = next(k for k, op in enumerate(log) if op.kind == "copy" and op.buffer == f"spot cache host {i}")
        assert log[copy].stream == WRITEBACK and log[copy].src == f"spot cache slot {i % 2}"
        wait = log[copy - 1]  # the writeback waits for the compute that filled the slot
        assert wait.kind == "wait" and wait.stream == WRITEBACK and wait.event.name == f"spot slot filled {i % 2}"
    assert_ordered(log)


class DroppedWait(RecordingStreams):
    """The recording stand-in with the waits on one kind of event left out."""

    def __init__(self, event_prefix: str, stream: str):
        super().__init__()
        self.event_prefix, self.stream = event_prefix, stream

    def wait(self, event, stream="compute"):
        if not (event.name.startswith(self.event_prefix) and stream == self.stream):
            super().wait(event, stream)


def races(problems: list[str]) -> list[tuple[str, str]]:
    """(offending operation, the one it races with) of each race the checker reports, e.g.
    ("use spot cache slot 0 [spot kv 0 v1] on compute", "copy spot cache slot 0 [...] on copy")."""
    found = (re.match(r"#\d+ (.*) \(issued by .*\) races with #\d+ (.*) \(issued by", p) for p in problems)
    return [m.groups() for m in found if m]


@pytest.mark.parametrize("prefix, stream, offender, other", [
    ("spot slot loaded", "compute", "use spot cache slot", "copy spot cache slot"),  # compute before its load landed
    ("spot slot released", LOAD, "copy spot cache slot", "use spot cache slot"),  # a load over a slot compute reads
    ("spot slot filled", WRITEBACK, "copy spot cache host", "use spot cache slot"),  # writeback before the fill
    ("spot host stored", LOAD, "copy spot cache slot", "copy spot cache host"),  # load over a slot being written back
    ("spot host stored", "compute", "use spot cache slot", "copy spot cache host"),  # staging over it, likewise
])
def test_dropping_any_cache_wait_is_caught(dit, prefix, stream, offender, other):
    streams = DroppedWait(prefix, stream)
    cache = SpotKVCache(BLOCKS, placement="host", slots=2, prefetch=1, streams=streams)
    run_edits(DiTSpotModel(dit), cache)
    found = races(check(streams.log))
    assert any(a.startswith(offender) and b.startswith(other) for a, b in found), found


def test_an_interrupted_spot_step_leaves_the_ring_usable(dit, device_placed):
    streams = RecordingStreams()
    cache = SpotKVCache(BLOCKS, placement="host", slots=2, prefetch=1, streams=streams)
    spot = DiTSpotModel(dit)
    latents, text, mask = inputs(0)
    t = torch.tensor([600.0, 600.0])
    spot.full(latents, t, text, mask, cache)

    def stop_after_two(blocks, img, txt, ctx):
        for index in range(2):
            img, txt = blocks[index](img, txt, ctx, index)
        raise KeyboardInterrupt

    runner, dit.block_runner = dit.block_runner, stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            spot.partial(latents, t, text, mask, torch.tensor([5]), cache, alpha=None)  # no fusion: the caches stay valid
    finally:
        dit.block_runner = runner
    spot.partial(latents, t, text, mask, ACTIVE, cache, fusion_alpha(0.6))
    cache.release()
    assert_ordered(streams.log)


def test_a_kept_host_arena_serves_edit_after_edit(dit, device_placed, cache_arenas):
    """A pipeline pins its host caches' arena once: after each edit only the device slots go back,
    and the next edit reuses the arena with the same numbers and an ordered log."""
    arenas = cache_arenas
    streams = RecordingStreams()
    cache = SpotKVCache(BLOCKS, placement="host", slots=2, prefetch=1, streams=streams)
    outs = run_edits(DiTSpotModel(dit), cache, keep_host=True)
    assert all(torch.equal(a, b) for a, b in zip(outs, device_placed))
    assert_ordered(streams.log)
    assert len(arenas) == 1 and arenas[0].nbytes > 0, "the arena was made again, or not kept"
    slots = [op for op in streams.log if op.kind in ("allocate", "free") and op.buffer.startswith("spot cache slot")]
    assert [op.kind for op in slots] == ["allocate"] * 2 + ["free"] * 2 + ["allocate"] * 2 + ["free"] * 2
    cache.release()
    assert arenas[0].nbytes == 0


class HostCached(DiTSpotModel):
    """The DiT with its SpotEdit caches forced onto the host ring, on recording streams."""

    def __init__(self, dit, streams: Streams):
        super().__init__(dit)
        self.streams = streams

    def new_cache(self, device=None) -> SpotKVCache:
        return SpotKVCache(BLOCKS, placement="host", slots=3, prefetch=2, streams=self.streams)


def test_spot_denoise_with_host_caches_equals_device_caches(dit, tiny_pipeline):
    """The whole loop (initial, spot and reset steps) with the caches on the host, through the ring."""
    condition = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    _, text, mask = inputs(5)
    config = SpotConfig(threshold="auto", dilation=0, initial_steps=2, reset_steps=(5,), reference_steps=None)

    def denoise(model):
        return spot_denoise(model, tiny_pipeline.vae, condition, text, mask, 8, 4.0, torch.Generator().manual_seed(0),
                            config, torch.device("cpu"), torch.float32, progress=False)

    streams = RecordingStreams()
    on_host, host_outcome = denoise(HostCached(dit, streams))
    on_device, device_outcome = denoise(DiTSpotModel(dit))
    assert torch.equal(on_host, on_device)
    assert host_outcome.active_fraction == device_outcome.active_fraction and min(host_outcome.active_fraction) < 1.0
    assert host_outcome.cache_bytes_moved > 0 and device_outcome.cache_bytes_moved == 0
    assert_ordered(streams.log)
    assert any(op.kind == "free" for op in streams.log)  # the slots went back after the edit


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("slots, prefetch", [(1, 0), (2, 1), (3, 2)])
def test_host_ring_on_cuda_is_bit_identical_to_device_caches(dit, slots, prefetch):
    """Real CUDA streams and events, a page-locked arena, bf16: the same numbers as caches on the GPU."""
    model = copy.deepcopy(dit).to("cuda", torch.bfloat16)
    spot = DiTSpotModel(model)
    on_device = run_edits(spot, spot.new_cache(), device="cuda", dtype=torch.bfloat16)
    cache = spot.new_cache("cpu", slots=slots, prefetch=prefetch)
    on_host = run_edits(spot, cache, device="cuda", dtype=torch.bfloat16)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(on_host, on_device))


@pytest.mark.parametrize("resident, slots, depth", [(1, 2, 1), (0, 1, 0), (2, 2, 0)])
def test_streamed_weights_and_host_caches_share_one_ordered_protocol(dit, device_placed, resident, slots, depth):
    """The DiT's blocks stream through the weight ring while their caches move through the cache
    ring, on one Streams object (the caches with copy streams of their own): one log, checked as a
    whole, and the numbers of resident weights with caches on the device."""
    from lowmem.offload import apply_plan
    from lowmem.planning import plan_for

    model = copy.deepcopy(dit)
    plan = plan_for(model, "256MB", 128, device="cpu", storage="pageable", max_resident_blocks=resident, slots=slots,
                    prefetch_depth=depth)
    streams = RecordingStreams()
    offloaded = apply_plan(model, plan, "cpu", streams=streams)
    assert len(offloaded.streamer.streamed) == BLOCKS - resident
    spot = DiTSpotModel(model)
    cache = spot.new_cache(placement="host", slots=2, prefetch=1)
    assert cache.streams is streams  # the cache ring rides the weight ring's streams
    outs = run_edits(spot, cache)
    offloaded.close()
    assert all(torch.equal(a, b) for a, b in zip(outs, device_placed))
    assert_ordered(streams.log)
    loads = {(op.stream, op.buffer.rsplit(" ", 1)[0]) for op in streams.log if op.kind == "copy" and "slot" in op.buffer}
    assert loads == {("copy", "dit slot"), (LOAD, "spot cache slot")}  # a cache load never queues behind weights


def test_host_placed_caches_run_on_meta():
    """A meta-device edit of a plan with host caches: the ring's slots are meta, the arena is host
    memory, the writebacks carry no data, and every shape flows."""
    model = build_dit(CFG, device="meta", dtype=torch.bfloat16)
    spot = DiTSpotModel(model)
    cache = spot.new_cache("cpu")  # where the plan puts caches that do not fit on the device
    latents = torch.empty(2, 2, 16, 1, 8, 8, device="meta", dtype=torch.bfloat16)
    t, text = torch.empty(2, device="meta"), torch.empty(2, 5, CFG.text_states_dim, device="meta", dtype=torch.bfloat16)
    assert spot.full(latents, t, text, None, cache).is_meta and cache.ring is not None
    assert spot.partial(latents, t, text, None, torch.tensor([1, 2]), cache, fusion_alpha(0.5)).is_meta
    assert cache.bytes_written_back == BLOCKS * cache.ring.block_bytes * 3 // 2
    cache.release()


@pytest.mark.parametrize("kwargs, message", [
    (dict(placement="gpu"), "placement is 'device' or 'host'"),
    (dict(slots=0), "slots >= 1"),
    (dict(slots=2, prefetch=2), "prefetch <= slots - 1"),
])
def test_bad_ring_settings_are_refused_up_front(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SpotKVCache(BLOCKS, **kwargs)
