"""Choosing the compute mode (`--compute auto`) and SpotEdit (`--spot auto`), and `lowmem plan`'s
per-mode table: preset rates, the per-op FLOP split, the per-mode time model."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lowmem.cli import main
from lowmem.errors import LowmemError
from lowmem.models.dit_config import FULL_DIT_CONFIG
from lowmem.offload import BudgetError
from lowmem.planning import compute_choice as choice
from lowmem.planning import load_preset, plan_for
from lowmem.planning import phase_peaks as peaks
from lowmem.planning import time_model as tm
from lowmem.planning.compute_choice import (
    CPU_INT8_MIN_WIDTH,
    SPOT_MIN_RESOLUTION,
    choose_compute,
    choose_spot,
)
from quantize.plan import default_skip, quantizable_linears

SMALL = replace(FULL_DIT_CONFIG, hidden_size=256, heads_num=2, mm_double_blocks_depth=3)


@pytest.fixture(scope="module")
def rtx4090():
    return load_preset("rtx4090-24gb")


@pytest.fixture(scope="module")
def spot_plan(rtx4090):
    return plan_for(FULL_DIT_CONFIG, preset=rtx4090, compute="int8")


def fake_capability(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


# -- the per-op FLOP split ------------------------------------------------------------------------
def linear_flops_of_bf16_trace(config, resolution, text, batch) -> tuple[int, int]:
    """(FLOPs of the Linears use_compute swaps, all FLOPs) of a bf16 forward, by module."""
    model = peaks.traced_dit(config, "bf16", torch.bfloat16, config.mm_double_blocks_depth)
    names = quantizable_linears(model, "dit", default_skip("dit"), "int8", "bnb")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        peaks.forward_call(model, resolution, text, batch)()
    counts = counter.get_flop_counts()
    linears = sum(sum(counts[f"SpatialEditDiT.{n}"].values()) for n in names)
    return linears, counter.get_total_flops()


def test_w8a8_gemm_flops_are_the_same_linears_flops_at_their_own_rate():
    # 64 text tokens: every GEMM's row count is a multiple of cuBLAS's alignment (nothing padded)
    linears, total = linear_flops_of_bf16_trace(SMALL, 256, 64, 2)
    assert 0.5 * total < linears < total  # the large Linears are most of a step, attention the rest
    bf16 = tm.dit_flops_by_mode(SMALL, 256, 64, 2)
    int8 = tm.dit_flops_by_mode(SMALL, 256, 64, 2, compute="int8")
    fp8 = tm.dit_flops_by_mode(SMALL, 256, 64, 2, compute="fp8")
    assert bf16 == {"bf16": total, "fp8": 0, "int8": 0}
    assert int8["fp8"] == fp8["int8"] == 0
    assert int8["int8"] == fp8["fp8"] == linears  # _int_mm / _scaled_mm: 2*M*K*N, as the bf16 mm of those Linears
    assert int8["bf16"] == fp8["bf16"] == total - linears  # attention, embedders, modulation, head
    assert tm.dit_flops(SMALL, 256, 64, 2, compute="int8") == total


def test_rows_padded_for_cublas_are_counted():
    """80 text rows: int8 pads them to 96 (cuBLAS computes those rows too), fp8 needs no pad at 16."""
    linears, _ = linear_flops_of_bf16_trace(SMALL, 256, 40, 2)
    int8 = tm.dit_flops_by_mode(SMALL, 256, 40, 2, compute="int8")["int8"]
    assert tm.dit_flops_by_mode(SMALL, 256, 40, 2, compute="fp8")["fp8"] == linears < int8 < 1.05 * linears


def test_a_spot_step_splits_its_flops_too():
    full = tm.dit_flops_by_mode(SMALL, 256, 64, 2, compute="int8")
    spot = tm.dit_flops_by_mode(SMALL, 256, 64, 2, 0.3, compute="int8")
    assert 0 < spot["int8"] < 0.5 * full["int8"] and 0 < spot["bf16"] < full["bf16"]
    bf16 = tm.dit_flops(SMALL, 256, 64, 2, 0.3)
    assert bf16 <= sum(spot.values()) < 1.02 * bf16  # the same FLOPs as in bf16, plus rows padded for cuBLAS


# -- the per-mode time model ----------------------------------------------------------------------
def test_predict_prices_each_mode_at_its_own_rate(spot_plan, rtx4090):
    rate = {"bf16": 165.2e12 * 0.6, "fp8": 330.3e12 * 0.6, "int8": 660.6e12 * 0.6}
    full = {}
    for mode in ("bf16", "fp8", "int8"):
        step = tm.predict(spot_plan, rtx4090, FULL_DIT_CONFIG, mode)[0]
        assert step.compute_s == pytest.approx(sum(n / rate[m] for m, n in step.flops_by_mode.items()))
        full[mode] = step.seconds
    assert full["int8"] < full["fp8"] < full["bf16"]
    assert full["bf16"] == pytest.approx(tm.dit_flops(FULL_DIT_CONFIG, 1024, spot_plan.text_tokens, 2) / rate["bf16"])
    # Attention stays at the bf16 rate: int8 is ~2.2x, not 4x, faster than bf16.
    assert 1.8 < full["bf16"] / full["int8"] < 2.6 and 1.4 < full["bf16"] / full["fp8"] < 1.7
    assert tm.predict(spot_plan, rtx4090, FULL_DIT_CONFIG)[0].seconds == full["int8"]  # the plan's own mode


def test_mode_times_cover_the_modes_each_preset_runs(spot_plan, rtx4090):
    rows = tm.mode_times(spot_plan, rtx4090, FULL_DIT_CONFIG)
    assert [r.mode for r in rows] == ["bf16", "fp8", "int8"]
    for r in rows:
        expected = tm.denoise_seconds(tm.predict(spot_plan, rtx4090, FULL_DIT_CONFIG, r.mode), 30)
        assert (r.full_steps, r.spot_steps, r.denoise_s) == pytest.approx(expected)
    assert rows[2].denoise_s < rows[1].denoise_s < rows[0].denoise_s
    rtx3090 = load_preset("rtx3090-24gb")
    assert [r.mode for r in tm.mode_times(spot_plan, rtx3090, FULL_DIT_CONFIG)] == ["bf16", "int8"]
    with pytest.raises(ValueError, match="no fp8 rate"):
        tm.predict(spot_plan, rtx3090, FULL_DIT_CONFIG, "fp8")
    assert tm.mode_times(spot_plan, load_preset("cpu-16gb"), FULL_DIT_CONFIG) == []


# -- choose_compute -------------------------------------------------------------------------------
@pytest.mark.parametrize("capability, mode", [
    ((7, 5), "bf16"),  # Turing: torch._int_mm has no int8 tensor-core path there
    ((8, 0), "int8"), ((8, 6), "int8"),
    ((8, 9), "int8"),  # Ada: int8 4x, fp8 2x
    ((9, 0), "int8"),  # Hopper: int8 = fp8, the tie goes to int8
    ((12, 0), "int8"),  # later cards: Hopper's speed-ups
])
def test_auto_picks_by_cuda_capability(monkeypatch, capability, mode):
    fake_capability(monkeypatch, capability)
    chosen, why = choose_compute("auto", torch.device("cuda"))
    assert chosen == mode, why


def test_the_capability_table_decides_ties_and_bf16_wins_over_no_speedup(monkeypatch):
    fake_capability(monkeypatch, (8, 9))
    monkeypatch.setitem(choice.CAPABILITY_SPEEDUP, (8, 9), {"fp8": 3.0, "int8": 2.0})
    assert choose_compute("auto", "cuda")[0] == "fp8"
    monkeypatch.setitem(choice.CAPABILITY_SPEEDUP, (8, 9), {"fp8": 2.0, "int8": 2.0})
    assert choose_compute("auto", "cuda")[0] == "int8"
    monkeypatch.setitem(choice.CAPABILITY_SPEEDUP, (8, 9), {"fp8": 1.0, "int8": 1.0})
    assert choose_compute("auto", "cuda")[0] == "bf16"


def test_auto_uses_a_presets_rates(monkeypatch, rtx4090):
    for name in ("rtx4090-24gb", "rtx3090-24gb", "a100-80gb", "h100-80gb"):
        assert choose_compute("auto", "meta", load_preset(name))[0] == "int8", name
    fast_fp8 = replace(rtx4090, fp8_tflops=700.0)
    mode, why = choose_compute("auto", "meta", fast_fp8)
    assert mode == "fp8" and "rtx4090-24gb" in why
    tie = replace(rtx4090, fp8_tflops=660.6)
    assert choose_compute("auto", "meta", tie)[0] == "int8"
    # A card that runs fewer modes than the preset names: only what both run is offered.
    fake_capability(monkeypatch, (8, 6))
    assert choose_compute("auto", "cuda", fast_fp8)[0] == "int8"


def test_auto_on_the_cpu_follows_the_dit_width_and_is_bf16_on_meta_without_figures(rtx4090):
    assert choose_compute("auto", "cpu")[0] == "bf16"  # width unknown: the dense GEMM
    assert choose_compute("auto", "cpu", width=64)[0] == "bf16"  # the tiny models: int8's per-call cost dominates
    assert CPU_INT8_MIN_WIDTH == 256
    mode, why = choose_compute("auto", "cpu", rtx4090, width=4096)  # the CPU's speed, not the preset's card
    assert mode == "int8" and "4096-wide" in why
    assert choose_compute("auto", "cpu", width=255)[0] == "bf16" and choose_compute("auto", "cpu", width=256)[0] == "int8"
    mode, why = choose_compute("auto", "meta")
    assert mode == "bf16" and "device figures" in why
    assert choose_compute("auto", "meta", load_preset("cpu-16gb"))[0] == "bf16"


def test_an_explicit_mode_the_device_does_not_run_is_refused(monkeypatch):
    fake_capability(monkeypatch, (8, 6))
    assert choose_compute("int8", "cuda") == ("int8", "int8, as asked")
    with pytest.raises(LowmemError, match=r"fp8 is not supported on cuda \(compute capability 8\.6\): it runs "
                                          r"bf16, int8; use --compute auto"):
        choose_compute("fp8", "cuda")
    with pytest.raises(LowmemError, match="as preset rtx3090-24gb: it runs bf16, int8"):
        choose_compute("fp8", "meta", load_preset("rtx3090-24gb"))
    monkeypatch.setattr(choice, "supported_modes", lambda device: ("bf16",))
    with pytest.raises(LowmemError, match="int8 is not supported on cpu: it runs bf16"):
        choose_compute("int8", "cpu")
    with pytest.raises(LowmemError, match="unknown compute mode"):
        choose_compute("fp4", "meta")


# -- choose_spot ----------------------------------------------------------------------------------
def test_spot_as_asked_and_auto_by_resolution_without_device_figures():
    assert choose_spot(True, 64) == (True, "SpotEdit on, as asked")
    assert choose_spot(False, 1024)[0] is False
    assert SPOT_MIN_RESOLUTION == 256
    assert [choose_spot("auto", r)[0] for r in (64, 128, 240, 256, 512, 1024)] == [False] * 3 + [True] * 3
    assert choose_spot("auto", 512, preset=load_preset("cpu-16gb"))[0] is True
    assert choose_spot("on", 64)[0] is True and choose_spot("off", 1024)[0] is False
    # On the CPU a GPU preset's figures do not apply: the resolution floor decides.
    on, why = choose_spot("auto", 128, preset=load_preset("rtx4090-24gb"), device="cpu")
    assert not on and "on the CPU" in why
    with pytest.raises(LowmemError, match="on, off or auto"):
        choose_spot("maybe", 512)


def test_spot_auto_follows_the_time_model_with_device_figures(rtx4090):
    on, why = choose_spot("auto", 1024, preset=rtx4090, compute="int8")
    with_s, without_s = map(float, re.search(r"([\d.]+) s with it and ([\d.]+) s without", why).groups())
    assert on and with_s < without_s, why
    assert without_s == pytest.approx(30 * tm.predict(plan_for(FULL_DIT_CONFIG, preset=rtx4090, spotedit=False,
                                                               compute="int8"), rtx4090, FULL_DIT_CONFIG)[0].seconds,
                                      abs=0.05)
    # A card 4 GB smaller, so the caches are kept on the host, and a host link so slow that fetching
    # them costs more than the steps SpotEdit saves.
    slow_link = replace(rtx4090, h2d_gbps=1.0, budget=rtx4090.budget - 4 * 10**9)
    on, why = choose_spot("auto", 1024, preset=slow_link, compute="int8")
    with_s, without_s = map(float, re.search(r"([\d.]+) s with it and ([\d.]+) s without", why).groups())
    assert not on and with_s > without_s, why
    # Under the token floor, off without asking the time model.
    on, why = choose_spot("auto", 128, preset=rtx4090, make_plan=lambda spot: pytest.fail("planned"))
    assert not on and "floor" in why

    def no_room(spot):
        if spot:
            raise BudgetError("the caches need 10 GB more")
        return plan_for(FULL_DIT_CONFIG, preset=rtx4090, spotedit=False)

    on, why = choose_spot("auto", 1024, preset=rtx4090, make_plan=no_room)
    assert not on and "do not fit" in why


# -- lowmem plan ----------------------------------------------------------------------------------
def mode_rows(out: str) -> dict[str, tuple[float, float, str]]:
    """{mode: (full step s, denoise s, mark)} from the per-mode table."""
    table = out[out.index("compute modes on"):]
    rows = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"(bf16|fp8|int8)\s+\S+ T(?:FL)?OP/s\s+([\d.]+) s\s+([\d.]+) s\s*(.*)", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), m.group(4))
    return rows


def test_cli_plan_prints_each_mode_and_the_one_auto_picks(capsys, spot_plan, rtx4090):
    assert main(["plan", "--preset", "rtx4090-24gb", "--spot"]) == 0
    out = capsys.readouterr().out
    rows = mode_rows(out)
    assert list(rows) == ["bf16", "fp8", "int8"]
    assert rows["int8"][1] < rows["fp8"][1] < rows["bf16"][1]
    assert rows["int8"][2] == "<- auto picks this" and rows["bf16"][2] == rows["fp8"][2] == ""
    expected = {r.mode: r for r in tm.mode_times(spot_plan, rtx4090, FULL_DIT_CONFIG)}
    for mode, (full, denoise, _) in rows.items():
        assert full == pytest.approx(expected[mode].full_step_s, abs=0.005)
        assert denoise == pytest.approx(expected[mode].denoise_s, abs=0.05)
    assert "DiT GEMMs in int8 (W8A8)" in out and "time model (rtx4090-24gb, DiT GEMMs in int8" in out
    assert "denoising 30 steps (5 full, 25 spot)" in out

    assert main(["plan", "--preset", "rtx4090-24gb", "--spot", "--compute", "bf16"]) == 0
    out = capsys.readouterr().out
    rows = mode_rows(out)
    assert rows["bf16"][2] == "<- this plan" and rows["int8"][2] == "<- auto picks this"
    assert "time model (rtx4090-24gb, DiT GEMMs in bf16" in out and "W8A8" not in out.split("\n")[0]


def test_cli_plan_json_carries_the_choice_and_every_mode(capsys):
    assert main(["plan", "--preset", "rtx3090-24gb", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["compute"] == "int8" and data["compute_choice"]["mode"] == "int8"
    modes = {m["mode"]: m for m in data["compute_modes"]}
    assert list(modes) == ["bf16", "int8"] and modes["int8"]["auto"] and modes["int8"]["chosen"]
    assert modes["int8"]["denoise_s"] < modes["bf16"]["denoise_s"]
    assert data["time_model"][0]["flops_by_mode"]["int8"] > 0


def test_cli_plan_refuses_a_mode_the_presets_card_does_not_run(capsys):
    assert main(["plan", "--preset", "rtx3090-24gb", "--compute", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "fp8 is not supported" in err and "--compute auto" in err and err.count("\n") == 1
