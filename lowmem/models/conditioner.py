"""Qwen3-VL conditioner: images + instruction -> the hidden states SpatialEdit's DiT reads.

Built on transformers' own Qwen3-VL classes. The text is the official "multiple_images" prompt
(lowmem.models.prompt): the trained system turn, then a user turn holding one vision placeholder
per image and the instruction; the conditioning is the last hidden state without the prefix the
official code drops, at most its last 4,096 tokens. The negative (unconditional) prompt is the same
template with an empty instruction but the same images. Output batch order is [unconditional ;
conditional].
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from torch import nn

from lowmem.errors import ModelFolderError
from lowmem.models.prompt import MAX_TEXT_TOKENS, build_prompt, dropped_prefix_length

_EXPECTED = (
    "a Qwen3-VL-8B-Instruct folder with config.json, model.safetensors or model-*.safetensors "
    "shards with model.safetensors.index.json, tokenizer files (tokenizer.json or vocab.json + "
    "merges.txt, tokenizer_config.json), preprocessor_config.json and chat_template.json"
)


def _check_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming what is missing and what belongs there."""
    if not folder.is_dir():
        raise ModelFolderError(f"Qwen3-VL folder not found: {folder}. Expected {_EXPECTED}.")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"Missing {folder / 'config.json'}: {folder} must be {_EXPECTED}."
        )
    if not list(folder.glob("*.safetensors")):
        raise ModelFolderError(
            f"No *.safetensors weights in {folder}: expected model.safetensors or model-*.safetensors "
            f"shards with model.safetensors.index.json."
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelFolderError(
                f"Weight shard(s) listed in {index} are missing: {', '.join(missing)}."
            )
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise ModelFolderError(
            f"No tokenizer in {folder}: expected tokenizer.json (or vocab.json + merges.txt) "
            f"and tokenizer_config.json."
        )
    if not (folder / "preprocessor_config.json").is_file():
        raise ModelFolderError(
            f"Missing {folder / 'preprocessor_config.json'} (the Qwen2-VL image processor settings)."
        )


def load_processor(folder: Path) -> object:
    """Qwen3VLProcessor for the folder.

    transformers 5.x makes Qwen3VLProcessor require a video processor, and its video processor
    needs torchvision. Without torchvision we build the same processor class with the video part
    left out (we only ever pass images), rather than re-implementing it.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return Qwen3VLProcessor.from_pretrained(str(folder))

    class _ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):  # type: ignore[override]
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image_processor = AutoImageProcessor.from_pretrained(str(folder))
    chat_template = None
    for name in ("chat_template.json", "chat_template.jinja"):
        path = folder / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
            break
    return _ImageOnlyQwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template,
    )


class QwenVLConditioner:
    """Qwen3-VL-8B-Instruct as SpatialEdit's text/image conditioner."""

    def __init__(
        self,
        model: nn.Module,
        processor: object,
        max_length: int = MAX_TEXT_TOKENS,
    ) -> None:
        self._model: nn.Module | None = model
        self._processor = processor
        self.max_length = max_length
        self.drop_count = dropped_prefix_length(processor.tokenizer)
        # Right padding: the DiT mask marks valid tokens from the left.
        self._processor.tokenizer.padding_side = "right"

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_folder(
        cls,
        folder: Path,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        max_length: int = MAX_TEXT_TOKENS,
    ) -> "QwenVLConditioner":
        """Load model + processor from a Qwen3-VL-8B-Instruct-layout folder.

        from_pretrained builds the model on the meta device and fills it straight from the
        safetensors mmap, so the weights are never held twice in RAM.
        """
        from transformers import Qwen3VLForConditionalGeneration

        folder = Path(folder)
        _check_folder(folder)
        processor = load_processor(folder)
        model = Qwen3VLForConditionalGeneration.from_pretrained(
            str(folder),
            dtype=dtype,  # transformers 5 name (torch_dtype is deprecated)
            device_map={"": str(torch.device(device))},
            local_files_only=True,
        )
        model.eval()
        model.requires_grad_(False)
        return cls(model, processor, max_length=max_length)

    # ---------------------------------------------------------------- properties
    @property
    def model(self) -> nn.Module:
        """The Qwen3VLForConditionalGeneration (raises after unload())."""
        if self._model is None:
            raise RuntimeError("QwenVLConditioner was unloaded; load it again with from_folder().")
        return self._model

    @property
    def processor(self) -> object:
        """The Qwen3VLProcessor (tokenizer + image processor + chat template)."""
        return self._processor

    @property
    def hidden_size(self) -> int:
        """Text hidden size: the DiT's text_states_dim."""
        return int(self.model.config.text_config.hidden_size)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The text decoder layers, for the offload streamer."""
        return self.model.model.language_model.layers

    def stages(self) -> list[nn.Module]:
        """The vision blocks and the text decoder layers, each run once per encoded prompt: what a
        progress bar counts."""
        return [*self.model.model.visual.blocks, *self.decoder_layers]

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where inputs must go)."""
        return self.model.model.language_model.embed_tokens.weight.device

    def to(self, device: str | torch.device) -> "QwenVLConditioner":
        """Move all weights to ``device``."""
        self.model.to(device)
        return self

    def unload(self) -> None:
        """Drop the weights so their memory can be reused before denoising."""
        if self._model is None:
            return
        on_cuda = any(p.is_cuda for p in self._model.parameters())
        self._model = None
        gc.collect()
        if on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def weight_bytes(self) -> int:
        """Bytes held by the model's parameters."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    # ---------------------------------------------------------------- encode
    def tokenize(self, text: str, images: list) -> dict:
        """The processor's inputs for one prompt: input_ids (image placeholders expanded), mask, pixels."""
        return self._processor(text=[text], images=images or None, return_tensors="pt", padding=False)

    @torch.inference_mode()
    def _encode_one(self, text: str, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, D) states and (L,) bool mask for one prompt, prefix dropped, tail-truncated."""
        inputs = self.tokenize(text, images)
        mask = inputs["attention_mask"][0].bool()  # stays on the host: the DiT reads the padding there
        device = self.device
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        # The inner Qwen3VLModel: same states, without computing vocabulary logits.
        out = self.model.model(**inputs, output_hidden_states=True, use_cache=False, return_dict=True)
        states = out.hidden_states[-1][0]
        drop = self.drop_count
        states, mask = states[drop:], mask[drop:]
        if states.shape[0] > self.max_length:  # keep the last tokens, as the official code does
            states, mask = states[-self.max_length :], mask[-self.max_length :]
        return states, mask

    def encode(self, images: list, instruction: str, unconditional: bool = True,
               negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``images`` + ``instruction``.

        Returns (states (B, L, D), mask (B, L) bool on the host), rows [unconditional ; conditional],
        right padded with zeros to one length; with ``unconditional=False`` (guidance <= 1) only the
        conditional row, as the official pipeline encodes no negative prompt then. The unconditional
        row is ``negative`` in the same template with the same images ("" as trained and benchmarked).
        """
        images = list(images)
        rows = [self._encode_one(build_prompt(instruction, len(images)), images)]
        if unconditional:
            rows.insert(0, self._encode_one(build_prompt(negative, len(images)), images))
        length = max(s.shape[0] for s, _ in rows)
        dim = rows[0][0].shape[1]
        states = rows[0][0].new_zeros((len(rows), length, dim))
        mask = torch.zeros((len(rows), length), dtype=torch.bool, device=rows[0][1].device)
        for row, (s, m) in enumerate(rows):
            states[row, : s.shape[0]] = s
            mask[row, : m.shape[0]] = m
        return states, mask
