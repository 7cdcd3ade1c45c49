"""The full-precision tiny pipeline end to end: right size, deterministic for a seed."""

from __future__ import annotations

import numpy as np
import torch

from lowmem import instructions
from lowmem.models.guidance import guided_velocity

PROMPT = "Rotate the object to show the front left side view."


def test_edit_returns_an_image_of_the_input_size(tiny_pipeline, scene):
    result = tiny_pipeline.edit(scene, PROMPT, steps=3, resolution=64, seed=0, progress=False)
    assert result.image.size == (64, 64)
    assert result.image.mode == "RGB"
    report = result.report
    assert report.steps == 3 and (report.width, report.height) == (64, 64)
    assert set(report.phase_seconds) == {"encode prompt", "encode image", "denoise", "decode"}
    assert report.peak_rss_bytes > 0


def test_edit_is_deterministic_for_a_seed(tiny_pipeline, scene):
    runs = [np.asarray(tiny_pipeline.edit(scene, PROMPT, steps=3, resolution=64, seed=seed, progress=False).image)
            for seed in (7, 7, 8)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_non_square_input_goes_to_its_bucket_and_the_report_says_so(tiny_pipeline, scene):
    wide = scene.resize((128, 64))
    result = tiny_pipeline.edit(wide, PROMPT, steps=1, resolution=64, progress=False)
    assert result.image.size == (80, 48)  # the closest-aspect bucket of the 64 px table
    assert result.report.extra["input"].startswith("128x64 -> 80x48")


def test_move_box_is_drawn_on_what_the_model_sees(tiny_pipeline, scene):
    edit = instructions.move_to_box("square", (4, 4, 30, 30), image_size=scene.size)
    result = tiny_pipeline.edit(scene, edit, steps=1, resolution=64, progress=False)
    assert result.input_image.getpixel((4, 10)) == (255, 0, 0)


def test_guidance_is_rescaled_to_the_conditional_norm():
    v_u, v_c = torch.randn(1, 16, 1, 4, 4), torch.randn(1, 16, 1, 4, 4)
    guided = guided_velocity(v_u, v_c, 5.0)
    assert torch.allclose(guided.norm(dim=1), v_c.norm(dim=1), atol=1e-5)
    assert torch.allclose(guided_velocity(v_u, v_c, 1.0), v_c, atol=1e-6)
