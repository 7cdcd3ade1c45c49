"""The official input rule: bucket of closest aspect ratio, covering bilinear resize, centre crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lowmem.common.images import bucket_table, fit_bucket, resize_to_bucket
from lowmem.errors import InstructionError, ResolutionError

# The official 1024 table, (width, height) in the official order. Obtained in a scratch script by
# evaluating the public SpatialEdit code's `_generate_hw_buckets()` (src/config.py, defaults: 256x256,
# step 16, max ratio 4), whose (h, w) entries `generate_video_image_bucket(basesize=1024)` multiplies
# by 1024 // 256 = 4, and swapping each to (w, h).
OFFICIAL_1024 = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (512, 1792), (576, 1792), (576, 1728), (576, 1664),
    (576, 1600), (640, 1600), (640, 1536), (640, 1472), (704, 1472), (704, 1408), (704, 1344), (768, 1344),
    (768, 1280), (768, 1216), (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024),
    (1024, 1024), (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1216, 768),
    (1280, 768), (1344, 768), (1344, 704), (1408, 704), (1472, 704), (1472, 640), (1536, 640), (1600, 640),
    (1600, 576), (1664, 576), (1728, 576), (1792, 576), (1792, 512), (1856, 512), (1920, 512), (1984, 512),
    (2048, 512),
)

# input (w, h) -> (bucket, covering resize, crop offset (left, top)) under the official
# `_dynamic_resize_from_bucket(image, basesize=1024)` (src/utils/__init__.py): the bucket minimising
# |bh / bw - h / w| (first on ties), scale = max(bh / h, bw / w), resized = ceil(side * scale),
# torchvision centre crop offset = int(round((resized - bucket) / 2)). Worked by hand, e.g.
# 1600x1200: aspect 0.75 -> 1152x896 (0.778; 1216x832 gives 0.684); scale = 896/1200 -> 1195x896, left 22.
OFFICIAL_FITS = {
    (1600, 1200): ((1152, 896), (1195, 896), (22, 0)),
    (1920, 1080): ((1344, 768), (1366, 768), (11, 0)),
    (1080, 1920): ((768, 1344), (768, 1366), (0, 11)),
    (1024, 1024): ((1024, 1024), (1024, 1024), (0, 0)),
    (500, 500): ((1024, 1024), (1024, 1024), (0, 0)),
    (3024, 4032): ((896, 1152), (896, 1195), (0, 22)),
    (1201, 1000): ((1088, 896), (1088, 906), (0, 5)),
    (5000, 500): ((2048, 512), (5120, 512), (1536, 0)),
}


def test_the_1024_table_is_the_official_one():
    assert bucket_table(1024) == OFFICIAL_1024
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024**2 for w, h in OFFICIAL_1024)


def test_other_official_base_sizes_are_the_256_table_scaled():
    base = bucket_table(256)
    for size in (512, 768, 1024):
        k = size // 256
        assert bucket_table(size) == tuple((w * k, h * k) for w, h in base)


@pytest.mark.parametrize("source", sorted(OFFICIAL_FITS))
def test_bucket_choice_resize_and_crop_follow_the_official_rule(source):
    fit = fit_bucket(*source, base_size=1024)
    assert (fit.bucket, fit.resized, fit.offset) == OFFICIAL_FITS[source]


def test_resize_is_bilinear_to_cover_then_centre_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    out = resize_to_bucket(image, 1024)
    assert out.size == (1152, 896)
    expected = image.resize((1195, 896), Image.Resampling.BILINEAR).crop((22, 0, 22 + 1152, 896))
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_small_base_sizes_use_the_same_rule_on_a_16_pixel_grid():
    assert fit_bucket(128, 64, base_size=64).bucket == (80, 48)
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in bucket_table(64))


def test_a_box_maps_through_the_same_resize_and_crop():
    fit = fit_bucket(1600, 1200, base_size=1024)  # x * 1195/1600 - 22, y * 896/1200
    assert fit.map_box((400, 300, 800, 900)) == (277, 224, 576, 672)
    assert fit.map_box((0, 0, 1600, 1200)) == (0, 0, 1152, 896)  # clipped to what is kept
    with pytest.raises(InstructionError, match="cropped away"):
        fit.map_box((0, 0, 20, 100))


@pytest.mark.parametrize("size", [0, 63, 100])
def test_a_resolution_off_the_16_pixel_grid_is_refused(size):
    with pytest.raises(ResolutionError, match="multiple of 16"):
        bucket_table(size)
