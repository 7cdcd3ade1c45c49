"""Planner, presets, budgets and `lowmem plan` on the full 16B config (built on meta: no memory)."""

from __future__ import annotations

import json

import pytest

from lowmem.cli import main
from lowmem.models.dit import build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, TINY_DIT_CONFIG
from lowmem.offload import BudgetError, Plan, parse_bytes
from lowmem.planning import PresetError, available_presets, load_preset, plan_for, spread
from lowmem.planning.presets import parse_preset


@pytest.fixture(scope="module")
def full_meta():
    return build_dit(FULL_DIT_CONFIG, device="meta")


def test_parse_bytes_units():
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1.5 gb") == 1_500_000_000
    assert parse_bytes(1234) == 1234


@pytest.mark.parametrize("bad", ["", "24", "GB", "24XB", "-3GB", "0GB", "twenty GB", "24 G B"])
def test_bad_budget_strings_raise_one_clear_error(bad):
    with pytest.raises(BudgetError, match="memory size"):  # "24" too: text needs a unit
        parse_bytes(bad)


def test_spread_is_even_and_not_the_first_n():
    assert spread(20, 40) == list(range(1, 40, 2))
    assert spread(0, 40) == [] and spread(40, 40) == list(range(40))
    picked = spread(10, 40)
    assert len(picked) == 10 and picked[0] > 0 and picked[-1] >= 36


def test_bf16_does_not_fit_resident_in_24gb_but_streams(full_meta):
    plan = plan_for(full_meta, "24GB", 1024, "bf16", False)
    assert plan.fits and plan.streams
    assert 0 < len(plan.dit.resident_blocks) < 40
    assert plan.dit.resident_blocks != list(range(len(plan.dit.resident_blocks)))  # interleaved, not the first N
    assert plan.vlm.placement == "run-then-evicted"
    with pytest.raises(BudgetError):  # forcing everything resident in bf16 cannot fit
        plan_for(full_meta, "24GB", 1024, "bf16", False, allow_streaming=False)
    all_resident_bytes = plan.dit.weight_bytes
    assert all_resident_bytes > 24e9


def test_quantized_fits_resident_in_24gb_and_bf16_in_80gb(full_meta):
    for q in ("nf4", "int8"):
        plan = plan_for(full_meta, "24GB", 1024, q, False)
        assert plan.fits and not plan.streams, q
    big = plan_for(full_meta, "80GB", 1024, "bf16", False)
    assert big.fits and not big.streams and big.vlm.placement == "resident" and not big.vae.tiled


def test_parameter_count_and_bytes_per_precision(full_meta):
    bf16 = plan_for(full_meta, "80GB", 1024, "bf16").dit.weight_bytes
    nf4 = plan_for(full_meta, "80GB", 1024, "nf4").dit.weight_bytes
    int8 = plan_for(full_meta, "80GB", 1024, "int8").dit.weight_bytes
    assert 30e9 < bf16 < 34e9
    assert 0.49 < int8 / bf16 < 0.53
    assert 0.26 < nf4 / bf16 < 0.30


def test_budget_below_minimum_is_one_error_naming_fixes(full_meta):
    # A budget between the least that nf4 needs and the least that bf16 needs: nf4 is the fix.
    def least(q: str) -> float:
        with pytest.raises(BudgetError) as refused:
            plan_for(full_meta, "1GB", 1024, q)
        return float(str(refused.value).rsplit("at least ", 1)[1].split(" GB")[0])

    nf4, bf16 = least("nf4"), least("bf16")
    assert nf4 < bf16
    with pytest.raises(BudgetError) as info:
        plan_for(full_meta, f"{(nf4 + bf16) / 2:.2f}GB", 1024, "bf16")
    text = str(info.value)
    assert "budget of at least" in text and "--quantization nf4" in text
    with pytest.raises(BudgetError, match="budget of at least"):
        plan_for(full_meta, "1GB", 1024, "nf4")


def test_plan_roundtrips_through_json(full_meta):
    plan = plan_for(full_meta, "24GB", 1024, "bf16", True)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["dit"]["streamed_blocks"] == plan.dit.streamed_blocks
    assert "spotedit caches" in plan.estimate.phases["denoise"]


