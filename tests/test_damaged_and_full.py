"""Issue 29, classes 3-5: a full disk, damaged folders that used to end in a traceback, and damaged
quantized folders that used to give silent garbage. Each case ends in one `error:` line (or, for a
damaged partial.json, one notice), removes its temporary files and keeps what was there. Each test
failed on the code before the fix."""

from __future__ import annotations

import builtins
import errno
import importlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch
from safetensors.torch import save_file

from lowmem.cli import main
from lowmem.errors import DamagedOutputError, OutOfSpaceError
from lowmem.tiny.random_model import tiny_dit_state_dict


def error_line(code: int, capsys) -> str:
    """The one `error:` line a failed command ends with (after the progress of what it did), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, (code, err)
    return errors[0]


def edit(model: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--out", str(out), "--steps", "1",
            "--resolution", "64", "--rotate", "left", "--device", "cpu", *extra]


def quantize(model: Path, out: Path) -> list[str]:
    return ["quantize", str(model), "--scheme", "nf4", "--out", str(out), "--no-progress"]


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    """Temporary names (.NAME.*) and staging folders anywhere below `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


# -- a full disk, without filling one -------------------------------------------------------------

class FullDisk:
    """A disk with `room` bytes left below `folder`: Python's file writes, os.write and safetensors'
    save_file there write what fits, then fail as the system does (ENOSPC; safetensors with its own
    error ending in "(os error 28)"); shutil.disk_usage says the room left, or `reported` (a disk
    that another process fills after the check)."""

    def __init__(self, monkeypatch, folder: Path, room: int, reported: Optional[int] = None):
        self.folder, self.left, self.reported = Path(folder).resolve(), room, reported
        real_open, real_write, real_usage = builtins.open, os.write, shutil.disk_usage
        disk = self

        class FillingFile:
            def __init__(self, handle):
                self._handle = handle

            def write(self, data):
                fits = min(len(data), disk.left)
                disk.left -= fits
                self._handle.write(data[:fits])
                if fits < len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return len(data)

            def fileno(self):  # no copying around write(): shutil and PIL fall back to it
                raise io.UnsupportedOperation("fileno")

            def __getattr__(self, name):
                return getattr(self._handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self._handle.close()

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writes = any(c in mode for c in "wax+")
            return FillingFile(handle) if writes and isinstance(file, (str, os.PathLike)) and self.inside(file) else handle

        def fake_write(fd, data):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if not self.inside(target):
                return real_write(fd, data)
            fits = min(len(data), disk.left)
            disk.left -= fits
            if fits < len(data):
                real_write(fd, bytes(data[:fits]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fake_save_file(tensors, filename, metadata=None):
            from safetensors import SafetensorError
            from safetensors.torch import save

            try:
                with fake_open(filename, "wb") as handle:
                    handle.write(save(tensors, metadata))
            except OSError as exc:
                raise SafetensorError(f"Error while serializing: I/O error: {exc.strerror} (os error {exc.errno})") from None

        def fake_usage(path):
            usage = real_usage(path)
            if not self.inside(path):
                return usage
            return usage._replace(free=self.reported if self.reported is not None else self.left)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(shutil, "disk_usage", fake_usage)
        for module in ("quantize.convert", "lowmem.models.official_import"):  # the package exports a function `convert`
            monkeypatch.setattr(importlib.import_module(module), "save_file", fake_save_file)

    def inside(self, path) -> bool:
        return bool(path) and Path(os.path.abspath(path)).resolve().is_relative_to(self.folder)


def test_quantize_refuses_before_starting_when_the_output_does_not_fit(tiny_model, tmp_path, monkeypatch, capsys):
    FullDisk(monkeypatch, tmp_path, room=1000)
    out = tmp_path / "q"
    line = error_line(main(quantize(tiny_model, out)), capsys)
    assert "not enough disk space" in line and "the conversion into" in line and "B is free" in line
    assert list(tmp_path.iterdir()) == []  # no folder, no partial folder, no lock file


def test_quantize_on_a_disk_full_before_the_lock_is_written(tiny_model, tmp_path, monkeypatch, capsys):
    FullDisk(monkeypatch, tmp_path, room=0)
    line = error_line(main(quantize(tiny_model, tmp_path / "q")), capsys)
    assert f"no space left on the disk for {tmp_path / '.q.lock'}" in line and "needs" in line
    assert list(tmp_path.iterdir()) == []


def test_quantize_on_a_disk_that_fills_up_keeps_the_finished_blocks_and_resumes(tiny_model, quantized_model, tmp_path,
                                                                                 monkeypatch, capsys):
    sizes = json.loads((quantized_model / "manifest.json").read_text())["sizes"]
    room = sizes["transformer/block_000.safetensors"] + 30_000  # one block and its partial.json, not the whole folder
    FullDisk(monkeypatch, tmp_path, room=room, reported=10**12)
    out = tmp_path / "q"
    partial = tmp_path / "q.partial"
    line = error_line(main(quantize(tiny_model, out)), capsys)
    assert f"no space left on the disk for {partial} (the conversion needs" in line
    assert "the same command resumes" in line
    assert not out.exists() and not (tmp_path / ".q.lock").exists() and hidden(tmp_path) == []
    state = json.loads((partial / "partial.json").read_text())  # whole: written atomically
    assert "transformer/block_000.safetensors" in state["units"]

    monkeypatch.undo()
    assert main(quantize(tiny_model, out)) == 0
    assert not partial.exists()
    assert set(json.loads((out / "manifest.json").read_text())["files"]) == set(sizes)


@pytest.fixture
def official_release(tmp_path: Path, tiny_model: Path) -> dict[str, Path]:
    """The tiny model's DiT as the release's .pt with a LoRA of one adapted Linear."""
    state = tiny_dit_state_dict()
    dit = tmp_path / "release" / "dit.pt"
    dit.parent.mkdir()
    torch.save({"model": state}, dit)
    lora = tmp_path / "release" / "lora"
    lora.mkdir()
    out_f, in_f = state["double_blocks.0.img_attn_qkv.weight"].shape
    save_file({"base_model.model.double_blocks.0.img_attn_qkv.lora_A.weight": torch.zeros(4, in_f),
               "base_model.model.double_blocks.0.img_attn_qkv.lora_B.weight": torch.zeros(out_f, 4)},
              lora / "adapter_model.safetensors")
    (lora / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    return {"dit": dit, "lora": lora, "vae": tiny_model / "vae" / "Wan2.1_VAE.pth",
            "text_encoder": tiny_model / "text_encoder"}


def import_release(release: dict, out: Path) -> list[str]:
    return ["import", "--dit", str(release["dit"]), "--lora", str(release["lora"]), "--vae", str(release["vae"]),
            "--text-encoder", str(release["text_encoder"]), "--out", str(out), "--shard-size", "200KB", "--no-progress"]


@pytest.mark.parametrize("reported, words", [(None, "not enough disk space"), (10**12, "no space left on the disk for")])
def test_import_on_a_full_disk(reported, words, official_release, tmp_path, monkeypatch, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    FullDisk(monkeypatch, disk, room=1000, reported=reported)
    out = disk / "imported"
    line = error_line(main(import_release(official_release, out)), capsys)
    assert words in line and str(out) in line and "needs" in line
    assert list(disk.iterdir()) == []  # no folder, no staging folder


def test_edit_on_a_full_disk_keeps_the_image_it_would_replace(tiny_model, image_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "edit.png"
    out.parent.mkdir()
    out.write_bytes(b"the earlier edit")
    FullDisk(monkeypatch, out.parent, room=100)
    line = error_line(main(edit(tiny_model, image_file, out, "--overwrite")), capsys)
    assert f"no space left on the disk for {out} (writing it needs" in line and "0 B is free" in line
    assert files_in(out.parent) == {"edit.png": b"the earlier edit"} and hidden(out.parent) == []


def test_edit_report_on_a_full_disk(tiny_model, image_file, tmp_path, monkeypatch, capsys):
    report = tmp_path / "reports" / "run.json"
    report.parent.mkdir()
    FullDisk(monkeypatch, report.parent, room=10)
    line = error_line(main(edit(tiny_model, image_file, tmp_path / "out.png", "--report", str(report))), capsys)
    assert f"no space left on the disk for {report}" in line
    assert list(report.parent.iterdir()) == []
    assert not (tmp_path / "out.png").exists()  # the image and its report are written together, or neither


def test_demo_on_a_full_disk_leaves_no_folder(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "full" / "deeper" / "demo"
    FullDisk(monkeypatch, tmp_path / "full", room=5000)
    code = main(["demo", "--out-dir", str(out_dir), "--quantization", "none", "--steps", "1"])
    line = error_line(code, capsys)
    assert f"no space left on the disk for {out_dir} (writing the demo's files needs" in line
    assert list(tmp_path.iterdir()) == []


def test_doctor_json_on_a_full_disk(tmp_path, monkeypatch, capsys):
    target = tmp_path / "doctor.json"
    target.write_text("mine")
    FullDisk(monkeypatch, tmp_path, room=10)
    line = error_line(main(["doctor", "--json", str(target), "--overwrite"]), capsys)
    assert f"no space left on the disk for {target}" in line
    assert files_in(tmp_path) == {"doctor.json": b"mine"} and hidden(tmp_path) == []


def test_a_full_disk_during_a_hub_download_is_not_a_network_error(tmp_path, monkeypatch):
    from lowmem.hub.fetch import hub_call

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    def download():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutOfSpaceError, match="resumes from it"):
        hub_call("EasonXiao-888/SpatialEdit", download)


# -- damaged folders: one line, before any weight is read -----------------------------------------

def test_text_encoder_shards_without_their_index(model_copy, image_file, tmp_path, capsys):
    (model_copy / "text_encoder" / "model.safetensors.index.json").unlink()
    line = error_line(main(edit(model_copy, image_file, tmp_path / "out.png")), capsys)
    assert "model-00001-of-00002.safetensors" in line and "no model.safetensors.index.json" in line
    assert not (tmp_path / "out.png").exists()


@pytest.fixture
def no_weight_read(monkeypatch):
    """A DiT weight read fails the test: what is checked must be checked before."""
    from lowmem.models.dit_loading import DiTCheckpoint

    def fail(*args, **kwargs):
        raise AssertionError("a weight was read before every config was checked")

    monkeypatch.setattr(DiTCheckpoint, "fill", fail)


@pytest.mark.parametrize("text, words", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"base_dimm": 4}), "does not describe a Wan VAE"),
])
def test_a_bad_vae_config_is_refused_before_any_weight(text, words, model_copy, image_file, tmp_path, capsys,
                                                       no_weight_read):
    (model_copy / "vae" / "config.json").write_text(text)
    line = error_line(main(edit(model_copy, image_file, tmp_path / "out.png")), capsys)
    assert f"{model_copy / 'vae' / 'config.json'}" in line and words in line


def test_a_lora_of_the_wrong_shape_names_the_tensor_and_both_shapes(official_release, tmp_path, capsys):
    state = tiny_dit_state_dict()
    out_f, in_f = state["double_blocks.0.img_attn_qkv.weight"].shape
    save_file({"base_model.model.double_blocks.0.img_attn_qkv.lora_A.weight": torch.zeros(4, in_f + 1),
               "base_model.model.double_blocks.0.img_attn_qkv.lora_B.weight": torch.zeros(out_f, 4)},
              official_release["lora"] / "adapter_model.safetensors")
    out = tmp_path / "imported"
    line = error_line(main(import_release(official_release, out)), capsys)
    assert "base_model.model.double_blocks.0.img_attn_qkv.lora_A.weight" in line
    assert f"(4, {in_f + 1})" in line and f"({out_f}, {in_f})" in line
    assert not out.exists() and not list(tmp_path.glob(".imported*"))


def test_a_damaged_partial_json_starts_the_conversion_afresh(tiny_model, tmp_path, capsys):
    partial = tmp_path / "q.partial"
    partial.mkdir()
    (partial / "partial.json").write_text('{"options": {"sch')  # cut off mid-write
    assert main(quantize(tiny_model, tmp_path / "q")) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "partial.json is damaged" in notices[0] and "starts afresh" in notices[0]
    assert not partial.exists() and (tmp_path / "q" / "manifest.json").is_file()


def test_a_jobs_file_that_is_not_utf8(tiny_model, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"image": "in.png", "rotate": "left", "name": "caf\xe9.png"}\n')
    line = error_line(main(["batch", str(jobs), "--model", str(tiny_model), "--out", str(tmp_path / "out")]), capsys)
    assert str(jobs) in line and "not UTF-8" in line
    assert not (tmp_path / "out").exists()


def test_a_preset_that_is_not_utf8(tiny_model, image_file, tmp_path, capsys):
    preset = tmp_path / "mine.toml"
    preset.write_bytes(b'description = "caf\xe9"\ndevice = "cpu"\nbudget = "1GB"\n')
    with pytest.raises(SystemExit) as refused:  # --preset is read with the arguments, before anything loads
        main(edit(tiny_model, image_file, tmp_path / "out.png", "--preset", str(preset)))
    line = error_line(refused.value.code, capsys)
    assert str(preset) in line and "not UTF-8" in line


# -- a damaged quantized folder is named, never edited with -------------------------------------

def test_the_manifest_hashes_every_file_of_a_quantized_folder(quantized_model):
    from quantize.manifest import sha256_file

    manifest = json.loads((quantized_model / "manifest.json").read_text())
    on_disk = {str(p.relative_to(quantized_model)) for p in quantized_model.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    assert {"vae/Wan2.1_VAE.pth", "transformer/config.json", "text_encoder/tokenizer.json"} <= set(manifest["files"])
    for rel, digest in manifest["files"].items():
        assert sha256_file(quantized_model / rel) == digest and (quantized_model / rel).stat().st_size == manifest["sizes"][rel]


def flip_last_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rel, damage, words", [
    ("vae/Wan2.1_VAE.pth", flip_last_bytes, "does not match the sha256"),
    ("text_encoder/tokenizer_config.json", lambda p: p.write_text(p.read_text() + " "), "manifest.json recorded"),
    ("text_encoder/config.json", lambda p: p.write_text(p.read_text().replace("1", "2", 1)), "does not match the sha256"),
])
def test_a_damaged_file_of_a_quantized_folder_is_named(rel, damage, words, quantized_model, image_file, tmp_path, capsys):
    copy = Path(shutil.copytree(quantized_model, tmp_path / "nf4"))
    damage(copy / rel)
    out = tmp_path / "out.png"
    line = error_line(main(edit(copy, image_file, out)), capsys)
    assert str(copy / rel) in line and words in line and "lowmem quantize" in line
    assert not out.exists()


def test_nan_weights_give_an_error_not_a_png(model_copy, image_file, tmp_path, capsys):
    vae = model_copy / "vae" / "Wan2.1_VAE.pth"
    weights = torch.load(vae, weights_only=True)
    name = next(k for k, v in weights.items() if k.startswith("decoder.") and v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    torch.save(weights, vae)
    out = tmp_path / "out.png"
    line = error_line(main(edit(model_copy, image_file, out)), capsys)
    assert "non-finite image" in line and "weights may be damaged" in line
    assert not out.exists()


def test_a_constant_image_is_an_error(tiny_pipeline, scene, monkeypatch):
    monkeypatch.setattr(tiny_pipeline.vae, "decode", lambda latents, **kwargs: torch.full((1, 3, 64, 64), 0.5))
    with pytest.raises(DamagedOutputError, match=r"constant image \(every pixel is RGB \(128, 128, 128\)\)"):
        tiny_pipeline.edit(scene, "Rotate the object to show the left side view.", steps=1, resolution=64, progress=False)
