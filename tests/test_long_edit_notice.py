"""Long edits say so before their long phases: a prediction from traced FLOPs and a measured GEMM rate
when it passes a minute, and a bar for every phase without a loop of its own (conditioner, VAE)."""

from __future__ import annotations

import pytest

import lowmem.pipeline.spatial_edit as spatial_edit
from lowmem.planning.edit_time import edit_flops, measured_gemm_rate
from lowmem.planning.phase_peaks import vae_config_key

INSTRUCTION = "Rotate the object to show the left side view."


@pytest.mark.parametrize("threshold, announced", [(0.0, True), (1e9, False)])
def test_an_edit_over_the_threshold_is_announced_before_it_runs(tiny_pipeline, scene, capsys, monkeypatch,
                                                                threshold, announced):
    monkeypatch.setattr(spatial_edit, "LONG_EDIT_SECONDS", threshold)
    tiny_pipeline.edit(scene, INSTRUCTION, steps=2, resolution=64, progress=True)
    err = capsys.readouterr().err
    assert ("predicted to take at least" in err) == announced
    if announced:  # said before the image is encoded, after the prompt (whose length it needs)
        assert err.index("encode prompt done") < err.index("predicted") < err.index("encode image ...")


def test_the_prediction_counts_steps_and_the_vae(tiny_pipeline):
    config, vae = tiny_pipeline.dit.config, vae_config_key(tiny_pipeline.vae.module.config)
    one, three = (edit_flops(config, vae, 64, 64, 20, 2, steps) for steps in (1, 3))
    zero = edit_flops(config, vae, 64, 64, 20, 2, 0)
    assert zero > 0 and three - zero == 3 * (one - zero) > 0  # the VAE once, the DiT per step
    assert measured_gemm_rate(tiny_pipeline.device, tiny_pipeline.dtype) > 1e6


def test_each_phase_bar_total_is_what_the_phase_runs(tiny_pipeline, scene):
    """The bars' totals (stages x passes) are the forwards the phases really make."""
    runs: dict[str, int] = {}

    def counting(name: str):
        def hook(*_) -> None:
            runs[name] = runs.get(name, 0) + 1
        return hook

    parts = {"prompt": tiny_pipeline.conditioner.stages(), "encoder": tiny_pipeline.vae.stages("encoder"),
             "decoder": tiny_pipeline.vae.stages("decoder")}
    handles = [stage.register_forward_hook(counting(name)) for name, stages in parts.items() for stage in stages]
    try:
        tiny_pipeline.edit(scene, INSTRUCTION, steps=2, guidance=5.0, resolution=64, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert runs == {"prompt": 2 * len(parts["prompt"]), "encoder": len(parts["encoder"]), "decoder": len(parts["decoder"])}
