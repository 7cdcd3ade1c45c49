"""Bad input to `lowmem edit`: one clear line on stderr, non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowmem.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def image_file(scene, tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    scene.save(path)
    return path


def test_wrong_angle(tiny_model, image_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, err = run_cli(["edit", "--model", str(tiny_model), "--image", str(image_file), "--out", str(out), "--camera-yaw", "30"], capsys)
    assert code == 2
    assert err.count("\n") == 0 and "camera yaw 30 was not trained" in err and "45" in err
    assert not out.exists()


def test_missing_model_file(tiny_model, image_file, tmp_path, capsys):
    import shutil

    broken = Path(shutil.copytree(tiny_model, tmp_path / "broken"))
    (broken / "vae" / "Wan2.1_VAE.pth").unlink()
    out = tmp_path / "out.png"
    code, err = run_cli(["edit", "--model", str(broken), "--image", str(image_file), "--out", str(out), "--rotate", "left"], capsys)
    assert code == 2 and err.startswith("error:") and "Wan2.1_VAE.pth" in err and err.count("\n") == 0
    assert not out.exists()


def test_unreadable_image(tiny_model, tmp_path, capsys):
    bogus = tmp_path / "photo.png"
    bogus.write_text("this is not a picture")
    out = tmp_path / "out.png"
    code, err = run_cli(["edit", "--model", str(tiny_model), "--image", str(bogus), "--out", str(out), "--rotate", "left"], capsys)
    assert code == 2 and "not a readable image" in err and err.count("\n") == 0
    assert not out.exists()


def test_existing_output_is_kept_without_overwrite(tiny_model, image_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    code, err = run_cli(["edit", "--model", str(tiny_model), "--image", str(image_file), "--out", str(out), "--rotate", "left"], capsys)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"precious"


def test_edit_writes_the_image_and_report(tiny_model, image_file, tmp_path, capsys):
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    code = main(["edit", "--model", str(tiny_model), "--image", str(image_file), "--out", str(out), "--rotate", "rear",
                 "--steps", "2", "--resolution", "64", "--report", str(report), "--device", "cpu"])
    assert code == 0 and out.exists() and report.exists()
    assert '"steps": 2' in report.read_text()
