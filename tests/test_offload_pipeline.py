"""The pipeline under a memory budget: same image as resident, plan and ledger in the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lowmem
from lowmem.cli import main
from lowmem.offload import BudgetError


def test_budgeted_pipeline_matches_resident(tiny_model, tiny_pipeline, scene):
    expected = tiny_pipeline.edit(scene, "rotate the object", steps=3, seed=5, resolution=64, progress=False)
    pipe = lowmem.load(tiny_model, memory_budget="300MB", device="cpu", resolution=64)
    plan = pipe.offload.plan
    assert plan.fits and plan.device == "cpu"
    got = pipe.edit(scene, "rotate the object", steps=3, seed=5, resolution=64, progress=False)
    assert np.array_equal(np.asarray(got.image), np.asarray(expected.image))
    extra = got.report.extra
    assert "plan" in extra and "ledger peak" in extra and "bytes streamed" in extra
    assert pipe.offload.ledger.peak <= plan.budget


def test_budgeted_pipeline_streams_when_forced(tiny_model, tiny_pipeline, scene):
    from lowmem.offload import OffloadRuntime
    from lowmem.pipeline import SpatialEditPipeline
    from lowmem.planning import plan_for

    expected = tiny_pipeline.edit(scene, "move it", steps=2, seed=1, resolution=64, progress=False)
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="cpu")
    plan = plan_for(pipe.dit, "300MB", 64, device="cpu", max_resident_blocks=1, slots=1,
                    vlm_bytes=pipe.conditioner.weight_bytes(), vae_bytes=pipe.vae.weight_bytes())
    pipe.offload = OffloadRuntime(plan, pipe.dit, pipe.vae, pipe.conditioner, pipe.device)
    got = pipe.edit(scene, "move it", steps=2, seed=1, resolution=64, progress=False)
    assert np.array_equal(np.asarray(got.image), np.asarray(expected.image))
    assert pipe.offload.dit.stats()["bytes_streamed"] > 0
    pipe.offload.dit.close()


def test_budget_too_small_for_pipeline(tiny_model):
    with pytest.raises(BudgetError, match="budget of at least"):
        lowmem.load(tiny_model, memory_budget="1MB", device="cpu", resolution=64)


def test_edit_cli_with_budget(tiny_model, tmp_path, scene, capsys):
    image = tmp_path / "in.png"
    scene.save(image)
    out = tmp_path / "out.png"
    code = main(["edit", "--model", str(tiny_model), "--image", str(image), "--out", str(out), "--device", "cpu",
                 "--budget", "300MB", "--steps", "2", "--resolution", "64", "--rotate", "back"])
    assert code == 0 and out.exists()
    assert "ledger peak" in capsys.readouterr().out


def test_a_quantized_preset_quantizes_an_original_folder_and_plans_what_is_loaded(tiny_model):
    from quantize import QuantizedLinear

    pipe = lowmem.load(tiny_model, preset="rtx4090-24gb", device="cpu", resolution=64)
    assert any(isinstance(m, QuantizedLinear) for m in pipe.dit.double_blocks.modules())
    assert pipe.offload.plan.dit.precision == "nf4"
    bf16 = lowmem.load(tiny_model, preset="a100-80gb", device="cpu", resolution=64)
    assert not any(isinstance(m, QuantizedLinear) for m in bf16.dit.modules())
    # the plan counts the weights as they were loaded (float32 on the CPU), not as the preset's bf16
    assert bf16.offload.plan.dit.precision == "fp32"
    assert bf16.offload.plan.dit.weight_bytes == sum(p.numel() * 4 for p in bf16.dit.parameters())


def test_editing_above_the_planned_resolution_is_refused(tiny_model, scene):
    pipe = lowmem.load(tiny_model, memory_budget="300MB", device="cpu", resolution=64)
    with pytest.raises(BudgetError, match="planned for 64px"):
        pipe.edit(scene, "rotate the object", steps=1, resolution=128, progress=False)


def test_auto_budget_plans_for_what_is_free(tiny_model):
    from lowmem.common.machine import available_memory

    pipe = lowmem.load(tiny_model, memory_budget="auto", device="cpu", resolution=64)
    plan = pipe.offload.plan
    assert abs(plan.budget - available_memory("cpu")) < 2**30  # read at load time; other processes move it a little
    assert not plan.streams


def test_conditioner_streamed_by_layer_gives_the_same_image(tiny_model, tiny_pipeline, scene):
    from lowmem.offload import OffloadRuntime
    from lowmem.offload.conditioner_placement import StreamedConditioner
    from lowmem.pipeline import SpatialEditPipeline
    from lowmem.planning import plan_for

    expected = tiny_pipeline.edit(scene, "move it left", steps=2, seed=4, resolution=64, progress=False)
    pipe = SpatialEditPipeline.from_folder(tiny_model, device="cpu")
    plan = plan_for(pipe.dit, "300MB", 64, device="cpu", vlm_bytes=pipe.conditioner.weight_bytes(),
                    vae_bytes=pipe.vae.weight_bytes())
    plan.vlm.placement = "streamed"  # what the planner picks when Qwen3-VL does not fit whole
    pipe.offload = OffloadRuntime(plan, pipe.dit, pipe.vae, pipe.conditioner, pipe.device)
    assert isinstance(pipe.offload.vlm, StreamedConditioner)
    for _ in range(2):  # the slots are given back after each prompt and come back for the next
        got = pipe.edit(scene, "move it left", steps=2, seed=4, resolution=64, progress=False)
        assert np.array_equal(np.asarray(got.image), np.asarray(expected.image))
    stats = pipe.offload.vlm.stats()
    assert stats["streamed_blocks"] == len(pipe.conditioner.decoder_layers) and stats["bytes_streamed"] > 0
    assert pipe.offload.vlm.streamer.slots is None


def test_spotedit_caches_are_counted_in_the_ledger_while_denoising(tiny_model, scene):
    from lowmem.spotedit import SpotConfig

    pipe = lowmem.load(tiny_model, memory_budget="300MB", device="cpu", resolution=64, spot=True)
    caches = pipe.offload.plan.estimate.phases["denoise"]["spotedit caches"]
    assert caches > 0
    ledger = pipe.offload.ledger
    placed = []
    place = ledger.place
    ledger.place = lambda name, nbytes: (placed.append((name, nbytes)), place(name, nbytes))[1]
    pipe.edit(scene, "rotate the object", steps=2, resolution=64, progress=False, spot=SpotConfig(threshold="auto"))
    assert ("spotedit caches (estimate)", caches) in placed
    assert ledger.peak <= pipe.offload.plan.budget
    assert "spotedit caches (estimate)" not in pipe.offload.ledger.items  # released after denoising


def test_closing_a_budgeted_pipeline_gives_back_its_block_files(tiny_model, scene):
    """On the CPU streamed blocks wait in private files: closing (or leaving `with`) removes them,
    and a closed pipeline refuses to edit instead of running parked blocks."""
    from lowmem.errors import LowmemError

    with lowmem.load(tiny_model, memory_budget="300MB", device="cpu", resolution=64, max_resident_blocks=1) as pipe:
        store = pipe.offload.dit.streamer.store
        assert store.tier == "disk" and any(store.folder.iterdir())
        pipe.edit(scene, "rotate the object", steps=1, seed=0, resolution=64, progress=False)
    assert not store.folder.exists()
    with pytest.raises(LowmemError, match="closed"):
        pipe.edit(scene, "rotate the object", steps=1, seed=0, resolution=64, progress=False)


def test_block_files_go_when_the_process_ends_without_close(tmp_path):
    """A script that never closes its pipeline (or its store) still leaves no block files behind."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from torch import nn\n"
        "from lowmem.offload.packing import BlockLayout\n"
        "from lowmem.offload.store import DiskStore\n"
        "store = DiskStore()\n"
        "store.put(0, BlockLayout(nn.Linear(4, 4)))\n"
        "print(store.folder)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("lowmem-blocks-") and not folder.exists()
