"""A whole edit on the `meta` device, one test per plan kind (issue 10, "checks that run without a GPU").

The tiny model folder is loaded through the real planned loading code with the compute device set
to `meta`: the plan is made as for a GPU, weights are read on the host and placed on (or streamed
to) `meta`, and the edit runs the conditioner, the VAE encode, every DiT forward (full and SpotEdit
partial steps, resident, streamed and quantized blocks) and the VAE decode there. Nothing is
computed; any tensor made on the CPU by default and mixed into device math raises, as on CUDA.

Three seams, all in this file, supply what is data-dependent and so cannot come from `meta` (a
fourth, in `test_streamed_conditioner_plan`, asks for a placement the planner never picks for a
model this small):
- `run_qwen3vl_text_path`: transformers' Qwen3-VL turns token ids and image grids into M-RoPE
  positions, vision-token scatter and deepstack masks on the host. The stand-in checks that every
  input our conditioner hands the model is on its device, then runs the real token embedding and
  the real decoder layers (with the placement's hooks) on `meta`; the vision tower is skipped.
- `HostChosenSpots`: SpotEdit's token choice (thresholding the scores) is replaced by a fixed
  host-side mask; the scores themselves (VAE decoder features on `meta`) still run.
- `to_pil`: turning the decoded tensor into pixels needs values; the stand-in checks its shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import lowmem.pipeline.spatial_edit
import lowmem.spotedit.denoise
from lowmem.pipeline import SpatialEditPipeline
from lowmem.spotedit import SpotConfig
from lowmem.spotedit.selector import SpotSelector

META = torch.device("meta")
SIZE = 64


def run_qwen3vl_text_path(pipe: SpatialEditPipeline) -> None:
    inner = pipe.conditioner.model.model  # transformers' Qwen3VLModel

    def forward(input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, **_):
        device = pipe.conditioner.device
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask),
                             ("pixel_values", pixel_values), ("image_grid_thw", image_grid_thw)):
            assert tensor is None or tensor.device == device, f"{name} is on {tensor.device}, the model on {device}"
        embeds = inner.get_input_embeddings()(input_ids)
        positions = torch.zeros(3, *input_ids.shape, dtype=torch.long, device=device)
        return inner.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False,
                                    output_hidden_states=True)

    inner.forward = forward


class HostChosenSpots(SpotSelector):
    """Scores on the device as usual; the edited tokens (the top row of the grid) chosen on the host."""

    def select(self, x0_hat: torch.Tensor) -> torch.Tensor:
        scores = self.scores(x0_hat)
        assert scores.device == x0_hat.device
        edited = torch.zeros(scores.shape, dtype=torch.bool)
        edited[0] = True
        return edited


@pytest.fixture
def decoded(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def to_pil(tensor: torch.Tensor) -> Image.Image:
        seen.append(tensor)
        return Image.new("RGB", (tensor.shape[-1], tensor.shape[-2]))

    monkeypatch.setattr(lowmem.pipeline.spatial_edit, "to_pil", to_pil)
    monkeypatch.setattr(lowmem.spotedit.denoise, "SpotSelector", HostChosenSpots)
    return seen


def meta_edit(folder: Path, decoded: list, spot: bool = False, **load):
    pipe = SpatialEditPipeline.from_folder(folder, device="meta", dtype=torch.bfloat16, resolution=SIZE, spot=spot, **load)
    run_qwen3vl_text_path(pipe)
    config = SpotConfig(initial_steps=1, reset_steps=(), reference_steps=None) if spot else None
    result = pipe.edit(Image.new("RGB", (SIZE, SIZE), (90, 120, 200)), "rotate the cube 90 degrees", steps=3,
                       resolution=SIZE, progress=False, spot=config)
    (image,) = decoded
    assert image.device == META and image.shape == (1, 3, SIZE, SIZE)
    assert all(p.device == META for p in pipe.vae.module.parameters())
    return pipe, result


def test_resident_plan(tiny_model, decoded):
    pipe, result = meta_edit(tiny_model, decoded, memory_budget="80GB")
    plan = pipe.offload.plan
    assert len(plan.dit.resident_blocks) == len(pipe.dit.double_blocks) and plan.vlm.placement == "resident"
    assert all(p.device == META for p in pipe.dit.parameters())
    assert result.report.extra["bytes streamed"] == "0 B"
    latents = torch.empty(1, 16, 1, SIZE // 8, SIZE // 8, device=META, dtype=torch.float32)
    assert pipe.vae.decode(latents, tiled=True, tile=32).shape == (1, 3, SIZE, SIZE)  # the tiled decode too


def test_streamed_plan(tiny_model, decoded):
    pipe, result = meta_edit(tiny_model, decoded, memory_budget="2GB", max_resident_blocks=0)
    stats = pipe.offload.dit.stats()
    assert stats["resident_blocks"] == 0 and stats["streamed_blocks"] == len(pipe.dit.double_blocks)
    assert stats["copies"] >= stats["streamed_blocks"] and result.report.extra["bytes streamed"] != "0 B"


def test_spotedit_plan(tiny_model, decoded):
    pipe, result = meta_edit(tiny_model, decoded, spot=True, memory_budget="2GB", max_resident_blocks=1)
    fractions = result.report.extra["spot_active_fraction"]
    assert fractions[0] == 1.0 and fractions[1:] == [0.25, 0.25]  # two partial steps on the top row of 4x4 tokens
    assert result.report.extra["spot_cache_device"] == "meta"


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_quantized_plan(tiny_model, decoded, scheme):
    pipe, _ = meta_edit(tiny_model, decoded, memory_budget="2GB", max_resident_blocks=1, quantization=scheme)
    assert pipe.offload.plan.dit.precision == scheme
    quantized = [m for m in pipe.dit.double_blocks[0].modules() if type(m).__name__ == "QuantizedLinear"]
    assert quantized and pipe.offload.dit.stats()["streamed_blocks"] == 1


@pytest.mark.parametrize("scheme", [None, "int8", "fp8", "nf4"])
@pytest.mark.parametrize("compute", ["int8", "fp8"])
def test_w8a8_compute_plan(tiny_model, decoded, scheme, compute):
    """Every W8A8 mode over every way the weights are held (dense, each stored scheme), streamed and resident."""
    pipe, result = meta_edit(tiny_model, decoded, memory_budget="2GB", max_resident_blocks=1, quantization=scheme,
                             compute=compute)
    linears = [m for m in pipe.dit.double_blocks[0].modules() if hasattr(m, "compute")]
    assert linears and {m.compute for m in linears} == {compute}
    assert result.report.compute == compute and pipe.offload.dit.stats()["streamed_blocks"] == 1


def test_streamed_conditioner_plan(tiny_model, decoded, monkeypatch):
    """The planner never streams the tiny conditioner (0.6 MB), so its real plan is taken and the
    conditioner's placement switched to "streamed": its decoder layers go through device slots."""
    import lowmem.pipeline.planned_load as planned_load

    real_plan_for = planned_load.plan_for

    def streamed_conditioner(*args, **kwargs):
        plan = real_plan_for(*args, **kwargs)
        plan.vlm.placement = "streamed"
        return plan

    monkeypatch.setattr(planned_load, "plan_for", streamed_conditioner)
    pipe, result = meta_edit(tiny_model, decoded, memory_budget="2GB", max_resident_blocks=0)
    vlm = pipe.offload.vlm
    assert type(vlm).__name__ == "StreamedConditioner" and vlm.stats()["bytes_streamed"] > 0
    assert "vlm bytes streamed" in result.report.extra


def test_host_caches_are_pinned_once_per_pipeline(tiny_model, decoded, cache_arenas):
    """SpotEdit's caches on the host (here asked for; the planner picks it when the card is short):
    two edits of one pipeline make one arena, and closing the pipeline gives it back."""
    arenas = cache_arenas
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="meta", dtype=torch.bfloat16, resolution=SIZE, spot=True,
                                           memory_budget="2GB", max_resident_blocks=1)
    run_qwen3vl_text_path(pipe)
    config = SpotConfig(initial_steps=1, reset_steps=(), reference_steps=None, cache_device="cpu")
    for _ in range(2):
        result = pipe.edit(Image.new("RGB", (SIZE, SIZE)), "rotate the cube", steps=3, resolution=SIZE, progress=False,
                           spot=config)
        assert result.report.extra["spot_cache_device"] == "cpu" and result.report.extra["spot_cache_bytes_moved"] > 0
    assert len(arenas) == 1 and arenas[0].nbytes > 0
    pipe.close()
    assert arenas[0].nbytes == 0