def test_estimate_grows_with_resolution_and_tiles_vae_when_short(full_meta):
    small = plan_for(full_meta, "80GB", 512, "nf4")
    large = plan_for(full_meta, "80GB", 1024, "nf4")
    assert small.estimate.phases["denoise"]["dit activations"] < large.estimate.phases["denoise"]["dit activations"]
    tight = plan_for(full_meta, "24GB", 1024, "bf16")
    assert tight.vae.tiled and tight.vae.tile < 1024


def test_presets_load_and_validate():
    names = available_presets()
    for required in ("rtx4090-24gb", "rtx3090-24gb", "a100-80gb", "h100-80gb", "cpu-16gb"):
        assert required in names
    for name in names:
        preset = load_preset(name)
        plan = plan_for(TINY_DIT_CONFIG, preset=preset)  # every preset plans (the tiny model always fits)
        assert plan.preset == name
        full = plan_for(FULL_DIT_CONFIG, preset=name)
        assert full.fits


def test_bad_presets_give_clear_errors(tmp_path):
    with pytest.raises(PresetError, match="unknown preset"):
        load_preset("no-such-card")
    bad = tmp_path / "x.toml"
    bad.write_text('description = "x"\ndevice = "cuda"\nbudget = "24GB"\nbudgett = 3\n')
    with pytest.raises(PresetError, match="unknown key.*budgett"):
        parse_preset(bad)
    bad.write_text('description = "x"\ndevice = "tpu"\nbudget = "24GB"\n')
    with pytest.raises(PresetError, match="device"):
        parse_preset(bad)
    bad.write_text('description = "x"\ndevice = "cuda"\nbudget = "lots"\n')
    with pytest.raises(PresetError, match="memory size"):
        parse_preset(bad)
    bad.write_text('description = "x"\ndevice = "cuda"\nbudget = "24GB"\nquantization = "fp4"\n')
    with pytest.raises(PresetError, match="quantization"):
        parse_preset(bad)


