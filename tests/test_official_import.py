"""`lowmem import`: the official release layout (DiT .pt + PEFT LoRA folder) becomes a model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lowmem.cli import main
from lowmem.models.dit_config import FULL_DIT_CONFIG, TINY_DIT_CONFIG
from lowmem.models.dit_loading import load_dit
from lowmem.models.layout import open_model_folder
from lowmem.models.official_import import infer_dit_config
from lowmem.pipeline import SpatialEditPipeline
from lowmem.tiny.random_model import tiny_dit_state_dict

RANK, ALPHA = 4, 8
ADAPTED = ["double_blocks.0.img_attn_qkv", "double_blocks.1.txt_mlp.net.2"]


@pytest.fixture
def official_release(tmp_path: Path, tiny_model: Path) -> dict[str, Path]:
    """The tiny model as the official release ships it: one .pt under "model", a PEFT LoRA folder."""
    state = tiny_dit_state_dict()
    dit = tmp_path / "CKPT_PT" / "dit.pt"
    dit.parent.mkdir()
    torch.save({"model": state}, dit)
    lora = tmp_path / "CKPT_CT" / "lora"
    lora.mkdir(parents=True)
    g = torch.Generator().manual_seed(3)
    adapter = {}
    for module in ADAPTED:
        out_f, in_f = state[f"{module}.weight"].shape
        adapter[f"base_model.model.{module}.lora_A.weight"] = torch.randn(RANK, in_f, generator=g) * 0.1
        adapter[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_f, RANK, generator=g) * 0.1
    save_file(adapter, lora / "adapter_model.safetensors")
    (lora / "adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": ALPHA, "target_modules": ["qkv"]}))
    config = tmp_path / "config.json"
    config.write_text(TINY_DIT_CONFIG.to_json())
    return {"dit": dit, "lora": lora, "vae": tiny_model / "vae" / "Wan2.1_VAE.pth", "text_encoder": tiny_model / "text_encoder",
            "config": config, "state": state, "adapter": adapter}


def run_import(release: dict, out: Path, *extra: str) -> int:
    return main(["import", "--dit", str(release["dit"]), "--lora", str(release["lora"]), "--vae", str(release["vae"]),
                 "--text-encoder", str(release["text_encoder"]), "--out", str(out), "--config", str(release["config"]),
                 "--shard-size", "200KB", "--no-progress", *extra])


def test_import_merges_the_lora_and_edits(official_release, tmp_path: Path, scene):
    out = tmp_path / "model"
    assert run_import(official_release, out) == 0
    shards = sorted((out / "transformer").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1  # the 200KB limit splits the ~0.5 MB DiT
    vae = open_model_folder(out).vae_file
    # a hard link (or a copy) of the official VAE file
    assert vae.read_bytes() == official_release["vae"].read_bytes()
    loaded = load_dit(open_model_folder(out), dtype=torch.bfloat16).state_dict()
    state, adapter = official_release["state"], official_release["adapter"]
    for name, tensor in state.items():
        module = name.removesuffix(".weight")
        if module in ADAPTED and name.endswith(".weight"):
            a, b = adapter[f"base_model.model.{module}.lora_A.weight"], adapter[f"base_model.model.{module}.lora_B.weight"]
            merged = (tensor.float() + (ALPHA / RANK) * (b @ a)).to(torch.bfloat16)
            assert torch.equal(loaded[name], merged), name
            assert not torch.equal(loaded[name], tensor)
        else:
            assert torch.equal(loaded[name], tensor), name
    result = SpatialEditPipeline.from_folder(out, device="cpu").edit(scene, "Rotate the object.", steps=1, resolution=64,
                                                                     progress=False)
    assert result.image.size == (64, 64)


def test_import_refuses_bad_input_and_keeps_existing_folders(official_release, tmp_path: Path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    assert run_import(official_release, busy) == 2
    assert "already holds something" in capsys.readouterr().err
    assert (busy / "mine.txt").read_text() == "keep"

    broken = tmp_path / "broken.pt"
    broken.write_bytes(official_release["dit"].read_bytes()[:1000])
    assert run_import({**official_release, "dit": broken}, tmp_path / "m1") == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err

    (official_release["lora"] / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    assert run_import(official_release, tmp_path / "m2") == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m")]  # no staging folder left behind


def test_config_inferred_from_the_released_shapes_is_the_release_config():
    from lowmem.models.dit import build_dit

    state = build_dit(FULL_DIT_CONFIG, device="meta").state_dict()
    assert infer_dit_config(state) == FULL_DIT_CONFIG
