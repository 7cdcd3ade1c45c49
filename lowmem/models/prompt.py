"""SpatialEdit's text input interface: the chat template, system text, dropped prefix and length cap.

These are facts about the released checkpoint, reproduced exactly from the official pipeline
(`prompt_template_encode["multiple_images"]`, `prompt_template_encode_start_idx`, the demo's user
turn and `max_sequence_length`); tests/test_prompt.py pins them with Qwen's real BPE tokenizer.
"""

from __future__ import annotations

from typing import Any

# The trained system text begins with a space and a literal backslash-n (two characters, not a
# newline): the official template string has "\\n" there.
SYSTEM_PROMPT: str = (
    " \\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:"
)
# What `dropped_prefix_length` gives with the released Qwen3-VL tokenizer (the official
# `prompt_template_encode_start_idx`); the planner sizes the conditioner's input with it.
RELEASED_DROPPED_PREFIX: int = 34
TURN_START: str = "<|im_start|>"
TURN_END: str = "<|im_end|>\n"
SYSTEM_TURN: str = f"{TURN_START}system\n{SYSTEM_PROMPT}{TURN_END}"
ASSISTANT_START: str = f"{TURN_START}assistant\n"

IMAGE_MARKER: str = "<image>\n"  # what the demo writes per input image; replaced by the placeholder
VISION_PLACEHOLDER: str = "<|vision_start|><|image_pad|><|vision_end|>"

# The official call's default `max_sequence_length`: at most the last 4,096 kept tokens.
MAX_TEXT_TOKENS: int = 4096


def user_turn(instruction: str, num_images: int) -> str:
    """The demo's user turn: one `<image>` marker line per image (unless the instruction has its
    own, one per image), then the instruction. The negative prompt is this with instruction ''."""
    markers = instruction.count(IMAGE_MARKER.strip())
    if markers == 0:
        instruction = IMAGE_MARKER * num_images + instruction
    elif markers != num_images or instruction.count(IMAGE_MARKER) != markers:
        raise ValueError(
            f"the instruction has {markers} '<image>' markers for {num_images} images; write one "
            f"'<image>' line (followed by a newline) per image, or none"
        )
    return f"{TURN_START}user\n{instruction}{TURN_END}"


def build_prompt(instruction: str, num_images: int) -> str:
    """The full text the official pipeline gives the Qwen3-VL processor for an image edit."""
    content = user_turn(instruction, num_images).replace(IMAGE_MARKER, VISION_PLACEHOLDER)
    return f"{SYSTEM_TURN}{content}{ASSISTANT_START}"


def dropped_prefix_length(tokenizer: Any) -> int:
    """How many leading hidden states the DiT never sees.

    The official pipeline drops a fixed 34 positions. With Qwen's tokenizer that is exactly the
    system turn plus the `<|im_start|>` opening the user turn, so the kept states start at the
    `user` and newline tokens of the user turn. Counting the tokens of that text gives 34 for
    Qwen's tokenizer and the matching count for any other (the tiny test tokenizer): special
    tokens split the text, so the prefix tokenizes alone exactly as inside the full prompt.
    """
    return len(tokenizer(SYSTEM_TURN + TURN_START, add_special_tokens=False)["input_ids"])
