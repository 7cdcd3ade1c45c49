"""The whole pipeline on a GPU (skipped without CUDA): budgeted and quantized runs against resident."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowmem
from lowmem.pipeline import SpatialEditPipeline
from lowmem.spotedit import SpotConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
PROMPT = "Rotate the object to show the rear side view."


def edit(pipe, scene, **kw):
    return np.asarray(pipe.edit(scene, PROMPT, steps=3, seed=2, resolution=64, progress=False, **kw).image)


def test_budgeted_streaming_on_cuda_matches_resident(tiny_model, scene):
    resident = edit(SpatialEditPipeline.from_folder(tiny_model, device="cuda"), scene)
    pipe = lowmem.load(tiny_model, memory_budget="2GB", device="cuda", resolution=64, max_resident_blocks=1)
    assert pipe.offload.plan.streams
    result = pipe.edit(scene, PROMPT, steps=3, seed=2, resolution=64, progress=False)
    assert np.array_equal(np.asarray(result.image), resident)
    assert 0 < result.report.peak_device_bytes <= pipe.offload.plan.budget
    assert set(result.report.phase_peak_allocated) == {"encode prompt", "encode image", "denoise", "decode"}


def test_quantized_spot_run_on_cuda(tiny_model, scene):
    pipe = lowmem.load(tiny_model, memory_budget="2GB", quantization="nf4", device="cuda", resolution=64, spot=True)
    result = pipe.edit(scene, PROMPT, steps=4, seed=1, resolution=64, progress=False, spot=SpotConfig(threshold="auto"))
    assert result.image.size == (64, 64)
    assert result.report.peak_device_bytes > 0
