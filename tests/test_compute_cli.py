"""Issue 25's faces on the CPU: `lowmem quantize --scheme fp8`, `lowmem edit --compute ...` and
`--spot auto`, `lowmem.load(compute=...)`; what each run decided is printed and in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import lowmem
from lowmem.cli import main
from lowmem.cli.quantize import SCHEME_CHOICES
from lowmem.common.image_metrics import psnr
from lowmem.edits import COMPUTE_CHOICES
from quantize.compute import COMPUTE_MODES
from quantize.schemes import SCHEMES


@pytest.fixture(scope="module")
def fp8_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp8") / "tiny-fp8"
    assert main(["quantize", str(tiny_model), "--scheme", "fp8", "--out", str(out), "--no-progress"]) == 0
    return out


def edit(model: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--out", str(out), "--steps", "2",
            "--resolution", "64", "--rotate", "left", "--device", "cpu", "--report", str(out.with_suffix(".json")), *extra]


def test_flag_choices_are_the_libraries_names():
    assert SCHEME_CHOICES == SCHEMES  # written out in the CLI so `--help` needs no torch
    assert COMPUTE_CHOICES == ("auto",) + COMPUTE_MODES


def test_quantize_fp8_writes_e4m3_codes_and_a_version_3_manifest(fp8_model):
    manifest = json.loads((fp8_model / "manifest.json").read_text())
    assert (manifest["scheme"], manifest["backend"], manifest["format_version"]) == ("fp8", "quanto", 3)
    with safe_open(fp8_model / "transformer" / "block_000.safetensors", "pt") as f:
        assert f.get_slice("double_blocks.0.img_attn_qkv.qweight").get_dtype() == "F8_E4M3"
        assert f.get_slice("double_blocks.0.img_attn_qkv.scale").get_dtype() == "F32"


@pytest.mark.parametrize("compute", ["int8", "fp8"])
def test_edit_computes_w8a8_on_the_cpu_close_to_the_dequantized_run(fp8_model, image_file, tmp_path, capsys, compute):
    assert main(edit(fp8_model, image_file, tmp_path / "bf16.png", "--compute", "bf16")) == 0
    assert main(edit(fp8_model, image_file, tmp_path / "w8a8.png", "--compute", compute)) == 0
    out = capsys.readouterr().out
    assert f"compute {compute}: {compute}, as asked" in out
    report = json.loads((tmp_path / "w8a8.json").read_text())
    assert report["compute"] == compute and json.loads((tmp_path / "bf16.json").read_text())["compute"] == "bf16"
    w8a8, dense = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("w8a8", "bf16"))
    assert w8a8.shape == dense.shape and 25 < psnr(w8a8, dense) < float("inf")  # computed differently, close


def test_auto_is_bf16_on_the_cpu_and_spot_auto_is_off_for_small_edits(tiny_model, image_file, tmp_path, capsys):
    assert main(edit(tiny_model, image_file, tmp_path / "o.png", "--spot", "auto")) == 0
    out = capsys.readouterr().out
    assert "compute bf16: bf16: auto keeps the dense GEMM (the pipeline's dtype) on the CPU for a 64-wide DiT" in out
    assert "SpotEdit off: auto, on the CPU, turns it on from 256 px" in out
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["compute"] == "bf16" and "spot_active_fraction" not in report["extra"]


def test_spot_flag_forms(tiny_model, image_file, tmp_path, capsys):
    assert main(edit(tiny_model, image_file, tmp_path / "on.png", "--spot", "--spot-threshold", "-1")) == 0
    assert "spot_active_fraction" in json.loads((tmp_path / "on.json").read_text())["extra"]
    assert main(edit(tiny_model, image_file, tmp_path / "off.png", "--spot", "--no-spot")) == 0
    assert "spot_active_fraction" not in json.loads((tmp_path / "off.json").read_text())["extra"]
    with pytest.raises(SystemExit) as stop:
        main(edit(tiny_model, image_file, tmp_path / "x.png", "--spot", "sometimes"))
    assert stop.value.code == 2 and "--spot" in capsys.readouterr().err


def test_unknown_compute_mode_is_a_usage_error(tiny_model, image_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(edit(tiny_model, image_file, tmp_path / "x.png", "--compute", "fp4"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--compute" in err and "fp4" in err
    assert not (tmp_path / "x.png").exists()


def test_python_api_takes_a_compute_mode(tiny_model, scene):
    with lowmem.load(tiny_model, device="cpu", compute="int8") as pipe:
        assert pipe.compute == "int8" and pipe.choices == ["compute int8: int8, as asked"]
        result = pipe.edit(scene, "rotate the cube to the left", steps=1, resolution=64, progress=False)
    assert result.report.compute == "int8" and result.image.size == (64, 64)


def test_doctor_names_the_compute_modes_of_this_machine():
    from lowmem.cli import doctor

    assert doctor.compute_modes("cpu") == {"runs": ["bf16", "fp8", "int8"], "auto": "int8"}  # for the 4096-wide 16B
