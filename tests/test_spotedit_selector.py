"""SpotEdit's selector made cheap: the same features and decisions as the full VAE stages in float32,
a third of the convolution work, the compute dtype, and a mask only where the official schedule makes one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from lowmem.models.scheduler import make_scheduler
from lowmem.models.vae import TINY_VAE_CONFIG, WanVAE
from lowmem.spotedit import SpotConfig, spot_denoise
from lowmem.spotedit.score_stages import ScoreStages
from lowmem.spotedit.selector import SpotSelector, tokens_to_latent

WIDE_VAE_CONFIG = {**TINY_VAE_CONFIG, "base_dim": 24}  # attention and every stage, at a width that spreads scores


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    return WanVAE(AutoencoderKLWan(**copy.deepcopy(WIDE_VAE_CONFIG)))


def edited_pair(grid: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(condition, x0_hat, edited tokens): x0_hat is the condition but for a square of tokens."""
    g = torch.Generator().manual_seed(seed)
    condition = torch.randn(1, 16, 1, grid, grid, generator=g)
    square = torch.zeros(grid // 2, grid // 2, dtype=torch.bool)
    square[2:5, 1:4] = True
    x0_hat = condition.clone()
    region = tokens_to_latent(square).expand_as(x0_hat)
    x0_hat[region] += 2.0 * torch.randn(int(region.sum()), generator=g)
    return condition, x0_hat, square


def reference_scores(vae: WanVAE, condition: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """The score as it was computed before: the VAE's own stages (3-D causal convs) in float32."""
    def unit(f):
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

    total = 0
    for feat, ref in zip(vae.decoder_features(x0_hat), vae.decoder_features(condition)):
        diff = (unit(feat.float()) - unit(ref.float())).pow(2).sum(dim=1, keepdim=True)
        total = total + F.interpolate(diff, size=tuple(condition.shape[-2:]), mode="area")
    return F.avg_pool2d(total / 3.0, 2, 2)[0, 0]


def test_one_frame_stages_equal_the_vae_decoder_stages(vae):
    stages = ScoreStages(vae, torch.float32)
    z = torch.randn(2, 16, 1, 12, 10, generator=torch.Generator().manual_seed(3))
    for ours, theirs in zip(stages(z), vae.decoder_features(z)):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # a third of the convolution weights: only the tap that meets the one real frame is kept
    convs = [m for m in vae.module.modules() if type(m).__name__ == "WanCausalConv3d"]
    kept = sum(p.numel() for p in stages.parameters())
    assert kept < sum(p.numel() for p in vae.module.decoder.parameters())
    assert all(p.dtype == torch.float32 for p in stages.parameters()) and convs


@pytest.mark.parametrize("threshold", [0.15, 0.05, "auto"])
def test_decisions_equal_the_float32_vae_score(vae, threshold):
    condition, x0_hat, square = edited_pair()
    selector = SpotSelector(vae, condition, threshold, dilation=1)
    mask = selector.select(x0_hat)
    expected_scores = reference_scores(vae, condition, x0_hat)
    torch.testing.assert_close(selector.last_scores, expected_scores, rtol=1e-4, atol=1e-6)
    reference = SpotSelector.__new__(SpotSelector)
    reference.__dict__.update(selector.__dict__)
    reference.scores = lambda _: expected_scores
    assert torch.equal(mask, reference.select(x0_hat))
    assert bool(mask[square].all()) and not bool(mask.all())


def test_bfloat16_stages_make_the_same_decisions(vae):
    condition, x0_hat, square = edited_pair(seed=1)
    exact = SpotSelector(vae, condition, 0.15)
    cheap = SpotSelector(vae, condition, 0.15, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in cheap.stages.parameters())
    assert torch.equal(cheap.select(x0_hat), exact.select(x0_hat))
    assert (cheap.last_scores - exact.last_scores).abs().max() < 0.02 * exact.last_scores.max()


def test_official_schedule_selects_once_per_segment():
    assert SpotConfig().selection_steps(50) == {4, 14, 23, 32}
    assert SpotConfig().selection_steps(30) == {2, 9, 14, 20}
    assert SpotConfig(initial_steps=2, reset_steps=(4, 5), reference_steps=None).selection_steps(8) == {2, 6}


def test_the_loop_runs_the_selector_only_at_segment_starts(vae, monkeypatch):
    """Before: after every step from the initial ones on (9 of 10 calls here); now: 2."""
    calls: list[int] = []
    original = SpotSelector.select

    def counting(self, x0_hat):
        calls.append(len(calls))
        return original(self, x0_hat)

    monkeypatch.setattr(SpotSelector, "select", counting)
    condition, target, square = edited_pair()
    steps = 10
    sigmas = {round(float(s) * 1000, 3): float(s) for s in make_scheduler(steps).sigmas}

    class Model:  # the clean estimate is `target`: only the square is edited
        def new_cache(self, device=None):
            from lowmem.spotedit import SpotKVCache

            cache = SpotKVCache(1, device)
            cache.recorded[0] = True
            return cache

        def full(self, latents, timestep, *_args, **_kw):
            return (latents[:, -1] - target) / sigmas[round(float(timestep[0]), 3)]

        def partial(self, latents, timestep, states, mask, active, cache, alpha, reused=None):
            return self.full(latents, timestep)

    config = SpotConfig(threshold=0.15, initial_steps=2, reset_steps=(6,), reference_steps=None)
    _, outcome = spot_denoise(Model(), vae, condition, torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool),
                              steps, 5.0, torch.Generator().manual_seed(0), config, torch.device("cpu"), torch.float32,
                              progress=False)
    assert len(calls) == 2
    assert outcome.full_steps == [0, 1, 6] and bool(outcome.edited_mask[square].all())
    assert min(outcome.active_fraction) < 1.0
