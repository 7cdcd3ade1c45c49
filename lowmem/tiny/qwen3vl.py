"""A tiny, seeded Qwen3-VL folder in the Qwen3-VL-8B-Instruct on-disk layout.

Tests load it through the real loading code (``from_pretrained``), so nothing here is a mock:
it is a genuine Qwen3-VL checkpoint, only very small, with a tokenizer trained locally (no
network) on a built-in corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Qwen's special tokens, in the order of the real tokenizer (ids follow the BPE vocabulary here).
SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Small English corpus: the system prompt words, the geometric edit vocabulary and filler text, so
# the byte-level BPE learns whole words for what the tests and prompts actually say.
_CORPUS: list[str] = [
    "system\nuser\nassistant\n",
    "system user assistant",
    " \\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships",
    "of the objects and background:",
    "Rotate the object to the front view. Rotate the object to the rear view.",
    "Rotate the object to the left view. Rotate the object to the right view.",
    "Move the object to the red bounding box. Move the object to the left. Move it to the right.",
    "Scale the object up. Make the object bigger. Make the object smaller.",
    "Move the camera. Camera rotation: Yaw 45.0°, Pitch 0.0°. Keep the 3D scene static.",
    "Zoom in. Zoom out. Turn the chair around. Make the cup red. Put the cat on the table.",
    "a red cube, a blue sphere, a green cone, a yellow box, a small dog, a large car, the sky",
    "above below behind in front of next to between on top of under left right center corner",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 15 30 45 90 180 360",
]

# Chat template in the Qwen style: a system turn, user/assistant turns, content items that are
# either text or an image placeholder.
CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Image processing: patch 16, merge 2 -> one LLM token per 32x32 pixels; 64x64..128x128 images map
# to 4..16 tokens.
_PATCH = 16
_MERGE = 2
_MIN_PIXELS = 64 * 64
_MAX_PIXELS = 128 * 128


def _build_tokenizer_json(folder: Path) -> Path:
    """Train a byte-level BPE on the built-in corpus; returns the tokenizer.json path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer is deterministic for a fixed corpus; repeat it so frequent words merge fully.
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    path = folder / "_raw_tokenizer.json"
    tok.save(str(path))
    return path


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _video_preprocessor_config() -> dict:
    """Video processor settings in the 8B layout (unused for editing, kept for completeness)."""
    return {
        "video_processor_type": "Qwen3VLVideoProcessor",
        "processor_class": "Qwen3VLProcessor",
        "size": {"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS * 4},
        "patch_size": _PATCH,
        "temporal_patch_size": 2,
        "merge_size": _MERGE,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_sample_frames": True,
        "fps": 2,
    }


def tiny_qwen3vl_config(vocab_size: int, special_ids: dict[str, int], hidden_size: int = 64) -> "object":
    """The tiny ``Qwen3VLConfig`` (text hidden ``hidden_size``, 2 layers, vision depth 2)."""
    from transformers import Qwen3VLConfig

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        # head_dim 32 -> 16 rotary frequencies split over (t, h, w), interleaved like the 8B model.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "bos_token_id": special_ids["<|endoftext|>"],
        "eos_token_id": special_ids["<|im_end|>"],
        "pad_token_id": special_ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": _PATCH,
        "spatial_merge_size": _MERGE,
        "temporal_patch_size": 2,
        "out_hidden_size": hidden_size,
        "num_position_embeddings": 64,  # an 8x8 learned grid, interpolated like the real one
        "deepstack_visual_indexes": [0, 1],
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=special_ids["<|image_pad|>"],
        video_token_id=special_ids["<|video_pad|>"],
        vision_start_token_id=special_ids["<|vision_start|>"],
        vision_end_token_id=special_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter from one seeded generator, in state-dict order (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                # RMSNorm / LayerNorm weights near 1 keep activations sane.
                p.copy_(1.0 + 0.02 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def write_tiny_qwen3vl(folder: Path, seed: int = 0, hidden_size: int = 64) -> None:
    """Write a complete tiny Qwen3-VL folder (config, 2 weight shards + index, tokenizer, processor).

    The same ``seed`` gives byte-identical weight files. Nothing touches the network.
    """
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLImageProcessorPil,
        Qwen3VLForConditionalGeneration,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    raw = _build_tokenizer_json(folder)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_file=str(raw),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    raw.unlink()
    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS},
        patch_size=_PATCH,
        temporal_patch_size=2,
        merge_size=_MERGE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # Written file by file (not via Qwen3VLProcessor.save_pretrained): that class insists on a
    # video processor, which needs torchvision; the folder layout is the same as the 8B release.
    tokenizer.save_pretrained(str(folder))
    image_processor.save_pretrained(str(folder))
    _write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(folder / "video_preprocessor_config.json", _video_preprocessor_config())
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": special_ids["<|endoftext|>"], "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
         "pad_token_id": special_ids["<|endoftext|>"], "do_sample": False},
    )

    config = tiny_qwen3vl_config(vocab_size, special_ids, hidden_size)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    _seeded_init(model, seed)
    # Small shard size so the tiny model is split into 2 shards + index, like the real checkpoint.
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(str(folder), max_shard_size=int(total * 0.6), safe_serialization=True)
