"""QwenVLConditioner on a tiny seeded Qwen3-VL folder, loaded through the real from_pretrained path."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # proves nothing here touches the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from lowmem.models.conditioner import QwenVLConditioner
from lowmem.models.prompt import SYSTEM_TURN, TURN_START, build_prompt
from lowmem.tiny.qwen3vl import write_tiny_qwen3vl

INSTRUCTION = "Rotate the object to the left view."


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qwen3vl") / "Qwen3-VL-8B-Instruct"
    write_tiny_qwen3vl(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def cond(tiny_folder: Path) -> QwenVLConditioner:
    return QwenVLConditioner.from_folder(tiny_folder, dtype=torch.bfloat16, device="cpu")


def test_folder_layout_and_seeded_bytes(tiny_folder: Path, tmp_path: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.json",
    ):
        assert (tiny_folder / name).is_file(), name
    total = sum(f.stat().st_size for f in tiny_folder.iterdir())
    assert total < 5_000_000
    again = tmp_path / "again"
    write_tiny_qwen3vl(again, seed=0)
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert (again / shard).read_bytes() == (tiny_folder / shard).read_bytes()


def test_encode_shapes_and_semantics(cond: QwenVLConditioner, image: Image.Image) -> None:
    assert cond.hidden_size == 64
    assert len(cond.decoder_layers) == 2
    assert isinstance(cond.decoder_layers, torch.nn.ModuleList)
    assert cond.weight_bytes() == sum(p.numel() * 2 for p in cond.model.parameters())

    states, mask = cond.encode([image], INSTRUCTION)
    assert states.ndim == 3 and states.shape[0] == 2 and states.shape[2] == 64
    assert mask.shape == states.shape[:2] and mask.dtype == torch.bool
    # Right padding: every row is a run of True then False; the conditional row is the longer one.
    for row in mask:
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    assert mask[1].all() and mask[0].sum() < mask[1].sum()
    assert torch.all(states[0][~mask[0]] == 0)
    n_u = int(mask[0].sum())
    assert not torch.equal(states[0, :n_u], states[1, :n_u])

    other, _ = cond.encode([image], "Scale the object up.")
    assert not torch.equal(other[1], states[1]) or other.shape != states.shape
    # The unconditional row does not depend on the instruction; it is the negative prompt's ("" by default).
    assert torch.equal(other[0, :n_u], states[0, :n_u])
    empty, _ = cond.encode([image], INSTRUCTION, negative="")
    assert torch.equal(empty, states)
    negative, negative_mask = cond.encode([image], INSTRUCTION, negative="blurry, distorted")
    assert negative_mask[0].sum() > mask[0].sum() and torch.equal(negative[1, : mask[1].sum()], states[1, : mask[1].sum()])


def test_deterministic_across_loads(tiny_folder: Path, cond: QwenVLConditioner, image: Image.Image) -> None:
    a = cond.encode([image], INSTRUCTION)
    b = QwenVLConditioner.from_folder(tiny_folder).encode([image], INSTRUCTION)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_kept_states_start_at_the_user_turn_for_the_tiny_tokenizer(cond: QwenVLConditioner, image: Image.Image) -> None:
    tok = cond.processor.tokenizer
    prefix_ids = tok(SYSTEM_TURN + TURN_START, add_special_tokens=False)["input_ids"]
    assert cond.drop_count == len(prefix_ids)
    full = cond.tokenize(build_prompt(INSTRUCTION, 1), [image])
    ids = full["input_ids"][0].tolist()
    # The prompt starts with exactly the prefix tokens; what is kept starts at the user turn's "user".
    assert ids[: cond.drop_count] == prefix_ids
    assert tok.decode(ids[cond.drop_count:]).startswith("user\n<|vision_start|>")
    states, mask = cond.encode([image], INSTRUCTION)
    assert int(mask[1].sum()) == len(ids) - cond.drop_count


def test_truncation_keeps_the_last_tokens(cond: QwenVLConditioner, image: Image.Image) -> None:
    short = QwenVLConditioner(cond.model, cond.processor, max_length=5)
    states, mask = short.encode([image], INSTRUCTION)
    full, _ = cond.encode([image], INSTRUCTION)
    assert states.shape[1] == 5
    assert torch.equal(states[1], full[1, -5:])  # the last tokens are kept


def test_missing_folder_and_config(tmp_path: Path, tiny_folder: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        QwenVLConditioner.from_folder(missing)
    assert str(missing) in str(err.value) and "config.json" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        QwenVLConditioner.from_folder(empty)
    assert str(empty / "config.json") in str(err.value)


def test_unload_frees_model(tiny_folder: Path) -> None:
    c = QwenVLConditioner.from_folder(tiny_folder, dtype=torch.float32)
    assert c.weight_bytes() > 0
    c.to("cpu")
    c.unload()
    with pytest.raises(RuntimeError):
        _ = c.model
