"""Configuration of the SpatialEdit MM-DiT, in the official argument names.

The official release configures `Transformer3DModel` from a Python config file; we keep the same
field names so a `transformer/config.json` written from it (or by `lowmem.tiny.random_model`) reads directly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lowmem.common.json_files import read_json_object
from lowmem.errors import ModelFolderError


@dataclass(frozen=True)
class DiTConfig:
    hidden_size: int = 4096
    heads_num: int = 32
    mm_double_blocks_depth: int = 40
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 16
    out_channels: int = 16
    text_states_dim: int = 4096
    mlp_width_ratio: float = 4.0
    rope_dim_list: tuple[int, int, int] = (16, 56, 56)
    rope_type: str = "rope"
    theta: int = 256
    dit_modulation_type: str = "wanx"
    unpatchify_new: bool = True
    time_freq_dim: int = field(default=256)

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads_num:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads_num {self.heads_num}")
        if sum(self.rope_dim_list) != self.head_dim:
            raise ValueError(f"rope_dim_list {self.rope_dim_list} must sum to the head dim {self.head_dim}")
        if self.patch_size[0] != 1:
            raise ValueError("multi-item (in-context) input needs a temporal patch size of 1")
        if self.dit_modulation_type != "wanx" or self.rope_type != "rope" or not self.unpatchify_new:
            raise ValueError("only the released SpatialEdit variant (wanx modulation, rope, unpatchify_new) is supported")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads_num

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_width_ratio)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "DiTConfig":
        """The config from its JSON fields (unknown ones ignored); ValueError for a value of the wrong
        type or range."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in known.items():
            known[key] = _checked(key, value, getattr(cls, key))
        return cls(**known)

    @classmethod
    def from_file(cls, path: Path) -> "DiTConfig":
        data = read_json_object(path, "write it from the official config, or remove it to use the released 16B one")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ModelFolderError(f"{path}: {exc}") from None


def _checked(key: str, value, default):
    """`value` of the config field `key`, of the type of its `default` (positive for numbers)."""
    def positive_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default) or not all(positive_int(v) for v in value):
            raise ValueError(f"{key} must be a list of {len(default)} positive integers, got {value!r}")
        return tuple(value)
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            raise ValueError(f"{key} must be a {type(default).__name__}, got {value!r}")
    elif isinstance(default, int):
        if not positive_int(value):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
        return float(value)
    return value


FULL_DIT_CONFIG = DiTConfig()

# A few hundred KB of weights: same structure, tiny widths. text_states_dim matches the tiny Qwen3-VL.
TINY_DIT_CONFIG = DiTConfig(
    hidden_size=64,
    heads_num=2,
    mm_double_blocks_depth=2,
    text_states_dim=64,
    rope_dim_list=(8, 12, 12),
)
