"""Guidance as the official sampler does it: CFG batch of two above 1, the conditional alone at <= 1."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from lowmem.common.images import resize_to_bucket, to_model_tensor
from lowmem.models.guidance import guidance_batch, guided_velocity
from lowmem.models.joint_attention import TextPadding
from lowmem.models.scheduler import make_scheduler
from lowmem.spotedit import SpotConfig

PROMPT = "Rotate the object to show the front left side view."


@contextmanager
def dit_batches(dit: torch.nn.Module):
    """Records the batch size of every DiT forward (its final projection runs once per forward)."""
    batches: list[int] = []
    handle = dit.proj_out.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        yield batches
    finally:
        handle.remove()


def test_the_batch_rule_is_the_official_one():
    assert [guidance_batch(g) for g in (0.0, 0.5, 1.0, 1.0001, 5.0)] == [1, 1, 1, 2, 2]


def test_guidance_1_runs_one_conditional_forward_per_step(tiny_pipeline, scene):
    with dit_batches(tiny_pipeline.dit) as batches:
        tiny_pipeline.edit(scene, PROMPT, steps=3, guidance=1.0, resolution=64, progress=False)
    assert batches == [1, 1, 1]
    with dit_batches(tiny_pipeline.dit) as batches:
        tiny_pipeline.edit(scene, PROMPT, steps=3, guidance=5.0, resolution=64, progress=False)
    assert batches == [2, 2, 2]


@torch.inference_mode()
def test_guidance_1_equals_the_cfg_formula_at_1(tiny_pipeline, scene):
    pipe, steps = tiny_pipeline, 4
    source = resize_to_bucket(scene, 64)
    both, both_mask = pipe.conditioner.encode([source], PROMPT)
    cond, cond_mask = pipe.conditioner.encode([source], PROMPT, unconditional=False)
    assert torch.equal(cond[0], both[1]) and torch.equal(cond_mask[0], both_mask[1])  # the same conditional row
    condition = pipe.vae.encode(to_model_tensor(source), generator=torch.Generator().manual_seed(0)).float()

    # The CFG formula at guidance 1 on the batch of two, as lowmem ran every step before.
    scheduler, generator = make_scheduler(steps), torch.Generator().manual_seed(1)
    x = torch.randn(condition.shape, generator=generator)
    padding = TextPadding.from_mask(both_mask)
    for t in scheduler.timesteps:
        items = torch.stack((condition, x), dim=1).expand(2, -1, -1, -1, -1, -1)
        v = pipe.dit(items, t.float().expand(2), both, padding).float()
        x = scheduler.step(guided_velocity(v[:1], v[1:], 1.0), t, x).prev_sample

    one = pipe.denoise(condition, cond, TextPadding.from_mask(cond_mask), steps, 1.0, torch.Generator().manual_seed(1),
                       progress=False)
    assert torch.allclose(one, x, atol=1e-5, rtol=1e-5)


def test_guidance_below_1_is_the_conditional_branch_alone(tiny_pipeline, scene):
    images = [np.asarray(tiny_pipeline.edit(scene, PROMPT, steps=2, guidance=g, seed=3, resolution=64,
                                            progress=False).image) for g in (1.0, 0.5)]
    assert np.array_equal(images[0], images[1])


def test_spotedit_at_guidance_1_runs_batch_1(tiny_pipeline, scene):
    with dit_batches(tiny_pipeline.dit) as batches:
        tiny_pipeline.edit(scene, PROMPT, steps=5, guidance=1.0, resolution=64, progress=False,
                           spot=SpotConfig(threshold="auto"))
    assert batches and set(batches) == {1}


def test_a_budgeted_pipeline_plans_batch_1_for_guidance_1_and_refuses_cfg_later(tiny_model, scene):
    import pytest

    import lowmem
    from lowmem.offload import BudgetError

    pipe = lowmem.load(tiny_model, memory_budget="300MB", device="cpu", resolution=64, guidance=1.0)
    assert pipe.offload.plan.batch == 1
    with dit_batches(pipe.dit) as batches:
        pipe.edit(scene, PROMPT, steps=1, guidance=1.0, resolution=64, progress=False)
    assert batches == [1]
    with pytest.raises(BudgetError, match="guidance=5"):
        pipe.edit(scene, PROMPT, steps=1, guidance=5.0, resolution=64, progress=False)
    assert lowmem.load(tiny_model, memory_budget="300MB", device="cpu", resolution=64).offload.plan.batch == 2
