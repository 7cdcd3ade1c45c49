"""SpotEdit in the pipeline: exact when nothing is skipped; a known edited region is found and the
rest of the image comes back from the condition."""

from __future__ import annotations

import numpy as np
import torch

from lowmem.models.scheduler import make_scheduler
from lowmem.spotedit import SpotConfig, SpotKVCache, spot_denoise
from lowmem.spotedit.selector import tokens_to_latent

PROMPT = "Rotate the object to show the front left side view."


def test_threshold_that_skips_nothing_equals_the_full_path(tiny_pipeline, scene):
    full = tiny_pipeline.edit(scene, PROMPT, steps=6, resolution=64, seed=3, progress=False)
    spot = tiny_pipeline.edit(scene, PROMPT, steps=6, resolution=64, seed=3, progress=False,
                              spot=SpotConfig(threshold=-1.0, initial_steps=2, reset_steps=(4,), reference_steps=None))
    assert np.array_equal(np.asarray(full.image), np.asarray(spot.image))
    assert spot.report.extra["spot_active_fraction"] == [1.0] * 6
    assert full.spot_mask is None and spot.spot_mask is not None
    assert np.asarray(spot.spot_mask).min() == 255  # everything edited


def test_spot_run_reports_fractions_cache_and_mask(tiny_pipeline, scene):
    # the random tiny model scores ~1.2-1.9 everywhere: this threshold skips part of the 4x4 tokens
    config = SpotConfig(threshold=1.6, dilation=0, initial_steps=2, reset_steps=(5,), reference_steps=None)
    result = tiny_pipeline.edit(scene, PROMPT, steps=7, resolution=64, seed=0, progress=False, spot=config)
    extra = result.report.extra
    fractions = extra["spot_active_fraction"]
    assert len(fractions) == 7 and fractions[:2] == [1.0, 1.0] and fractions[5] == 1.0
    assert all(0.0 < f <= 1.0 for f in fractions) and min(fractions) < 1.0, fractions
    assert np.isfinite(np.asarray(result.image, dtype=float)).all()
    assert extra["spot_cache_bytes"] > 0
    assert "spot_active_fraction" in result.report.format()
    assert result.spot_mask.size == result.image.size and result.spot_mask.mode == "L"


class FakeEditModel:
    """A velocity field whose clean estimate is the condition except in a known square of tokens:
    v = (x - target) / sigma, computed for the requested tokens only in partial steps."""

    def __init__(self, target: torch.Tensor, scheduler_sigmas: torch.Tensor):
        self.target = target
        self.sigma_of = {round(float(s) * 1000, 3): float(s) for s in scheduler_sigmas}
        self.partial_calls: list[int] = []

    def new_cache(self, device=None):
        cache = SpotKVCache(1, device)
        cache.recorded[0] = True  # the fake's caches are never read
        return cache

    def _velocity(self, latents, timestep):
        sigma = self.sigma_of[round(float(timestep[0]), 3)]
        x = latents[:, -1]
        return (x - self.target) / sigma

    def full(self, latents, timestep, text_states, text_mask, cache=None):
        return self._velocity(latents, timestep)

    def partial(self, latents, timestep, text_states, text_mask, active, cache, alpha, reused=None):
        self.partial_calls.append(active.numel())
        v = self._velocity(latents, timestep)
        keep = torch.zeros(v.shape[-2] // 2 * (v.shape[-1] // 2), dtype=torch.bool)
        keep[active] = True
        return torch.where(tokens_to_latent(keep.reshape(v.shape[-2] // 2, -1)), v, torch.full_like(v, float("nan")))


def test_synthetic_edit_region_is_selected_and_the_rest_is_the_condition(tiny_pipeline):
    torch.manual_seed(0)
    h = w = 16  # latent grid 16x16 -> 8x8 tokens
    condition = torch.randn(1, 16, 1, h, w)
    target = condition.clone()
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[2:4, 3:6] = True  # the edited tokens
    target[tokens_to_latent(square).expand_as(target)] += 3.0 * torch.randn(int(square.sum()) * 4 * 16)
    steps = 10
    fake = FakeEditModel(target, make_scheduler(steps).sigmas)
    config = SpotConfig(threshold=0.15, initial_steps=2, reset_steps=(6,), reference_steps=None)
    states, mask = torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool)
    latents, outcome = spot_denoise(fake, tiny_pipeline.vae, condition, states, mask, steps, 5.0,
                                    torch.Generator().manual_seed(0), config, torch.device("cpu"), torch.float32, progress=False)
    edited = outcome.edited_mask
    assert bool(edited[square].all()), "the selector must cover the edited square"
    assert edited.float().mean() < 0.9
    assert fake.partial_calls and all(n < 64 for n in fake.partial_calls)  # spot steps ran on fewer tokens
    assert outcome.active_fraction[:2] == [1.0, 1.0] and outcome.active_fraction[6] == 1.0
    assert min(outcome.active_fraction) < 1.0
    assert torch.isfinite(latents).all()
    # non-edited region (away from the border smoothing) equals the condition exactly
    from lowmem.spotedit import dilate
    interior = ~dilate(edited, 1)
    pix = tokens_to_latent(interior).expand_as(latents)
    assert torch.equal(latents[pix], condition[pix])
    # the edited square follows the generated trajectory toward the target
    sq = tokens_to_latent(square).expand_as(latents)
    assert torch.allclose(latents[sq], target[sq], atol=1e-3)


def test_cli_spot_flags_reach_the_pipeline(tiny_model, tmp_path, scene):
    import json

    from lowmem.cli import main

    image = tmp_path / "in.png"
    scene.save(image)
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    code = main(["edit", "--model", str(tiny_model), "--image", str(image), "--out", str(out), "--report", str(report),
                 "--rotate", "rear", "--steps", "3", "--resolution", "64", "--device", "cpu", "--spot", "--spot-threshold", "-1"])
    assert code == 0 and out.exists()
    assert json.loads(report.read_text())["extra"]["spot_active_fraction"] == [1.0, 1.0, 1.0]
    code = main(["demo", "--model", str(tiny_model), "--out-dir", str(tmp_path / "demo"), "--steps", "2", "--spot"])
    assert code == 0 and (tmp_path / "demo" / "spot_mask.png").exists()
