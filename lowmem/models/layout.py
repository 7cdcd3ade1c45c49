"""The on-disk layout of a SpatialEdit model folder (the official release's, as lowmem reads it).

    MODEL/
      transformer/diffusion_pytorch_model.safetensors.index.json   shard index (weight_map)
      transformer/diffusion_pytorch_model-0000K-of-0000N.safetensors
      transformer/config.json                                      optional: DiT config, official names
      vae/Wan2.1_VAE.pth                                           the Wan2.1 VAE, original key names
      text_encoder/                                                a Qwen3-VL-8B-Instruct folder

A single `transformer/diffusion_pytorch_model.safetensors` (no index) is accepted too, and the VAE
may be a `.safetensors` file. A quantized folder written by `lowmem quantize` has the same
`vae/` and `text_encoder/` parts plus its own `manifest.json`.

Opening a folder reads every small JSON file of it (the configs, the shard indexes, the tokenizer's
and processor's settings), so a damaged one is named before any weight is read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from lowmem.common.json_files import read_json_object
from lowmem.errors import CorruptCheckpointError, ModelFolderError

DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SINGLE = "diffusion_pytorch_model.safetensors"
VAE_CANDIDATES = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors")
VLM_INDEX = "model.safetensors.index.json"
# The text encoder's settings transformers reads (tokenizer.json, the vocabulary, is left to the tokenizer).
TEXT_ENCODER_CONFIGS = ("config.json", "generation_config.json", "preprocessor_config.json",
                        "video_preprocessor_config.json", "tokenizer_config.json", "chat_template.json")
_HF_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


@dataclass(frozen=True)
class ModelFolder:
    root: Path
    transformer: Path
    vae_file: Path
    text_encoder: Path

    @property
    def dit_config_file(self) -> Path:
        return self.transformer / "config.json"

    @property
    def is_quantized(self) -> bool:
        """A `lowmem quantize` output: per-block files described by manifest.json (read by lowmem.loading)."""
        return (self.root / "manifest.json").is_file()

    def dit_shards(self) -> dict[str, Path]:
        """tensor name -> shard file, from the index (or the single file's own header)."""
        index = self.transformer / DIT_INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ModelFolderError(f"{index} is not a valid safetensors index ({exc}); re-download it") from exc
            shards = {name: self.transformer / file for name, file in weight_map.items()}
            for file in sorted(set(shards.values())):
                if not file.exists():
                    raise ModelFolderError(f"DiT shard {file} listed in {index.name} is missing; re-download it")
            return shards
        single = self.transformer / DIT_SINGLE
        if single.exists():
            with open_shard(single) as f:
                return {name: single for name in f.keys()}
        raise ModelFolderError(f"{self.transformer} holds neither {DIT_INDEX} nor {DIT_SINGLE}")


def open_shard(path: Path):
    """A safetensors reader (mmap) for `path`, or one CorruptCheckpointError saying to re-fetch it."""
    try:
        return safe_open(path, "pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpointError(f"{path} is truncated or corrupt ({exc}); re-download or re-convert it") from exc


def open_model_folder(path: str | Path) -> ModelFolder:
    """Check that `path` has the SpatialEdit layout; raise ModelFolderError naming what is missing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelFolderError(f"model folder {root} does not exist; pass the folder holding transformer/, vae/ and text_encoder/")
    transformer = root / "transformer"
    if not transformer.is_dir():
        raise ModelFolderError(f"{root} has no transformer/ folder: this is not a SpatialEdit model folder")
    vae_dir = root / "vae"
    vae_file = next((vae_dir / name for name in VAE_CANDIDATES if (vae_dir / name).exists()), None)
    if vae_file is None:
        raise ModelFolderError(f"{vae_dir} holds no {' or '.join(VAE_CANDIDATES)}; download the Wan2.1 VAE into it")
    text_encoder = root / "text_encoder"
    if not (text_encoder / "config.json").exists():
        raise ModelFolderError(f"{text_encoder} holds no config.json; put the Qwen3-VL-8B-Instruct folder there")
    check_configs(transformer, vae_dir, text_encoder)
    manifest = root / "manifest.json"
    if manifest.exists() and not manifest.is_file():  # else the folder would be read as an original one
        raise ModelFolderError(f"{manifest} is not a file; a `lowmem quantize` folder holds its manifest.json as a "
                               "file: re-run the conversion")
    return ModelFolder(root=root, transformer=transformer, vae_file=vae_file, text_encoder=text_encoder)


def check_configs(transformer: Path, vae_dir: Path, text_encoder: Path) -> None:
    """Every config and shard index of the folder parses (one ModelFolderError naming the file), and a
    sharded text encoder has the index that lists its shards."""
    fix = "restore it from the release (download it again), or re-run the command that wrote this folder"
    for config in (transformer / "config.json", vae_dir / "config.json", *(text_encoder / n for n in TEXT_ENCODER_CONFIGS)):
        if config.exists():
            read_json_object(config, fix)
    for index in (transformer / DIT_INDEX, text_encoder / VLM_INDEX):
        if index.exists():
            weight_map = read_json_object(index, fix).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise ModelFolderError(f"{index} has no weight_map (tensor name -> shard file); {fix}")
    shards = sorted(p.name for p in text_encoder.glob("model-*-of-*.safetensors") if _HF_SHARD.fullmatch(p.name))
    if shards and not (text_encoder / VLM_INDEX).exists():
        raise ModelFolderError(f"{text_encoder} holds the shards {', '.join(shards)} but no {VLM_INDEX}, which says which "
                               f"tensor each holds; download it from the Qwen3-VL-8B-Instruct release into {text_encoder}")
