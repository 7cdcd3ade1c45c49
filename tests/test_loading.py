"""Loading a model folder in the official layout through the real loader, and its bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lowmem.errors import CorruptCheckpointError, ModelFolderError, OutputPathError
from lowmem.models.dit_loading import load_dit
from lowmem.models.layout import DIT_INDEX, open_model_folder
from lowmem.tiny.random_model import tiny_dit_state_dict, write_tiny_model


def test_tiny_folder_has_the_official_layout(tiny_model: Path):
    assert (tiny_model / "transformer" / DIT_INDEX).exists()
    shards = sorted(p.name for p in (tiny_model / "transformer").glob("*.safetensors"))
    assert shards == ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert (tiny_model / "vae" / "Wan2.1_VAE.pth").exists()
    assert (tiny_model / "text_encoder" / "config.json").exists()
    assert (tiny_model / "text_encoder" / "tokenizer.json").exists()


def test_loader_reproduces_the_written_weights_exactly(tiny_model: Path):
    model = load_dit(open_model_folder(tiny_model), dtype=torch.bfloat16, device="cpu")
    written = tiny_dit_state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(written)
    for name, tensor in written.items():
        assert torch.equal(loaded[name], tensor), name
    assert not any(p.is_meta for p in model.parameters())


def test_write_tiny_model_is_seeded(tmp_path: Path):
    a = write_tiny_model(tmp_path / "a", seed=3)
    b = write_tiny_model(tmp_path / "b", seed=3)
    for name in ("diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"):
        assert (a / "transformer" / name).read_bytes() == (b / "transformer" / name).read_bytes()
    with pytest.raises(OutputPathError, match="already holds something"):
        write_tiny_model(a)


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "copy"))


def test_missing_folder_parts_are_named(model_copy: Path, tmp_path: Path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        open_model_folder(tmp_path / "nowhere")
    (model_copy / "vae" / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(ModelFolderError, match="Wan2.1_VAE.pth"):
        open_model_folder(model_copy)


def test_missing_shard_is_named(model_copy: Path):
    shard = model_copy / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.unlink()
    with pytest.raises(ModelFolderError, match="00002-of-00002"):
        load_dit(open_model_folder(model_copy), dtype=torch.float32)


def test_truncated_shard_is_reported_as_corrupt(model_copy: Path):
    shard = model_copy / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        load_dit(open_model_folder(model_copy), dtype=torch.float32)


def test_config_that_does_not_match_the_weights(model_copy: Path):
    config_file = model_copy / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["mlp_width_ratio"] = 2.0
    config_file.write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="does not match the weights"):
        load_dit(open_model_folder(model_copy), dtype=torch.float32)


def test_incomplete_index_is_reported(model_copy: Path):
    index_file = model_copy / "transformer" / DIT_INDEX
    index = json.loads(index_file.read_text())
    index["weight_map"].pop("proj_out.weight")
    index_file.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="lacks 1 tensors"):
        load_dit(open_model_folder(model_copy), dtype=torch.float32)
