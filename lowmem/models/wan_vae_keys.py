"""Key maps between the original Wan2.1 VAE checkpoint layout and diffusers' ``AutoencoderKLWan``.

The official SpatialEdit release ships ``Wan2.1_VAE.pth`` with the original Wan key names
(``encoder.conv1``, ``encoder.downsamples.N.residual.K``, ``decoder.upsamples.N``, ``conv1``/``conv2``
for the quant convs, ...). Loading goes through diffusers' own converter
(:func:`diffusers.loaders.single_file_utils.convert_wan_vae_to_diffusers`), so the official direction
is never re-implemented here. The inverse map below exists only so tests and ``lowmem.tiny.random_model`` can
write tiny checkpoints in the official on-disk layout; a round-trip test pins it to the converter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import Tensor

from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

__all__ = [
    "diffusers_from_official",
    "official_from_diffusers",
    "official_key_from_diffusers",
    "is_official_layout",
    "is_diffusers_layout",
]

# Parts of a diffusers WanResidualBlock -> the index inside the original ``residual`` nn.Sequential
# (RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d) or its ``shortcut``.
_RESNET_PARTS: dict[str, str] = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}

# Wan2.1 decoder: every diffusers up block holds (num_res_blocks + 1) resnets and then one upsampler;
# the original flattens them into one ``upsamples`` Sequential, so with num_res_blocks = 2 block b
# starts at flat index 4 * b (resnets at 4b..4b+2, upsampler at 4b+3). diffusers' converter hard-codes
# the same indices, so this holds for every config with num_res_blocks = 2 (real and tiny).
_DEC_STRIDE = 4

_TOP_LEVEL: dict[str, str] = {
    "quant_conv.weight": "conv1.weight",
    "quant_conv.bias": "conv1.bias",
    "post_quant_conv.weight": "conv2.weight",
    "post_quant_conv.bias": "conv2.bias",
}

_RE_SIDE = re.compile(r"^(encoder|decoder)\.(.*)$")
_RE_MID_RESNET = re.compile(r"^mid_block\.resnets\.(\d+)\.(.*)$")
_RE_MID_ATTN = re.compile(r"^mid_block\.attentions\.0\.(.*)$")
_RE_DOWN = re.compile(r"^down_blocks\.(\d+)\.(.*)$")
_RE_UP_RESNET = re.compile(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$")
_RE_UP_SAMPLER = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.(.*)$")


def _resnet_part(rest: str, key: str) -> str:
    try:
        return _RESNET_PARTS[rest]
    except KeyError:
        raise KeyError(f"unknown residual-block parameter in diffusers Wan VAE key {key!r}") from None


def official_key_from_diffusers(key: str) -> str:
    """Map one diffusers ``AutoencoderKLWan`` key to its original Wan2.1 name."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    m = _RE_SIDE.match(key)
    if m is None:
        raise KeyError(f"not a Wan VAE key: {key!r}")
    side, rest = m.groups()

    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.'):]}"
    if rest == "norm_out.gamma":
        return f"{side}.head.0.gamma"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[len('conv_out.'):]}"

    # Middle: resnet, attention, resnet -> middle.0, middle.1, middle.2
    if (mm := _RE_MID_RESNET.match(rest)) is not None:
        i, part = int(mm.group(1)), mm.group(2)
        return f"{side}.middle.{2 * i}.{_resnet_part(part, key)}"
    if (mm := _RE_MID_ATTN.match(rest)) is not None:
        return f"{side}.middle.1.{mm.group(1)}"

    if side == "encoder" and (mm := _RE_DOWN.match(rest)) is not None:
        # The Wan2.1 (non-residual) encoder's down_blocks is already a flat list with the same
        # indices as the original ``downsamples``; resample / time_conv names are unchanged.
        n, part = mm.groups()
        if part.startswith(("resample.", "time_conv.")):
            return f"encoder.downsamples.{n}.{part}"
        return f"encoder.downsamples.{n}.{_resnet_part(part, key)}"

    if side == "decoder":
        if (mm := _RE_UP_RESNET.match(rest)) is not None:
            b, r, part = int(mm.group(1)), int(mm.group(2)), mm.group(3)
            return f"decoder.upsamples.{_DEC_STRIDE * b + r}.{_resnet_part(part, key)}"
        if (mm := _RE_UP_SAMPLER.match(rest)) is not None:
            b, part = int(mm.group(1)), mm.group(2)
            return f"decoder.upsamples.{_DEC_STRIDE * b + _DEC_STRIDE - 1}.{part}"

    raise KeyError(f"no original Wan2.1 name known for diffusers key {key!r}")


def official_from_diffusers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers ``AutoencoderKLWan`` state dict to the original ``Wan2.1_VAE.pth`` names.

    Only meant for writing test checkpoints in the official layout (tensors are not copied).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = official_key_from_diffusers(key)
        if new_key in out:
            raise KeyError(f"two diffusers keys map to the same original key {new_key!r}")
        out[new_key] = value
    return out


def diffusers_from_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original ``Wan2.1_VAE.pth`` state dict to diffusers names (diffusers' converter)."""
    return convert_wan_vae_to_diffusers(state_dict)


def is_official_layout(keys: Iterable[str]) -> bool:
    """True when the key set looks like the original Wan2.1 VAE layout."""
    keys = set(keys)
    return "decoder.conv1.weight" in keys or any(k.startswith("decoder.upsamples.") for k in keys)


def is_diffusers_layout(keys: Iterable[str]) -> bool:
    """True when the key set looks like diffusers' ``AutoencoderKLWan`` layout."""
    keys = set(keys)
    return "decoder.conv_in.weight" in keys or any(k.startswith("decoder.up_blocks.") for k in keys)
