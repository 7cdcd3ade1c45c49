"""`lowmem train-tiny`: a few seeded iterations lower both losses and write a folder that loads and edits."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from lowmem.cli import main
from lowmem.common.images import to_model_tensor
from lowmem.models.dit_loading import read_dit_config
from lowmem.models.layout import open_model_folder
from lowmem.models.vae import TINY_VAE_CONFIG, WanVAE
from lowmem.pipeline import SpatialEditPipeline
from lowmem.tiny.scenes import HELD_OUT_SEEDS, render_pair
from lowmem.tiny.training import TRAINED_DIT_CONFIG
from lowmem.tiny.training.flow_matching import shifted_sigmas
from lowmem.tiny.training.single_frame import single_frame_convolutions


def _mean(values):
    return sum(values) / len(values)


SMALL_RUN = ["--pairs", "8", "--vae-width", "4", "--vae-steps", "20", "--vae-batch", "2", "--dit-steps", "20", "--dit-batch", "4",
             "--seed", "3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "tiny-trained"
    assert main(["train-tiny", "--out", str(out), *SMALL_RUN]) == 0
    return out


def test_the_same_command_writes_the_same_weights(trained, tmp_path):
    """What lets README say the shipped weights come from one seeded command: a rerun is bit-identical."""
    again = tmp_path / "again"
    assert main(["train-tiny", "--out", str(again), *SMALL_RUN]) == 0
    weights = sorted(p.relative_to(trained) for p in trained.rglob("*.safetensors"))
    assert weights and weights == sorted(p.relative_to(again) for p in again.rglob("*.safetensors"))
    for name in weights:
        assert (trained / name).read_bytes() == (again / name).read_bytes(), name


def test_losses_fall_and_the_record_is_written(trained):
    record = json.loads((trained / "training.json").read_text())
    assert record["settings"]["seed"] == 3 and record["settings"]["pairs"] == 8
    vae, dit = record["vae_loss"], record["dit_loss"]
    assert len(vae) == len(dit) == 20
    assert _mean(vae[-5:]) < _mean(vae[:5])
    assert _mean(dit[-5:]) < _mean(dit[:5])
    assert dit[0] < 10, "latents are not normalised to unit scale"
    assert set(record["seconds"]) == {"render and encode prompts", "train VAE", "train DiT", "total"}


def test_folder_loads_through_the_real_code_and_edits(trained):
    folder = open_model_folder(trained)
    assert read_dit_config(folder) == TRAINED_DIT_CONFIG
    assert folder.vae_file.name == "Wan2.1_VAE.safetensors"
    pair = render_pair(HELD_OUT_SEEDS, "move", size=64)
    with SpatialEditPipeline.from_folder(trained, device="cpu", memory_budget="256MB", resolution=64) as pipe:
        result = pipe.edit(pair.source.image, pair.instruction, steps=2, guidance=2.0, resolution=64, progress=False)
    assert result.image.size == (64, 64)
    assert result.input_image.getpixel(pair.instruction.box[:2]) == (255, 0, 0)


def test_the_trained_vae_posterior_is_not_noise(trained):
    """A posterior sample is what the pipeline encodes: its noise must be small next to the latents."""
    config = json.loads((trained / "vae" / "config.json").read_text())
    module = WanVAE.from_file(trained / "vae" / "Wan2.1_VAE.safetensors", config=config).module
    image = to_model_tensor(render_pair(HELD_OUT_SEEDS, "zoom", size=64).target.image)
    with torch.no_grad():
        posterior = module.encode(image.unsqueeze(2)).latent_dist
    assert float(posterior.std.mean()) < 0.05 * float(posterior.mean.std())


def test_an_existing_output_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train-tiny", "--out", str(out), "--pairs", "1", "--vae-steps", "1", "--dit-steps", "1"]) == 2
    assert "already holds something" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    assert main(["train-tiny", "--out", str(tmp_path / "new"), "--dit-steps", "0"]) == 2


def test_single_frame_convolutions_compute_what_diffusers_computes():
    torch.manual_seed(0)
    module = AutoencoderKLWan(**TINY_VAE_CONFIG).eval()
    x = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        stock = module(x).sample
        with single_frame_convolutions():
            fast = module(x).sample
        again = module(x).sample
    torch.testing.assert_close(fast, stock, atol=1e-4, rtol=1e-4)
    assert torch.equal(again, stock), "the stock forward is restored"


def test_training_noise_levels_follow_the_sampler_shift():
    u = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shifted_sigmas(u), torch.tensor([0.0, 0.75 / 1.25, 1.0]))


def test_gradients_reach_every_dit_weight_through_the_in_place_rope():
    from lowmem.models.dit import build_dit
    from lowmem.models.dit_config import TINY_DIT_CONFIG

    dit = build_dit(TINY_DIT_CONFIG, device="cpu", dtype=torch.float32).train().requires_grad_(True)
    latents = torch.randn(2, 2, 16, 1, 8, 8)
    dit(latents, torch.tensor([500.0, 20.0]), torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.bool)).square().mean().backward()
    last = f"double_blocks.{TINY_DIT_CONFIG.mm_double_blocks_depth - 1}.txt_"  # its text output is discarded
    missing = [name for name, p in dit.named_parameters()
               if not name.startswith(last) and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
