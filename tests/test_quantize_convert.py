"""Converting tiny folders to int8 / nf4, editing with them end to end, resume and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lowmem.cli import main as cli_main
from lowmem.common.image_metrics import psnr
from lowmem.errors import CorruptCheckpointError, LowmemError, ManifestVersionError, ModelFolderError, OutputPathError
from lowmem.loading import load_quantized_dit
from lowmem.models.layout import open_model_folder
from lowmem.pipeline import SpatialEditPipeline
from quantize import FORMAT_VERSION, convert, read_manifest
from quantize.convert import PARTIAL_STATE

PROMPT = "Rotate the object to show the front side view."


@pytest.fixture(scope="module")
def converted(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    return {s: convert(tiny_model, root / s, s, progress=False, print_table=False) and root / s for s in ("int8", "fp8", "nf4")}


def velocity(dit, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 2, 16, 1, 8, 8, generator=g)
    states = torch.randn(2, 7, dit.config.text_states_dim, generator=g)
    return dit(latents, torch.tensor([500.0, 500.0]), states).float()


def test_output_folder_layout_and_manifest(converted):
    folder = converted["nf4"]
    names = sorted(p.name for p in (folder / "transformer").iterdir())
    assert names == ["block_000.safetensors", "block_001.safetensors", "config.json", "rest.safetensors"]
    assert (folder / "text_encoder" / "layer_001.safetensors").exists() and (folder / "vae" / "Wan2.1_VAE.pth").exists()
    assert not list(folder.parent.glob("*.partial"))
    m = read_manifest(folder)
    assert m["format_version"] == 2 and m["scheme"] == "nf4" and m["backend"] in ("bnb", "quanto")
    assert read_manifest(converted["fp8"])["format_version"] == FORMAT_VERSION == 3  # only fp8 needs the new reader
    assert m["double_quant"] == (m["backend"] == "bnb")
    assert any(k.endswith(".safetensors") for k in m["source"]["sha256"])
    assert m["dit_config"]["hidden_size"] == 64
    t = m["dit"]["tensors"]
    assert t["double_blocks.0.img_attn_qkv.weight"]["scheme"] == "nf4"
    assert 0 < t["double_blocks.0.img_attn_qkv.weight"]["rel_error"] < 0.12
    for kept in ("img_in.weight", "proj_out.weight", "double_blocks.0.img_mod.modulate_table",
                 "condition_embedder.time_proj.weight", "double_blocks.0.img_attn_qkv.bias"):
        assert t[kept]["scheme"] == "none", kept
    v = m["vlm"]["tensors"]
    assert v["model.language_model.layers.0.mlp.down_proj.weight"]["scheme"] == "nf4"
    assert all(e["scheme"] == "none" for n, e in v.items() if not n.startswith("model.language_model.layers."))
    open_model_folder(folder)  # the layout check accepts it


def test_quantized_tensors_take_a_half_and_a_quarter_of_bf16(converted):
    for scheme, (lo, hi) in {"int8": (0.5, 0.55), "fp8": (0.5, 0.55), "nf4": (0.25, 0.3)}.items():
        m = read_manifest(converted[scheme])
        from safetensors import safe_open

        bf16 = stored = 0
        for part in ("dit", "vlm"):
            for rel in m[part]["files"]:
                with safe_open(converted[scheme] / rel, "pt") as f:
                    for key in f.keys():
                        module, _, leaf = key.rpartition(".")
                        entry = m[part]["tensors"].get(f"{module}.weight")
                        if leaf in ("qweight", "scale", "shift", "scale_absmax", "scale_offset") and entry and entry["scheme"] == scheme:
                            stored += f.get_slice(key).get_shape() and f.get_tensor(key).nbytes
                            if leaf == "qweight":
                                bf16 += 2 * math.prod(entry["shape"])
        ratio = stored / bf16
        print(f"{scheme}: quantized tensors {stored} B vs bf16 {bf16} B -> {ratio:.3f}")
        assert lo <= ratio <= hi, (scheme, ratio)


def test_quantized_folders_edit_end_to_end_close_to_bf16(tiny_model, tiny_pipeline, converted, scene):
    ref = np.asarray(tiny_pipeline.edit(scene, PROMPT, steps=2, resolution=64, seed=3, progress=False).image)
    v_ref = velocity(tiny_pipeline.dit)
    scores = {}
    for scheme, folder in converted.items():
        pipe = SpatialEditPipeline.from_folder(folder, device="cpu")
        result = pipe.edit(scene, PROMPT, steps=2, resolution=64, seed=3, progress=False)
        assert result.image.size == (64, 64)
        v = velocity(pipe.dit)
        rel = float((v - v_ref).norm() / v_ref.norm())
        scores[scheme] = (psnr(np.asarray(result.image), ref), rel)
        print(f"{scheme}: decoded PSNR vs bf16 {scores[scheme][0]:.1f} dB, DiT velocity rel.err {rel:.4f}")
    assert scores["int8"][1] < 0.03 and scores["fp8"][1] < 0.06 and scores["nf4"][1] < 0.3
    assert scores["int8"][1] < scores["fp8"][1] < scores["nf4"][1]
    assert scores["int8"][0] > 30 and scores["fp8"][0] > 25 and scores["nf4"][0] > 20 and scores["int8"][0] > scores["nf4"][0]


def test_in_memory_quantization_equals_the_converted_folder(tiny_model, converted):
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="cpu", quantization="int8")
    assert type(pipe.dit.double_blocks[0].img_attn_qkv).__name__ == "QuantizedLinear"
    assert type(pipe.conditioner.model.model.language_model.layers[0].mlp.up_proj).__name__ == "QuantizedLinear"
    loaded = load_quantized_dit(converted["int8"], "cpu", torch.float32)
    assert torch.equal(velocity(pipe.dit), velocity(loaded))


def test_nf4_folders_double_quantize_the_scales_and_old_folders_still_load(tiny_model, converted, tmp_path, monkeypatch):
    """A format-1 folder (single-level float32 nf4 scales, no `double_quant` entries) loads as it
    always did, and equals an in-memory single-level quantization; the double-quantized folder
    stores its scales in uint8 and gives nearly the same velocity."""
    import importlib

    from quantize.schemes import quantize_linear_weight

    new = load_quantized_dit(converted["nf4"], "cpu", torch.float32)
    assert new.double_blocks[0].img_attn_qkv.scale.dtype == torch.uint8
    old = tmp_path / "nf4-v1"
    monkeypatch.setattr(importlib.import_module("quantize.convert"), "double_quantized", lambda scheme, backend: False)
    convert(tiny_model, old, "nf4", components=("dit",), progress=False, print_table=False)
    monkeypatch.undo()
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["double_quant"]
    for entry in manifest["dit"]["tensors"].values():
        entry.pop("double_quant", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_quantized_dit(old, "cpu", torch.float32)
    layer = loaded.double_blocks[0].img_attn_qkv
    assert layer.stored_names == ("qweight", "scale") and layer.scale.dtype == torch.float32
    reference = load_quantized_dit(old, "cpu", torch.float32)
    source = SpatialEditPipeline.from_folder(tiny_model, device="cpu").dit.double_blocks[0].img_attn_qkv.weight
    expected = quantize_linear_weight(source, "nf4", "bnb", double_quant=False)
    assert all(torch.equal(getattr(layer, k), v) for k, v in expected.items())
    v_old, v_new = velocity(loaded), velocity(new)
    assert torch.equal(v_old, velocity(reference))
    assert float((v_new - v_old).norm() / v_old.norm()) < 0.05


def test_unquantized_vlm_through_the_meta_loader_matches_transformers(tiny_model, tiny_pipeline, tmp_path, scene):
    out = tmp_path / "noskip"
    convert(tiny_model, out, "int8", components=("vlm",), skip=["model.language_model.*"], progress=False, print_table=False)
    pipe = SpatialEditPipeline.from_folder(out, device="cpu")
    a = pipe.conditioner.encode([scene], PROMPT)
    b = tiny_pipeline.conditioner.encode([scene], PROMPT)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(velocity(pipe.dit), velocity(tiny_pipeline.dit))  # DiT copied as is


def test_resume_after_interruption(tiny_model, converted, tmp_path, monkeypatch):
    import sys

    qc = sys.modules["quantize.convert"]

    out = tmp_path / "resumed"
    real = qc.save_file
    calls = []

    def interrupted(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(qc, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_model, out, "int8", progress=False, print_table=False)
    partial = tmp_path / "resumed.partial"
    state = json.loads((partial / PARTIAL_STATE).read_text())
    assert list(state["units"]) == ["transformer/block_000.safetensors"] and not out.exists()
    first = (partial / "transformer/block_000.safetensors").stat()
    monkeypatch.setattr(qc, "save_file", real)
    with pytest.raises(LowmemError, match="other options"):
        convert(tiny_model, out, "nf4", progress=False, print_table=False)
    m = convert(tiny_model, out, "int8", progress=False, print_table=False)
    again = (out / "transformer/block_000.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not redone
    from safetensors.torch import load_file

    assert set(m["files"]) == set(read_manifest(converted["int8"])["files"])
    for rel in m["files"]:  # the same tensors as an uninterrupted run (header order may differ), the same copies
        if not rel.endswith(".safetensors"):
            assert (out / rel).read_bytes() == (converted["int8"] / rel).read_bytes(), rel
            continue
        a, b = load_file(out / rel), load_file(converted["int8"] / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    assert not partial.exists()


def test_cli_quantize_and_bad_input(tiny_model, converted, tmp_path, capsys):
    assert cli_main(["quantize", str(tiny_model), "--scheme", "int8", "--component", "dit", "--skip", "*mlp*",
                     "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    m = read_manifest(tmp_path / "cli")
    assert m["dit"]["tensors"]["double_blocks.0.img_mlp.net.2.weight"]["scheme"] == "none"
    assert m["vlm"] == {"quantized": False}
    assert "rel.err" in capsys.readouterr().out

    # unsupported scheme: the parser refuses it (check_scheme refuses it too: test_quantize_schemes)
    with pytest.raises(SystemExit) as refused:
        cli_main(["quantize", str(tiny_model), "--scheme", "fp3", "--out", str(tmp_path / "x")])
    assert refused.value.code == 2 and "fp3" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # non-empty output folder: refused, untouched
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="not empty"):
        convert(tiny_model, busy, "int8", progress=False)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    # unknown manifest version
    future = tmp_path / "future"
    import shutil

    shutil.copytree(converted["int8"], future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestVersionError, match="format_version 99"):
        SpatialEditPipeline.from_folder(future, device="cpu")
    # issue 29, item 8: a version written as a string is named as such, not refused as unknown
    manifest["format_version"] = "2"
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="format_version '2', which is not a number"):
        SpatialEditPipeline.from_folder(future, device="cpu")
    # a manifest.json that is a folder is named, not read as an original folder's missing index
    (future / "manifest.json").unlink()
    (future / "manifest.json").mkdir()
    with pytest.raises(ModelFolderError, match="manifest.json is not a file"):
        SpatialEditPipeline.from_folder(future, device="cpu")


def test_truncated_shard_is_reported_and_nothing_is_written(tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shard = sorted((broken / "transformer").glob("*-00002-of-00002.safetensors"))[0]
    before = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(before // 2)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        convert(broken, tmp_path / "out", "nf4", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert shard.stat().st_size == before // 2


def test_two_identical_conversions_write_identical_bytes(tiny_model, converted, tmp_path):
    """A conversion is reproducible: every file and the manifest (whose sha256s name each file) match
    byte for byte (issue 29, item 6: the safetensors metadata map used to come out in hash order)."""
    again = tmp_path / "again"
    convert(tiny_model, again, "nf4", progress=False, print_table=False)
    first = converted["nf4"]
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert [n for n in names if (first / n).read_bytes() != (again / n).read_bytes()] == []

