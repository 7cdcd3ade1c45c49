"""The edit-success checks of `lowmem.tiny.scene_scoring` pass the ground truth and fail what is not an edit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lowmem.common.image_metrics import psnr, ssim
from lowmem.tiny.scene_scoring import edit_succeeded, object_pixels
from lowmem.tiny.scenes import EDIT_KINDS, HELD_OUT_SEEDS, render_pair

SEEDS = range(HELD_OUT_SEEDS, HELD_OUT_SEEDS + 6)


def _blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(1.0))


def test_object_pixels_find_the_block_and_nothing_else():
    pair = render_pair(5, "move", size=64)
    found = object_pixels(pair.target.image, pair.target_scene)
    assert (found & pair.target.mask).sum() > 0.8 * pair.target.mask.sum()
    assert (found & ~pair.target.mask).sum() < 0.05 * pair.target.mask.sum()
    before = object_pixels(pair.source.image, pair.target_scene)  # the block still where it was
    assert (before & pair.source.mask).sum() > 0.8 * pair.source.mask.sum()
    assert (before & pair.target.mask).sum() < 0.5 * pair.target.mask.sum()


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_the_ground_truth_succeeds_even_through_a_blurring_vae(kind):
    for seed in SEEDS:
        pair = render_pair(seed, kind)
        assert edit_succeeded(pair, pair.target.image), seed
        assert edit_succeeded(pair, _blur(pair.target.image), roundtrip=_blur), seed


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_what_is_not_an_edit_fails(kind):
    copies = 0
    for seed in SEEDS:
        pair = render_pair(seed, kind)
        grey = Image.new("RGB", pair.target.image.size, (128, 128, 128))
        mean = Image.fromarray(np.asarray(pair.source.image).mean(axis=(0, 1)).astype(np.uint8)[None, None].repeat(64, 0).repeat(64, 1))
        assert not edit_succeeded(pair, grey) and not edit_succeeded(pair, mean), seed
        copies += edit_succeeded(pair, pair.source.image)
    assert copies <= 1, f"copying the input passed {copies} of {len(SEEDS)} {kind} edits"


def test_image_metrics():
    a = np.asarray(render_pair(1, "move").source.image)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert 20 < psnr(a, noisy) < 30 and ssim(a, noisy) < 0.9
