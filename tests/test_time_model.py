"""The time model: FLOPs counted on meta, bytes streamed from the plan, times from preset figures."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lowmem.cli import main
from lowmem.models.dit_config import FULL_DIT_CONFIG
from lowmem.planning import PresetError, load_preset, plan_for
from lowmem.planning import phase_peaks as peaks
from lowmem.planning.presets import parse_preset
from lowmem.planning.time_model import count_flops, denoise_seconds, dit_flops, predict


def test_flops_extrapolated_from_two_depths_equal_a_full_count():
    config = replace(FULL_DIT_CONFIG, hidden_size=256, heads_num=2, mm_double_blocks_depth=5)
    model = peaks.traced_dit(config, "bf16", torch.bfloat16, depth=5)
    assert dit_flops(config, 256, 40, 2) == count_flops(peaks.forward_call(model, 256, 40, 2))
    spot = count_flops(peaks.spot_call(model, 256, 40, 2, 0.25))
    assert dit_flops(config, 256, 40, 2, 0.25) == spot


def test_full_size_step_flops_match_the_block_arithmetic():
    d, n_img, n_txt, rows, blocks = 4096, 2 * 64 * 64, 1097, 2, 40
    linear = 2 * (n_img + n_txt) * (3 * d * d + d * d + 2 * 4 * d * d)  # qkv, proj, MLP of each stream
    attention = 2 * 2 * (n_img + n_txt) ** 2 * d  # scores and weighted values
    blocks_only = rows * blocks * (linear + attention)
    counted = dit_flops(FULL_DIT_CONFIG, 1024, n_txt, rows)
    assert blocks_only <= counted <= 1.02 * blocks_only


def test_step_time_is_compute_or_copy_whichever_is_longer():
    preset = load_preset("rtx4090-24gb")
    streamed = plan_for(FULL_DIT_CONFIG, "24GB", 1024, "bf16", False)
    (full,) = predict(streamed, preset, FULL_DIT_CONFIG)
    assert full.copy_bytes == streamed.dit.streamed_bytes_per_step > 0
    assert full.compute_s == pytest.approx(full.flops / (165.2e12 * 0.6))
    assert full.copy_s == pytest.approx(full.copy_bytes / 24e9)
    assert full.seconds == max(full.compute_s, full.copy_s) and full.hidden
    spot = plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb")
    steps = predict(spot, preset, FULL_DIT_CONFIG)
    assert [s.name.split()[0] for s in steps] == ["full", "spot", "spot"]
    assert steps[1].flops < 0.4 * steps[0].flops  # 30% of the target tokens recomputed
    n_full, n_spot, seconds = denoise_seconds(steps, 30)
    assert n_full + n_spot == 30 and 0 < n_full < 10
    calls = 4  # the selector runs once per spot segment: after the initial steps and each of 3 resets
    assert seconds == pytest.approx(n_full * steps[0].seconds + n_spot * steps[1].seconds + calls * steps[2].seconds)


def test_a_preset_without_device_figures_has_no_time_model():
    plan = plan_for(FULL_DIT_CONFIG, preset="cpu-16gb")
    with pytest.raises(ValueError, match="device figures"):
        predict(plan, load_preset("cpu-16gb"), FULL_DIT_CONFIG)


def test_bad_device_figures_in_a_preset_are_refused(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text('description = "x"\ndevice = "cuda"\nbudget = "24GB"\nbf16_tflops = -3\n')
    with pytest.raises(PresetError, match="bf16_tflops"):
        parse_preset(bad)
    bad.write_text('description = "x"\ndevice = "cuda"\nbudget = "24GB"\nsustained = 1.5\n')
    with pytest.raises(PresetError, match="sustained"):
        parse_preset(bad)


def test_presets_carry_dense_peaks_per_compute_mode():
    peaks_of = {name: load_preset(name).peak_rates for name in ("rtx4090-24gb", "rtx3090-24gb", "a100-80gb", "h100-80gb")}
    assert peaks_of["rtx4090-24gb"] == {"bf16": 165.2, "fp8": 330.3, "int8": 660.6}
    assert peaks_of["rtx3090-24gb"] == {"bf16": 71.0, "int8": 284.0}  # Ampere: no fp8
    assert peaks_of["a100-80gb"] == {"bf16": 312.0, "int8": 624.0}
    assert peaks_of["h100-80gb"] == {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}  # SXM
    assert load_preset("cpu-16gb").peak_rates == {}


@pytest.mark.parametrize("line, key", [
    ("int8_tops = 0", "int8_tops"), ("int8_tops = -1", "int8_tops"), ('fp8_tflops = "fast"', "fp8_tflops"),
    ("fp8_tflops = true", "fp8_tflops"), ("int8_tops = 600", "need bf16_tflops"),
])
def test_bad_per_mode_peaks_in_a_preset_are_refused(tmp_path, line, key):
    bad = tmp_path / "x.toml"
    figures = "" if "need" in key else "bf16_tflops = 100\n"
    bad.write_text(f'description = "x"\ndevice = "cuda"\nbudget = "24GB"\n{figures}{line}\n')
    with pytest.raises(PresetError, match=key):
        parse_preset(bad)
    bad.write_text('description = "x"\ndevice = "cuda"\nbudget = "24GB"\nbf16_tflops = 100\nint8_tops = 400\n')
    assert parse_preset(bad).peak_rates == {"bf16": 100, "int8": 400}


def test_cli_plan_prints_the_time_model(capsys):
    assert main(["plan", "--preset", "rtx4090-24gb"]) == 0
    out = capsys.readouterr().out
    assert "time model (rtx4090-24gb" in out and "spot step (30% active)" in out and "s predicted" in out
    assert main(["plan", "--budget", "24GB"]) == 0
    assert "give a --preset" in capsys.readouterr().out
