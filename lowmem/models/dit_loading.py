"""Load the SpatialEdit DiT from a model folder: built on the meta device, filled tensor by tensor.

Each tensor is read from its shard through safetensors' mmap and assigned into the meta-built model
(accelerate's `set_module_tensor_to_device`), so at no point do two copies of the weights exist.
`DiTCheckpoint.fill` loads any part of the model (one block, everything but the blocks, ...), so an
offload plan can load the blocks it keeps resident now and the ones it streams one at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import set_module_tensor_to_device
from safetensors import SafetensorError
from torch import nn

from lowmem.errors import CorruptCheckpointError
from lowmem.models.dit import SpatialEditDiT, build_dit
from lowmem.models.dit_config import FULL_DIT_CONFIG, DiTConfig
from lowmem.models.layout import ModelFolder, open_shard

# Training-only heads that an official checkpoint may carry; inference never uses them.
IGNORED_PREFIXES = ("repa_proj.",)

# Which tensors (by state-dict name) a fill should load.
Selection = Callable[[str], bool]


def everything(name: str) -> bool:
    return True


def outside_blocks(name: str) -> bool:
    return not name.startswith("double_blocks.")


def in_block(index: int) -> Selection:
    prefix = f"double_blocks.{index}."
    return lambda name: name.startswith(prefix)


def read_dit_config(folder: ModelFolder) -> DiTConfig:
    """The folder's transformer/config.json, or the released 16B configuration when absent."""
    if folder.dit_config_file.exists():
        return DiTConfig.from_file(folder.dit_config_file)
    return FULL_DIT_CONFIG


def check_filled(model: nn.Module, select: Selection, what: str) -> None:
    """Raise when a selected tensor of `model` is still on the meta device after a fill."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    missing = sorted(name for name, t in tensors if t.is_meta and select(name))
    if missing:
        raise CorruptCheckpointError(
            f"the {what} checkpoint lacks {len(missing)} tensors (first: {missing[0]}); the download or conversion is incomplete"
        )


class DiTCheckpoint:
    """The DiT tensors of an original model folder (sharded safetensors), read any subset at a time."""

    def __init__(self, folder: ModelFolder):
        self.shards = {n: p for n, p in folder.dit_shards().items() if not n.startswith(IGNORED_PREFIXES)}

    def fill(self, model: SpatialEditDiT, select: Selection, device: torch.device | str, dtype: torch.dtype) -> None:
        """Load the selected tensors into the meta-built `model`, on `device` in `dtype`."""
        expected = dict(model.state_dict())
        by_shard: dict[Path, list[str]] = {}
        for name, shard in self.shards.items():
            if select(name):
                by_shard.setdefault(shard, []).append(name)
        for shard, names in sorted(by_shard.items()):
            with open_shard(shard) as reader:
                for name in names:
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
        check_filled(model, select, "DiT")


def load_dit(
    folder: ModelFolder, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> SpatialEditDiT:
    """The DiT with every weight loaded in `dtype` on `device`; raises on missing/extra/mis-shaped tensors."""
    model = build_dit(read_dit_config(folder), device="meta", dtype=dtype)
    DiTCheckpoint(folder).fill(model, everything, device, dtype)
    return model
