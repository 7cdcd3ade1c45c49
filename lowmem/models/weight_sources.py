"""Reading a component's weights one tensor at a time, and building its model on the meta device.

Every tensor read opens its shard, copies that one tensor out of the mmap and closes the shard
again, so the mapped pages of a multi-GB shard never pile up in the resident set.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from lowmem.common.json_files import read_json_object
from lowmem.errors import CorruptCheckpointError, ModelFolderError
from lowmem.models.dit_loading import IGNORED_PREFIXES, read_dit_config
from lowmem.models.layout import VLM_INDEX, ModelFolder, open_shard


@dataclass
class ComponentSource:
    component: str  # "dit" or "vlm"
    shards: dict[str, Path]  # tensor name -> file
    files: list[Path]  # every file its weights come from (shards + index), for hashing

    def names(self) -> list[str]:
        return list(self.shards)


def read_tensor(path: Path, name: str) -> torch.Tensor:
    with open_shard(path) as reader:
        try:
            return reader.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CorruptCheckpointError(f"{path} is truncated or corrupt at {name!r} ({exc})") from exc


def tensor_bytes(path: Path) -> dict[str, int]:
    """name -> stored bytes of each tensor in the safetensors file `path`, from its header alone
    (checked by `check_shards` first)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: entry["data_offsets"][1] - entry["data_offsets"][0] for name, entry in header.items()
            if name != "__metadata__"}


def check_shards(paths) -> None:
    """Open every shard once (header + size check) before any output is written."""
    for path in sorted(set(paths)):
        with open_shard(path) as reader:
            reader.keys()


def dit_source(folder: ModelFolder) -> ComponentSource:
    shards = {n: p for n, p in folder.dit_shards().items() if not n.startswith(IGNORED_PREFIXES)}
    files = sorted(set(shards.values()))
    index = folder.transformer / "diffusion_pytorch_model.safetensors.index.json"
    return ComponentSource("dit", shards, ([index] if index.exists() else []) + files)


def vlm_source(text_encoder: Path) -> ComponentSource:
    index = text_encoder / VLM_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelFolderError(f"{index} is not a valid safetensors index ({exc}); re-download it") from exc
        shards = {n: text_encoder / f for n, f in weight_map.items()}
        for file in sorted(set(shards.values())):
            if not file.exists():
                raise ModelFolderError(f"Qwen3-VL shard {file} listed in {index.name} is missing; re-download it")
        return ComponentSource("vlm", shards, [index] + sorted(set(shards.values())))
    files = sorted(text_encoder.glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"no *.safetensors weights in {text_encoder}")
    shards = {}
    for file in files:
        with open_shard(file) as reader:
            shards.update({n: file for n in reader.keys()})
    return ComponentSource("vlm", shards, files)


def meta_dit(folder: ModelFolder, dtype: torch.dtype = torch.bfloat16):
    from lowmem.models.dit import build_dit

    config = read_dit_config(folder)
    return build_dit(config, device="meta", dtype=dtype), config


def meta_vlm(text_encoder: Path, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Qwen3VLForConditionalGeneration with meta parameters and real (CPU) non-persistent buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    read_json_object(text_encoder / "config.json", "put the Qwen3-VL-8B-Instruct folder's config.json there")
    try:
        config = AutoConfig.from_pretrained(str(text_encoder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFolderError(f"{text_encoder / 'config.json'} is not a Qwen3-VL config ({exc}); "
                               "put the Qwen3-VL-8B-Instruct folder there") from None
    with init_empty_weights(include_buffers=False):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def check_complete(source: ComponentSource, model: nn.Module) -> None:
    """Raise CorruptCheckpointError unless `source` holds exactly `model`'s tensors with its shapes
    (read from the shard headers, nothing is loaded): a missing block or layer, a foreign tensor or a
    config that does not match the weights is refused before any output is written or any weight read.
    A tensor tied to another one (the same parameter under two names) may be absent."""
    check_names(source, model)
    expected = model.state_dict()
    groups: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), set()).add(name)
    tied = {name: group for group in groups.values() for name in group}
    present = set(source.shards)
    missing = sorted(n for n in expected if n not in present and not tied.get(n, set()) & present)
    what = "DiT" if source.component == "dit" else "Qwen3-VL"
    if missing:
        raise CorruptCheckpointError(
            f"the {what} weights lack {len(missing)} tensors (first: {missing[0]}): the download or copy is incomplete; "
            "fetch the missing files again"
        )
    by_shard: dict[Path, list[str]] = {}
    for name, shard in source.shards.items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in sorted(by_shard.items()):
        with open_shard(shard) as reader:
            for name in names:
                shape = tuple(reader.get_slice(name).get_shape())
                if shape != tuple(expected[name].shape):
                    raise CorruptCheckpointError(
                        f"{name} has shape {shape} in {shard.name} but the {what} config expects {tuple(expected[name].shape)}: "
                        "the weights belong to another model or size"
                    )


def check_names(source: ComponentSource, model: nn.Module) -> None:
    expected = model.state_dict()
    for name in source.names():
        if name not in expected:
            raise CorruptCheckpointError(
                f"{source.shards[name].name} holds {name!r}, which is not a {source.component.upper()} weight of this model"
            )
