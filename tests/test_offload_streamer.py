"""Streamed output is bit-identical to resident output; the ledger stays within the plan's budget."""

from __future__ import annotations

import copy

import pytest
import torch

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.offload import MemoryLedger, apply_plan
from lowmem.planning import plan_for

SIX_BLOCKS = DiTConfig(hidden_size=64, heads_num=2, mm_double_blocks_depth=6, text_states_dim=64, rope_dim_list=(8, 12, 12))
PLANS = {
    "all resident": dict(),
    "half": dict(max_resident_blocks=3),
    "one slot": dict(max_resident_blocks=0, slots=1, prefetch_depth=0),
    "ring of 3, depth 2": dict(max_resident_blocks=1, slots=3, prefetch_depth=2),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny forwards: OpenMP spin-waiting on a shared machine costs 100x more than the math."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_dit(dtype: torch.dtype, config: DiTConfig = SIX_BLOCKS, seed: int = 0):
    torch.manual_seed(seed)
    dit = build_dit(config, device="cpu", dtype=torch.float32)
    for p in dit.parameters():
        p.data.normal_(0, 0.05)
    return dit.to(dtype)


def inputs(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 2, 16, 1, 8, 8, generator=g).to(dtype)
    return latents, torch.tensor([700.0, 700.0]), torch.randn(2, 5, 64, generator=g).to(dtype)


def run_steps(dit, dtype, steps=3):
    latents, t, text = inputs(dtype)
    with torch.inference_mode():
        return [dit(latents, t * (1 - s / 10), text) for s in range(steps)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("storage", ["pageable", "disk"])
@pytest.mark.parametrize("name", list(PLANS))
def test_streamed_equals_resident_bitwise(dtype, storage, name, tmp_path):
    reference = random_dit(dtype)
    expected = run_steps(reference, dtype)
    dit = copy.deepcopy(reference)
    plan = plan_for(dit, "256MB", 128, device="cpu", storage=storage, **PLANS[name])
    ledger = MemoryLedger(plan.budget)
    offloaded = apply_plan(dit, plan, "cpu", ledger=ledger, disk_dir=tmp_path / "blocks")
    ledger.place("activations (estimate)", plan.estimate.phases["denoise"]["dit activations"])
    got = run_steps(dit, dtype)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    stats = offloaded.stats()
    streamed = len(plan.dit.streamed_blocks)
    assert stats["streamed_blocks"] == streamed
    if streamed:
        assert stats["bytes_streamed"] >= 3 * streamed * plan.dit.block_bytes * 0.9 or offloaded.streamer.static
    else:
        assert stats["bytes_streamed"] == 0 and stats["slots"] == 0
    assert not ledger.over_budget and ledger.peak <= plan.budget
    offloaded.close()


def test_parked_blocks_hold_no_memory():
    dit = random_dit(torch.float32)
    plan = plan_for(dit, "256MB", 128, device="cpu", storage="pageable", max_resident_blocks=2)
    apply_plan(dit, plan, "cpu")
    for i in plan.dit.streamed_blocks:
        for p in dit.double_blocks[i].parameters():
            assert p.stride() == (0,) * p.dim()  # a zero-stride view of one element
    for i in plan.dit.resident_blocks:
        assert all(p.stride() != (0,) * p.dim() or p.numel() <= 1 for p in dit.double_blocks[i].parameters())


def test_interrupted_forward_recovers():
    reference = random_dit(torch.float32)
    expected = run_steps(reference, torch.float32, steps=1)[0]
    dit = copy.deepcopy(reference)
    offloaded = apply_plan(dit, plan_for(dit, "256MB", 128, device="cpu", max_resident_blocks=1, slots=2), "cpu")
    offloaded.streamer.k = 1  # as if a forward had stopped after one streamed block
    latents, t, text = inputs(torch.float32)
    with torch.inference_mode():
        assert torch.equal(dit(latents, t, text), expected)


def _quantize_blocks(dit, scheme):
    linear_mod = pytest.importorskip("quantize.linear", reason="quantize/ has no QuantizedLinear yet")
    schemes = pytest.importorskip("quantize.schemes")
    for block in dit.double_blocks:
        for name, module in list(block.named_modules()):
            if type(module) is torch.nn.Linear:
                backend = schemes.check_scheme(scheme, None)
                if not schemes.supports((module.out_features, module.in_features), scheme, backend):
                    continue
                parent_name, _, leaf = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, leaf, linear_mod.QuantizedLinear.from_linear(module, scheme))
    return dit


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_quantized_blocks_stream_in_quantized_form_bitwise(scheme, tmp_path):
    try:
        reference = _quantize_blocks(random_dit(torch.bfloat16), scheme)
    except (ImportError, RuntimeError, ValueError) as exc:  # backend missing on this machine
        pytest.skip(f"quantize cannot build {scheme} blocks here: {exc}")
    packed = [t for t in reference.double_blocks[0].buffers() if not t.is_floating_point()]
    assert packed, "expected packed integer tensors in a quantized block"
    expected = run_steps(reference, torch.bfloat16, steps=2)
    for kw in (dict(max_resident_blocks=3), dict(max_resident_blocks=0, slots=1, prefetch_depth=0)):
        dit = copy.deepcopy(reference)
        plan = plan_for(dit, "256MB", 128, device="cpu", storage="disk", **kw)
        assert plan.dit.precision == scheme
        offloaded = apply_plan(dit, plan, "cpu", disk_dir=tmp_path / str(len(plan.dit.resident_blocks)))
        bf16_block = sum(p.numel() for p in random_dit(torch.bfloat16).double_blocks[0].parameters()) * 2
        assert offloaded.streamer.slot_bytes < bf16_block  # the quantized bytes travel, not bf16
        assert all(torch.equal(a, b) for a, b in zip(run_steps(dit, torch.bfloat16, steps=2), expected))
        offloaded.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("storage", ["pinned", "disk"])
def test_cuda_streaming_is_event_ordered_and_bitwise(storage, tmp_path):
    from lowmem.offload.streamer import pinned_bytes
    from lowmem.offload.streams import COPY

    reference = random_dit(torch.bfloat16).cuda()
    latents, t, text = (x.cuda() for x in inputs(torch.bfloat16))
    with torch.inference_mode():
        expected = [reference(latents, t, text) for _ in range(3)]
    for name, kw in PLANS.items():
        dit = random_dit(torch.bfloat16)  # host copy, same seed
        plan = plan_for(dit, "8GB", 128, device="cuda", storage=storage, **kw)
        offloaded = apply_plan(dit, plan, "cuda", disk_dir=tmp_path / name.replace(" ", "-"))
        streamer = offloaded.streamer
        if streamer.streamed:
            sizes = [streamer.layouts[i].nbytes for i in streamer.streamed]
            assert streamer.host_bytes() == pinned_bytes(sizes, storage, streamer.num_slots)  # exactly, one arena
            arena = streamer.store.arena if storage == "pinned" else streamer.staging_arena
            assert arena.pinned and arena.flat.is_pinned()
        with torch.inference_mode():
            assert torch.equal(dit(latents, t, text), expected[0]), name  # the first forward allocates the slots
        torch.cuda.synchronize()
        slot_ptrs = [s.tensor.data_ptr() for s in streamer.slots] if streamer.streamed else []
        allocated = torch.cuda.memory_allocated()
        with torch.inference_mode():
            # A slow side stream must not let compute read a slot early: delay the copy stream.
            if streamer.streamed:
                with torch.cuda.stream(streamer.streams.stream(COPY)):
                    torch.cuda._sleep(50_000_000)
            got = [dit(latents, t, text) for _ in range(2)]
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(got, expected[1:])), name
        del got
        if streamer.streamed:
            assert [s.tensor.data_ptr() for s in streamer.slots] == slot_ptrs  # the ring never reallocates
        assert torch.cuda.memory_allocated() == allocated  # no weight memory left behind
        offloaded.close()
        assert streamer.slots is None and streamer.host_bytes() == 0
        if streamer.streamed:  # the slots are given back (the allocator rounds each up a little)
            assert allocated - torch.cuda.memory_allocated() >= streamer.num_slots * streamer.slot_bytes


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_evictable_dit_places_and_releases_without_copying_back():
    reference = random_dit(torch.bfloat16).cuda()
    latents, t, text = (x.cuda() for x in inputs(torch.bfloat16))
    with torch.inference_mode():
        expected = reference(latents, t, text)
    dit = random_dit(torch.bfloat16)
    plan = plan_for(dit, "8GB", 128, device="cuda", storage="pinned", **PLANS["ring of 3, depth 2"])
    offloaded = apply_plan(dit, plan, "cuda", evictable=True)
    assert offloaded.part.arena.flat.is_pinned()
    after_release = []
    for _ in range(3):
        offloaded.place()
        assert all(p.is_cuda for m in offloaded.part.modules for p in m.parameters())
        with torch.inference_mode():
            assert torch.equal(dit(latents, t, text), expected)
        torch.cuda.synchronize()
        placed = torch.cuda.memory_allocated()
        offloaded.release()
        assert all(not p.is_cuda and p.is_pinned() for m in offloaded.part.modules for p in m.parameters())
        torch.cuda.synchronize()
        after_release.append(torch.cuda.memory_allocated())
        # the resident part and the slots are given back
        assert placed - after_release[-1] >= offloaded.part.nbytes + streamer_slot_bytes(offloaded)
    assert after_release[1:] == after_release[:-1]  # nothing accumulates across cycles
    offloaded.close()


def streamer_slot_bytes(offloaded) -> int:
    return offloaded.streamer.num_slots * offloaded.streamer.slot_bytes
