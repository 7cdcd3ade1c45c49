"""Wan2.1 VAE for SpatialEdit, on top of diffusers' ``AutoencoderKLWan``.

SpatialEdit encodes condition images with the Wan2.1 VAE (``latent_dist.sample``), normalises the
latents with the VAE's ``latents_mean`` / ``latents_std`` and decodes denormalised latents back to
``[0, 1]`` images. :class:`WanVAE` does exactly that for single images (one latent frame), loads the
official ``Wan2.1_VAE.pth`` (original Wan key names) or a safetensors file in either layout without a
second copy of the weights, and exposes the early decoder activations SpotEdit's token score uses.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from torch import Tensor, nn

from diffusers import AutoencoderKLWan

from lowmem.common.json_files import read_json_object
from lowmem.errors import CorruptCheckpointError, ModelFolderError
from lowmem.models.layout import ModelFolder
from lowmem.models.wan_vae_keys import (
    diffusers_from_official,
    is_diffusers_layout,
    is_official_layout,
    official_from_diffusers,
)

__all__ = ["WanVAE", "FULL_VAE_CONFIG", "TINY_VAE_CONFIG", "VAE_CONFIGS", "write_tiny_vae"]

# The real Wan2.1 VAE: AutoencoderKLWan's defaults, spelled out so the planner and tests can read
# them (latents_mean / latents_std stay the diffusers defaults, which are Wan2.1's statistics).
FULL_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

# Same structure (dim_mult, num_res_blocks, z_dim 16 so the DiT's 16 latent channels and the
# 16 latents_mean/std entries still fit), only narrower: ~240k parameters, ~1 MB in fp32.
TINY_VAE_CONFIG: dict[str, Any] = {**FULL_VAE_CONFIG, "base_dim": 4}

VAE_CONFIGS: dict[str, dict[str, Any]] = {"full": FULL_VAE_CONFIG, "tiny": TINY_VAE_CONFIG}

_SPATIAL = 8  # Wan2.1 VAE spatial compression


def _corrupt(path: Path, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"VAE file {path} is corrupt or not a Wan2.1 VAE: {why}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a VAE checkpoint lazily (mmap) from .pth/.pt/.ckpt or .safetensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            # safe_open maps the file; get_tensor only materialises one tensor at a time.
            with safe_open(str(path), framework="pt", device="cpu") as f:
                sd = {k: f.get_tensor(k) for k in f.keys()}
        else:
            # mmap: the tensors stay backed by the file until cast/moved, so loading with
            # assign=True below never holds a second full copy in RAM.
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, bad header, pickle rejected by weights_only, ...
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    # Some training checkpoints wrap the weights; the official file is the bare state dict.
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise _corrupt(path, "it does not hold a flat dict of tensors")
    return sd



def tile_stride(tile: int, overlap: float = 0.25) -> int:
    """Pixels between tile origins for a tiled decode with `tile`-pixel tiles sharing `overlap` of
    their edge with each neighbour (the planner sizes tiled decodes with the same rule)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"VAE tile overlap must be in [0, 1), got {overlap}")
    # Stride must stay a multiple of 8 (diffusers divides it by the compression ratio).
    return max(_SPATIAL, (tile - round(tile * overlap)) // _SPATIAL * _SPATIAL)

class WanVAE:
    """SpatialEdit's Wan2.1 VAE: normalised single-frame encode / decode around ``AutoencoderKLWan``."""

    def __init__(self, module: AutoencoderKLWan) -> None:
        self.module = module.eval().requires_grad_(False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(
        cls,
        path: Path | str,
        config: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "WanVAE":
        """Load ``Wan2.1_VAE.pth`` (original names) or a ``.safetensors`` (original or diffusers names).

        ``config`` holds ``AutoencoderKLWan`` kwargs; None means the Wan2.1 VAE's architecture with
        the channel width read off the file (96 for the real one).
        Raises FileNotFoundError for a missing file and ValueError for a corrupt / foreign one.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFolderError(f"Wan2.1 VAE file not found: {path}")
        sd = _read_state_dict(path)

        if is_official_layout(sd.keys()):
            sd = diffusers_from_official(sd)
        elif not is_diffusers_layout(sd.keys()):
            raise _corrupt(path, "its keys match neither the original Wan2.1 nor the diffusers layout")

        # Cast per tensor before adopting them: a no-op (still mmap-backed) when the file already has
        # ``dtype``; also avoids ModelMixin.to(dtype=...)'s spurious "keep in float32" warning.
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}

        cfg = copy.deepcopy(FULL_VAE_CONFIG if config is None else config)
        if config is None and "encoder.conv_in.weight" in sd:
            cfg["base_dim"] = sd["encoder.conv_in.weight"].shape[0]
        # Build on the meta device: no parameter memory is allocated, load_state_dict(assign=True)
        # then adopts the (mmap-backed) tensors from the file directly.
        with torch.device("meta"):
            module = AutoencoderKLWan(**cfg)
        try:
            result = module.load_state_dict(sd, strict=False, assign=True)
        except RuntimeError as e:  # shape mismatch: file and config disagree
            raise _corrupt(path, f"shapes do not match the VAE config ({e})") from e
        if result.missing_keys or result.unexpected_keys:
            raise _corrupt(
                path,
                f"missing keys {result.missing_keys[:5]} ({len(result.missing_keys)} in all), "
                f"unexpected keys {result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)",
            )
        leftover = [n for n, t in module.state_dict().items() if t.is_meta]
        if leftover:  # defensive: anything still on meta would crash at first use
            raise _corrupt(path, f"tensors left unloaded: {leftover[:5]}")
        module.to(device)
        return cls(module)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def to(self, device: torch.device | str) -> "WanVAE":
        """Move the weights (in place) and return self."""
        self.module.to(device)
        return self

    def weight_bytes(self) -> int:
        """Bytes held by parameters and buffers (what the memory ledger charges for the VAE)."""
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.module.config
        shape = (1, len(cfg.latents_mean), 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def _check_latents(self, latents: Tensor) -> None:
        z = self.module.config.z_dim
        if latents.ndim != 5 or latents.shape[1] != z or latents.shape[2] != 1:
            raise ValueError(f"expected latents of shape (B, {z}, 1, h, w), got {tuple(latents.shape)}")

    def stages(self, part: str) -> list[nn.Module]:
        """The top-level stages of the "encoder" or the "decoder", each run once per pass (per tile when
        tiled): what a progress bar counts."""
        coder = self.module.encoder if part == "encoder" else self.module.decoder
        blocks = coder.down_blocks if part == "encoder" else coder.up_blocks
        return [*blocks, coder.mid_block]

    # ------------------------------------------------------------------ encode / decode
    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images (B,3,H,W) in [-1,1] -> normalised latents (B,16,1,H/8,W/8).

        Samples the posterior (as the official pipeline does) and returns (z - mean) / std.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % _SPATIAL or w % _SPATIAL:
            raise ValueError(f"image size {h}x{w} must be a multiple of {_SPATIAL}")
        x = images.to(device=self.device, dtype=self.dtype).unsqueeze(2)  # one video frame
        z = self.module.encode(x).latent_dist.sample(generator=generator)
        mean, std = self._stats(z)
        return (z - mean) / std

    @torch.no_grad()
    def decode(self, latents: Tensor, tiled: bool = False, tile: int | None = None, overlap: float = 0.25) -> Tensor:
        """Normalised latents (B,16,1,h,w) -> images (B,3,8h,8w) in [0,1].

        ``tiled`` uses diffusers' spatial tiling (neighbouring tiles blended linearly over their
        overlap); ``tile`` is the tile edge in pixels (multiple of 8, default diffusers' 256) and
        ``overlap`` the fraction of it shared with each neighbour. Tiles differ from the untiled
        decode (the decoder's mid-block attention sees one tile, not the whole latent):
        bench/vae_tiling.py measures by how much.
        """
        self._check_latents(latents)
        z = latents.to(device=self.device, dtype=self.dtype)
        mean, std = self._stats(z)
        z = z * std + mean

        m = self.module
        saved = (m.use_tiling, m.tile_sample_min_height, m.tile_sample_min_width,
                 m.tile_sample_stride_height, m.tile_sample_stride_width)
        try:
            if tiled:
                size = 256 if tile is None else int(tile)
                if size % _SPATIAL or size < 2 * _SPATIAL:
                    raise ValueError(f"VAE tile size must be a multiple of {_SPATIAL} and >= 16, got {size}")
                stride = tile_stride(size, overlap)
                m.enable_tiling(size, size, stride, stride)
            else:
                m.use_tiling = False
            out = m.decode(z).sample  # (B,3,1,H,W), already clamped to [-1,1]
        finally:
            # The module is shared (pipeline, planner); leave its tiling state as we found it.
            (m.use_tiling, m.tile_sample_min_height, m.tile_sample_min_width,
             m.tile_sample_stride_height, m.tile_sample_stride_width) = saved
        return (out[:, :, 0] / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def decoder_features(self, latents: Tensor) -> list[Tensor]:
        """Early decoder activations for SpotEdit's token-LPIPS score.

        Normalised latents (B,16,1,h,w) -> [conv_in (B,4d,h,w), mid_block (B,4d,h,w),
        up_blocks[0] (B,2d,2h,2w)] with d = base_dim (frame axis dropped).
        Runs exactly what ``AutoencoderKLWan._decode`` runs for the first frame: denormalise,
        ``post_quant_conv``, then the decoder stages with a fresh causal-conv cache.
        """
        self._check_latents(latents)
        z = latents.to(device=self.device, dtype=self.dtype)
        mean, std = self._stats(z)
        x = self.module.post_quant_conv(z * std + mean)

        dec = self.module.decoder
        # Fresh per-call cache (one slot per causal conv) and index, as diffusers' clear_cache()
        # builds; passing our own list keeps the module's shared _feat_map untouched. feat_idx must be
        # passed explicitly: the submodules' default ``feat_idx=[0]`` is a shared mutable default.
        # For a first frame every slot is None, so convs use causal zero padding and the
        # upsample3d time_conv is skipped (slot set to "Rep"), i.e. a pure 2x spatial upsample.
        feat_cache: list[Any] = [None] * self.module._cached_conv_counts["decoder"]
        feat_idx = [0]
        feats: list[Tensor] = []

        # conv_in mirrors WanDecoder3d.forward: the cache slot receives the last frames of the input.
        idx = feat_idx[0]
        cache_x = x[:, :, -2:].clone()
        x = dec.conv_in(x, feat_cache[idx])
        feat_cache[idx] = cache_x
        feat_idx[0] += 1
        feats.append(x)

        x = dec.mid_block(x, feat_cache=feat_cache, feat_idx=feat_idx)
        feats.append(x)

        x = dec.up_blocks[0](x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=True)
        feats.append(x)
        return [f[:, :, 0] for f in feats]


def write_tiny_vae(path: Path | str, seed: int = 0) -> None:
    """Write seeded random tiny Wan VAE weights as a ``.pth`` with the ORIGINAL Wan key names.

    PyTorch's default init (fan-in scaled) keeps activations O(1) through the RMS-normed blocks, so
    decoded images are finite and mostly unsaturated. Written atomically (temp file, then rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = AutoencoderKLWan(**copy.deepcopy(TINY_VAE_CONFIG))
    sd = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    official = official_from_diffusers(sd)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(official, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def vae_config(folder: ModelFolder) -> dict[str, Any] | None:
    """The folder's optional `vae/config.json` (AutoencoderKLWan kwargs: a VAE whose architecture
    differs from Wan2.1's beyond its channel width), checked by building that VAE on the meta device,
    so a bad one is refused before any weight of the model is read."""
    config_file = folder.vae_file.parent / "config.json"
    if not config_file.exists():
        return None
    fix = "write AutoencoderKLWan's arguments there, or remove it to use the Wan2.1 VAE's architecture"
    config = read_json_object(config_file, fix)
    try:
        with torch.device("meta"):
            AutoencoderKLWan(**config)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise ModelFolderError(f"{config_file} does not describe a Wan VAE ({type(exc).__name__}: {exc}); {fix}") from None
    return config


def load_folder_vae(folder: ModelFolder, device: torch.device) -> WanVAE:
    """The folder's Wan VAE, as its `vae/config.json` describes it when there is one (`vae_config`)."""
    return WanVAE.from_file(folder.vae_file, config=vae_config(folder), dtype=torch.float32, device=device)
