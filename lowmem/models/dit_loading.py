"""Load the SpatialEdit DiT from a model folder: built on the meta device, filled tensor by tensor.

Each tensor is read from its shard through safetensors' mmap and assigned into the meta-built model
(accelerate's `set_module_tensor_to_device`), so at no point do two copies of the weights exist.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import set_module_tensor_to_device
from safetensors import SafetensorError, safe_open

from lowmem.errors import CorruptCheckpointError
from lowmem.models.dit import SpatialEditDiT, build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.models.layout import ModelFolder

# Training-only heads that an official checkpoint may carry; inference never uses them.
IGNORED_PREFIXES = ("repa_proj.",)


def read_dit_config(folder: ModelFolder) -> DiTConfig:
    """The folder's transformer/config.json, or the released 16B configuration when absent."""
    if folder.dit_config_file.exists():
        return DiTConfig.from_file(folder.dit_config_file)
    return FULL_DIT_CONFIG


def open_shard(path: Path):
    try:
        return safe_open(path, "pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpointError(f"{path} is truncated or corrupt ({exc}); re-download or re-convert it") from exc


def load_dit(
    folder: ModelFolder, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> SpatialEditDiT:
    """The DiT with every weight loaded in `dtype` on `device`; raises on missing/extra/mis-shaped tensors."""
    config = read_dit_config(folder)
    model = build_dit(config, device="meta", dtype=dtype)
    expected = dict(model.state_dict())
    by_shard: dict[Path, list[str]] = {}
    for name, shard in folder.dit_shards().items():
        by_shard.setdefault(shard, []).append(name)

    loaded: set[str] = set()
    for shard, names in sorted(by_shard.items()):
        with open_shard(shard) as reader:
            for name in names:
                if name.startswith(IGNORED_PREFIXES):
                    continue
                if name not in expected:
                    raise CorruptCheckpointError(f"{shard.name} holds {name!r}, which is not a SpatialEdit DiT weight")
                try:
                    tensor = reader.get_tensor(name)
                except (SafetensorError, OSError) as exc:
                    raise CorruptCheckpointError(f"{shard} is truncated or corrupt at {name!r} ({exc})") from exc
                if tensor.shape != expected[name].shape:
                    raise CorruptCheckpointError(
                        f"{name} has shape {tuple(tensor.shape)} in {shard.name} but the config expects "
                        f"{tuple(expected[name].shape)}; transformer/config.json does not match the weights"
                    )
                set_module_tensor_to_device(model, name, device, value=tensor, dtype=dtype)
                loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing:
        raise CorruptCheckpointError(
            f"the DiT checkpoint lacks {len(missing)} tensors (first: {missing[0]}); the download is incomplete"
        )
    return model
