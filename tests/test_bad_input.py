"""Bad input to every command: one clear `error:` line on stderr, a non-zero exit, nothing on disk lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lowmem.cli import main


def one_line_error(code: int, capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit status {code}, stderr: {err}"
    lines = [line for line in err.splitlines() if not line.startswith(("Failed to load CPU", "Warning"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit(model: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--out", str(out), "--steps", "1", "--resolution", "64",
            *(extra or ("--rotate", "left"))]


# -- lowmem edit -----------------------------------------------------------------------------------

def test_edit_missing_image(tiny_model, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, tmp_path / "nope.png", tmp_path / "out.png")), capsys)
    assert "does not exist" in line


def test_edit_unreadable_image(tiny_model, tmp_path, capsys):
    bogus = tmp_path / "photo.png"
    bogus.write_text("this is not a picture")
    line = one_line_error(main(edit(tiny_model, bogus, tmp_path / "out.png")), capsys)
    assert "not a readable image" in line
    assert not (tmp_path / "out.png").exists()


def test_edit_image_is_a_folder(tiny_model, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, tmp_path, tmp_path / "out.png")), capsys)
    assert "is a folder; give an image file" in line


def test_edit_wrong_angle(tiny_model, image_file, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, image_file, tmp_path / "out.png", "--camera-yaw", "30")), capsys)
    assert "camera yaw 30 was not trained" in line and "45" in line


def test_edit_unknown_view(tiny_model, image_file, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, image_file, tmp_path / "out.png", "--rotate", "upside down")), capsys)
    assert "8 canonical views" in line


def test_edit_two_edits_at_once(tiny_model, image_file, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, image_file, tmp_path / "out.png", "--rotate", "left", "--zoom", "in")), capsys)
    assert "exactly one edit" in line


def test_edit_missing_model_file(model_copy, image_file, tmp_path, capsys):
    (model_copy / "vae" / "Wan2.1_VAE.pth").unlink()
    line = one_line_error(main(edit(model_copy, image_file, tmp_path / "out.png")), capsys)
    assert "Wan2.1_VAE.pth" in line
    assert not (tmp_path / "out.png").exists()


def test_edit_truncated_safetensors(model_copy, image_file, tmp_path, capsys):
    shard = model_copy / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    line = one_line_error(main(edit(model_copy, image_file, tmp_path / "out.png")), capsys)
    assert "truncated or corrupt" in line and "00002-of-00002" in line


def test_edit_wrong_manifest_version(quantized_model, image_file, tmp_path, capsys):
    copy = Path(shutil.copytree(quantized_model, tmp_path / "q"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(main(edit(copy, image_file, tmp_path / "out.png")), capsys)
    assert "99" in line and "version" in line


def test_edit_budget_below_minimum(tiny_model, image_file, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, image_file, tmp_path / "out.png", "--rotate", "left", "--budget", "1MB")), capsys)
    assert "budget" in line and "at least" in line


def test_edit_bad_budget_string(tiny_model, image_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # the parser refuses it, before anything is loaded
        main(edit(tiny_model, image_file, tmp_path / "out.png", "--rotate", "left", "--budget", "lots"))
    line = one_line_error(refused.value.code, capsys)
    assert "--budget" in line and "lots" in line


def test_edit_output_in_a_missing_folder(tiny_model, image_file, tmp_path, capsys):
    line = one_line_error(main(edit(tiny_model, image_file, tmp_path / "missing" / "out.png")), capsys)
    assert "does not exist" in line and "missing" in line


def test_edit_existing_output_needs_overwrite(tiny_model, image_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    line = one_line_error(main(edit(tiny_model, image_file, out)), capsys)
    assert "--overwrite" in line
    assert out.read_bytes() == b"precious"


def test_edit_writes_image_and_report(tiny_model, image_file, tmp_path):
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    assert main(edit(tiny_model, image_file, out, "--rotate", "rear", "--report", str(report), "--device", "cpu")) == 0
    assert out.exists() and json.loads(report.read_text())["steps"] == 1
    assert main(edit(tiny_model, image_file, out, "--rotate", "rear", "--overwrite")) == 0


# -- lowmem quantize -------------------------------------------------------------------------------

def test_quantize_truncated_shard(model_copy, tmp_path, capsys):
    shard = model_copy / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    out = tmp_path / "q"
    line = one_line_error(main(["quantize", str(model_copy), "--scheme", "nf4", "--out", str(out), "--no-progress"]), capsys)
    assert "corrupt" in line or "truncated" in line
    assert not out.exists()


def test_quantize_unsupported_scheme(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # the parser refuses it, before any import of the quantizer
        main(["quantize", str(tiny_model), "--scheme", "int3", "--out", str(tmp_path / "q")])
    line = one_line_error(refused.value.code, capsys)
    assert "int3" in line and "nf4" in line


def test_quantize_into_a_folder_that_holds_something(tiny_model, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(out)
    line = one_line_error(main(["quantize", str(tiny_model), "--scheme", "int8", "--out", str(out)]), capsys)
    assert str(out) in line
    assert snapshot(out) == before


def test_quantize_missing_model(tmp_path, capsys):
    line = one_line_error(main(["quantize", str(tmp_path / "nothing"), "--scheme", "int8", "--out", str(tmp_path / "q")]), capsys)
    assert "does not exist" in line


def test_quantize_leaves_the_source_untouched(tiny_model, quantized_model):
    assert (tiny_model / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors").exists()
    assert (quantized_model / "manifest.json").exists()


# -- lowmem plan / demo / doctor -------------------------------------------------------------------

def test_plan_budget_below_minimum(capsys):
    line = one_line_error(main(["plan", "--budget", "2GB", "--resolution", "1024"]), capsys)
    assert "at least" in line


def test_plan_unknown_preset(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["plan", "--preset", "gtx-480"])
    line = one_line_error(refused.value.code, capsys)
    assert "gtx-480" in line and "rtx4090-24gb" in line


def test_demo_unreadable_image(tmp_path, capsys):
    bogus = tmp_path / "x.jpg"
    bogus.write_bytes(b"\x00\x01")
    out_dir = tmp_path / "demo"
    line = one_line_error(main(["demo", "--image", str(bogus), "--out-dir", str(out_dir)]), capsys)
    assert "not a readable image" in line
    assert not out_dir.exists()


def test_demo_wrong_angle(tmp_path, capsys):
    line = one_line_error(main(["demo", "--camera-pitch", "10", "--out-dir", str(tmp_path / "d")]), capsys)
    assert "pitch 10" in line


def test_doctor_json_into_a_missing_folder(tmp_path, capsys):
    line = one_line_error(main(["doctor", "--json", str(tmp_path / "missing" / "d.json")]), capsys)
    assert "does not exist" in line


def test_out_of_device_memory_is_one_line_with_what_to_change(monkeypatch, capsys):
    import torch

    from lowmem.cli import doctor

    def exhausted(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(doctor, "run", exhausted)
    line = one_line_error(main(["doctor"]), capsys)
    assert "Tried to allocate 2.00 GiB" in line and "--budget" in line and "nf4" in line


def test_import_missing_checkpoint(tiny_model, tmp_path, capsys):
    line = one_line_error(main(["import", "--dit", str(tmp_path / "none.pt"), "--vae", str(tiny_model / "vae" / "Wan2.1_VAE.pth"),
                                "--text-encoder", str(tiny_model / "text_encoder"), "--out", str(tmp_path / "m")]), capsys)
    assert "none.pt does not exist" in line
    assert not (tmp_path / "m").exists()


def test_quantize_an_already_quantized_folder(quantized_model, tmp_path, capsys):
    line = one_line_error(main(["quantize", str(quantized_model), "--scheme", "int8", "--out", str(tmp_path / "q2")]), capsys)
    assert "already a `lowmem quantize` folder" in line
    assert not (tmp_path / "q2").exists()
