"""Wan2.1 VAE: official key layout round trip, tiny checkpoint loading, encode/decode, features."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

from lowmem.models.vae import FULL_VAE_CONFIG, TINY_VAE_CONFIG, WanVAE, write_tiny_vae
from lowmem.models.wan_vae_keys import diffusers_from_official, official_from_diffusers


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth"
    write_tiny_vae(path, seed=0)
    return path


@pytest.fixture(scope="module")
def vae(tiny_path: Path) -> WanVAE:
    return WanVAE.from_file(tiny_path, TINY_VAE_CONFIG)


def _images(b: int = 2, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def test_inverse_key_map_round_trips_through_diffusers_converter() -> None:
    torch.manual_seed(0)
    sd = AutoencoderKLWan(**copy.deepcopy(TINY_VAE_CONFIG)).state_dict()
    official = official_from_diffusers(sd)
    assert len(official) == len(sd)
    assert "decoder.conv1.weight" in official and "conv2.weight" in official
    assert any(k.startswith("decoder.upsamples.") for k in official)
    back = convert_wan_vae_to_diffusers(official)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k] is v or torch.equal(back[k], v), k
    assert set(diffusers_from_official(official)) == set(sd)


def test_inverse_key_map_covers_full_config() -> None:
    # Key structure of the real 127M-parameter VAE, built on meta (no memory).
    with torch.device("meta"):
        sd = AutoencoderKLWan(**copy.deepcopy(FULL_VAE_CONFIG)).state_dict()
    assert set(convert_wan_vae_to_diffusers(official_from_diffusers(sd))) == set(sd)


def test_write_tiny_uses_official_names_and_loads(tiny_path: Path, vae: WanVAE) -> None:
    raw = torch.load(tiny_path, map_location="cpu", weights_only=True)
    assert "encoder.conv1.weight" in raw and "decoder.upsamples.3.resample.1.weight" in raw
    assert not any("up_blocks" in k or "conv_in" in k for k in raw)
    assert tiny_path.stat().st_size < 2_000_000
    assert vae.weight_bytes() == sum(v.numel() * v.element_size() for v in raw.values())
    assert not any(p.is_meta for p in vae.module.parameters())
    # Same seed -> same weights.
    other = tiny_path.with_name("again.pth")
    write_tiny_vae(other, seed=0)
    raw2 = torch.load(other, map_location="cpu", weights_only=True)
    assert all(torch.equal(raw[k], raw2[k]) for k in raw)


def test_encode_decode_shapes_and_values(vae: WanVAE) -> None:
    x = _images()
    z = vae.encode(x, torch.Generator().manual_seed(0))
    assert z.shape == (2, 16, 1, 8, 8)
    assert torch.isfinite(z).all()
    y = vae.decode(z)
    assert y.shape == (2, 3, 64, 64)
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1
    saturated = ((y == 0) | (y == 1)).float().mean()
    assert saturated < 0.5 and y.std() > 0
    yt = vae.decode(z, tiled=True, tile=32)
    assert yt.shape == y.shape and torch.isfinite(yt).all()
    assert not vae.module.use_tiling  # tiling state restored


def test_encode_is_deterministic_with_seeded_generator(vae: WanVAE) -> None:
    x = _images(1)
    a = vae.encode(x, torch.Generator().manual_seed(3))
    b = vae.encode(x, torch.Generator().manual_seed(3))
    c = vae.encode(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_decoder_features_match_decode_path(vae: WanVAE) -> None:
    z = vae.encode(_images(2, 64), torch.Generator().manual_seed(0))
    h, w = z.shape[-2:]
    feats = vae.decoder_features(z)
    d = TINY_VAE_CONFIG["base_dim"]
    assert [tuple(f.shape) for f in feats] == [(2, 4 * d, h, w), (2, 4 * d, h, w), (2, 2 * d, 2 * h, 2 * w)]
    # Same activations as inside the real decode (hooks on the decoder stages).
    seen: dict[str, torch.Tensor] = {}
    dec = vae.module.decoder
    hooks = [
        dec.conv_in.register_forward_hook(lambda m, i, o: seen.setdefault("conv_in", o)),
        dec.mid_block.register_forward_hook(lambda m, i, o: seen.setdefault("mid", o)),
        dec.up_blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("up0", o)),
    ]
    try:
        vae.decode(z)
    finally:
        for hk in hooks:
            hk.remove()
    for f, key in zip(feats, ["conv_in", "mid", "up0"]):
        torch.testing.assert_close(f, seen[key][:, :, 0])


def test_safetensors_both_layouts(tmp_path: Path, tiny_path: Path, vae: WanVAE) -> None:
    official = torch.load(tiny_path, map_location="cpu", weights_only=True)
    ref = vae.decode(torch.zeros(1, 16, 1, 4, 4))
    for name, sd in [("off.safetensors", official), ("diff.safetensors", diffusers_from_official(official))]:
        save_file(sd, tmp_path / name)
        other = WanVAE.from_file(tmp_path / name, TINY_VAE_CONFIG, dtype=torch.float32)
        torch.testing.assert_close(other.decode(torch.zeros(1, 16, 1, 4, 4)), ref)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        WanVAE.from_file(tmp_path / "nope.pth", TINY_VAE_CONFIG)


def test_truncated_file(tmp_path: Path, tiny_path: Path) -> None:
    bad = tmp_path / "trunc.pth"
    data = tiny_path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or not a Wan2.1 VAE"):
        WanVAE.from_file(bad, TINY_VAE_CONFIG)


def test_missing_keys_and_wrong_config(tmp_path: Path, tiny_path: Path) -> None:
    sd = torch.load(tiny_path, map_location="cpu", weights_only=True)
    sd.pop("decoder.head.2.weight")
    partial = tmp_path / "partial.pth"
    torch.save(sd, partial)
    with pytest.raises(ValueError, match="corrupt or not a Wan2.1 VAE.*missing"):
        WanVAE.from_file(partial, TINY_VAE_CONFIG)
    with pytest.raises(ValueError, match="corrupt or not a Wan2.1 VAE"):
        WanVAE.from_file(tiny_path, {**TINY_VAE_CONFIG, "base_dim": 8})
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="corrupt or not a Wan2.1 VAE"):
        WanVAE.from_file(foreign, TINY_VAE_CONFIG)


def test_tiled_decode_overlap_sets_the_blend_and_a_whole_image_tile_is_untiled(vae: WanVAE) -> None:
    z = torch.randn(1, 16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    untiled = vae.decode(z)
    quarter, half = vae.decode(z, tiled=True, tile=64), vae.decode(z, tiled=True, tile=64, overlap=0.5)
    assert not torch.equal(quarter, half) and not torch.equal(quarter, untiled)
    assert torch.equal(vae.decode(z, tiled=True, tile=96), untiled)  # one tile holds the whole 96 px image
    with pytest.raises(ValueError, match="overlap"):
        vae.decode(z, tiled=True, tile=64, overlap=1.0)