def test_cli_plan_prints_tables_for_24_and_80_gb(capsys):
    assert main(["plan", "--budget", "24GB", "--resolution", "1024", "--quantization", "bf16", "--no-spot"]) == 0
    out24 = capsys.readouterr().out
    assert "streamed" in out24 and "fits" in out24 and "resident blocks:" in out24
    assert main(["plan", "--budget", "80GB", "--resolution", "1024"]) == 0
    out80 = capsys.readouterr().out
    assert "40/40 blocks resident" in out80 and "streaming:" not in out80
    assert main(["plan", "--preset", "rtx4090-24gb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dit"]["precision"] == "nf4"
    assert main(["plan", "--preset", "rtx4090-24gb", "--guidance", "1"]) == 0
    out = capsys.readouterr().out
    assert "batch 1 (no guidance)" in out and "traced on meta" in out and "vae decode, untiled" in out


def test_a_plan_records_its_compute_mode_and_reads_plans_written_before_it(full_meta):
    plan = plan_for(full_meta, "80GB", 1024, "bf16", False, compute="int8")
    assert plan.compute == "int8" and plan.to_dict()["compute"] == "int8"
    assert Plan.from_json(plan.to_json()).compute == "int8"
    assert plan.summary().startswith("dit bf16 (int8 GEMMs) 40/40 blocks resident")
    assert "DiT GEMMs in int8 (W8A8)" in plan.format_table().splitlines()[0]
    old = json.loads(plan.to_json())
    del old["compute"]  # a plan written before compute modes
    again = Plan.from_dict(old)
    assert again.compute == "bf16" and again.summary().startswith("dit bf16 40/40")
    assert "W8A8" not in again.format_table()


def test_cli_plan_bad_input_is_one_line(capsys):
    with pytest.raises(SystemExit) as refused:  # read with the arguments, before anything is traced
        main(["plan", "--budget", "24XB"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "cannot read memory size" in err and err.count("\n") == 1
    assert main(["plan", "--budget", "3GB", "--quantization", "bf16"]) == 2
    assert "budget of at least" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--preset", "nope"])
    assert "available:" in capsys.readouterr().err


def test_a_resident_conditioner_is_counted_in_every_phase(full_meta):
    plan = plan_for(full_meta, "80GB", 1024, "bf16", False, device="cuda")
    assert plan.vlm.placement == "resident"
    for phase, items in plan.estimate.phases.items():
        assert items.get("vlm weights") == plan.vlm.weight_bytes, phase
    assert plan.estimate.peak <= plan.budget
    # 24 GB: evicted after the prompt, so only the prompt phase holds it
    small = plan_for(full_meta, "24GB", 1024, "nf4", True, device="cuda")
    assert small.vlm.placement == "run-then-evicted"
    assert [p for p, items in small.estimate.phases.items() if "vlm weights" in items] == ["encode prompt"]


def test_the_conditioner_is_planned_in_the_runs_quantization(full_meta):
    bf16 = plan_for(full_meta, "80GB", 1024, "bf16", False, device="cuda").vlm
    nf4 = plan_for(full_meta, "80GB", 1024, "nf4", False, device="cuda").vlm
    int8 = plan_for(full_meta, "80GB", 1024, "int8", False, device="cuda").vlm
    assert (bf16.precision, int8.precision, nf4.precision) == ("bf16", "int8", "nf4")
    assert nf4.weight_bytes < int8.weight_bytes < bf16.weight_bytes
    assert 7e9 < nf4.weight_bytes < 8e9 and 17e9 < bf16.weight_bytes < 18e9


def test_host_placed_spotedit_caches_count_their_pinned_arena():
    """A plan that puts SpotEdit's caches on the host names the pinned arena they live in."""
    from lowmem.models.dit_config import FULL_DIT_CONFIG
    from lowmem.offload.arena import arena_bytes

    plan = plan_for(FULL_DIT_CONFIG, "24GB", 1024, quantization="bf16", spotedit=True, device="cuda")
    assert plan.spotedit.cache_placement == "host"
    per_block = plan.spotedit.cache_bytes // plan.dit.num_blocks
    assert plan.spotedit.pinned_host_bytes == arena_bytes([per_block] * plan.dit.num_blocks) > 0
    assert "pinned arena" in plan.format_table()
    assert Plan.from_json(plan.to_json()).spotedit == plan.spotedit


def test_pinned_host_ram_counts_every_pinned_copy():
    """On a GPU the plan names every page-locked host byte: the streamed blocks' arena, the host copies
    of parts evicted between uses (DiT device part, conditioner) and host-placed SpotEdit caches; it
    warns when they exceed the host RAM it was given. Nothing is pinned when computing on the CPU."""
    from lowmem.models.dit_config import FULL_DIT_CONFIG
    from lowmem.offload.arena import arena_bytes

    plan = plan_for(FULL_DIT_CONFIG, "24GB", 1024, quantization="bf16", spotedit=True, device="cuda")
    pinned = plan.pinned_host
    assert set(pinned) == {"dit streamed blocks", "dit device part copy", "vlm copy", "spotedit caches"}
    d = plan.dit
    assert pinned["dit streamed blocks"] == arena_bytes([d.block_bytes] * len(d.streamed_blocks))
    assert pinned["dit device part copy"] == arena_bytes([d.other_bytes] + [d.block_bytes] * len(d.resident_blocks))
    assert pinned["vlm copy"] == arena_bytes([plan.vlm.weight_bytes])
    assert "pinned host RAM" in plan.format_table()
    small_host = plan_for(FULL_DIT_CONFIG, "24GB", 1024, quantization="bf16", spotedit=True, device="cuda", host_ram="48GB")
    assert any("pins" in note and "host RAM" in note for note in small_host.notes)
    assert plan_for(FULL_DIT_CONFIG, "24GB", 1024, quantization="bf16", device="cpu").pinned_host == {}


def test_spotedit_plans_count_what_the_selector_keeps():
    """The selector's stage copy and the condition's features stay on the device through denoising:
    the plan counts them as traced from a real SpotSelector on `meta`."""
    import torch

    from lowmem.models.dit_config import FULL_DIT_CONFIG
    from lowmem.models.vae import FULL_VAE_CONFIG
    from lowmem.planning import phase_peaks as peaks

    plan = plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb")
    kept = plan.estimate.phases["denoise"]["spotedit selector state"]
    assert kept == peaks.selector_state(peaks.vae_config_key(FULL_VAE_CONFIG), 1024, torch.bfloat16)
    assert 80 * 2**20 < kept < 200 * 2**20  # ~30 MB of bf16 stages + ~100 MB of float32 features at 1024²
