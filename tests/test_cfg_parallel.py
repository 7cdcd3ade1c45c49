"""CFG parallel: `torchrun --nproc-per-node 2 -m lowmem edit ... --parallel cfg` on two gloo CPU ranks.

Each rank runs one CFG row per forward, so the exact reference is one process running the same two
rows as two forwards of one row: that image must be bit-identical. A batch of two rounds differently
in the last float bit (oneDNN picks other kernels for another batch size), so against the usual
single-process batched edit the image may differ by one grey level at most."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lowmem.cli import main

EDIT = ["--steps", "3", "--resolution", "64", "--rotate", "left", "--seed", "5"]


class RowByRowDiT(torch.nn.Module):
    """The DiT called once per batch row: what each CFG-parallel rank computes."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, latents, timestep, states, padding):
        from lowmem.models.joint_attention import TextPadding

        return torch.cat([self.dit(latents[r:r + 1], timestep[r:r + 1], states[r:r + 1], TextPadding(padding.pads[r:r + 1]))
                          for r in range(latents.shape[0])])


def torchrun_edit(model, image, out, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "lowmem", "edit", "--model", str(model), "--image", str(image), "--out", str(out),
               "--device", "cpu", "--parallel", "cfg", "--report", str(out.with_suffix(".json")), *EDIT, *extra]
    # Its own session, so a hang kills the ranks too, not only the launcher.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_two_gloo_ranks_make_the_single_process_image(tiny_model, tiny_pipeline, scene, tmp_path):
    scene.save(tmp_path / "scene.png")
    run = torchrun_edit(tiny_model, tmp_path / "scene.png", tmp_path / "cfg.png")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1, "only rank 0 saves"
    parallel = pixels(Image.open(tmp_path / "cfg.png"))

    from lowmem.instructions import rotate

    edit = dict(steps=3, guidance=5.0, seed=5, resolution=64, progress=False)
    batched = pixels(tiny_pipeline.edit(scene, rotate("object", "left"), **edit).image)
    dit = tiny_pipeline.dit
    tiny_pipeline.dit = RowByRowDiT(dit)
    try:
        row_by_row = pixels(tiny_pipeline.edit(scene, rotate("object", "left"), **edit).image)
    finally:
        tiny_pipeline.dit = dit
    assert np.array_equal(parallel, row_by_row), f"max difference {np.abs(parallel - row_by_row).max()}"
    assert np.abs(parallel - batched).max() <= 1
    report = json.loads((tmp_path / "cfg.json").read_text())
    assert report["guidance"] == 5.0 and report["steps"] == 3


def test_spotedit_and_a_budget_compose_with_cfg_parallel(tiny_model, tiny_pipeline, scene, tmp_path):
    scene.save(tmp_path / "scene.png")
    # the random tiny model scores ~1.2-1.9 everywhere: this threshold skips part of the 4x4 tokens
    spot = ["--spot", "--spot-threshold", "1.6", "--spot-dilation", "0"]
    # Under a budget too: each rank plans its own pipeline for one CFG row per forward.
    run = torchrun_edit(tiny_model, tmp_path / "scene.png", tmp_path / "cfg.png", *spot, "--steps", "6", "--budget", "300MB")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "cfg.json").read_text())["extra"]
    assert report["plan"].startswith("dit fp32") and "of 300.00 MB" in report["plan"], report

    from lowmem.instructions import rotate
    from lowmem.spotedit import SpotConfig

    single = tiny_pipeline.edit(scene, rotate("object", "left"), steps=6, guidance=5.0, seed=5, resolution=64,
                                progress=False, spot=SpotConfig(threshold=1.6, dilation=0))
    assert min(report["spot_active_fraction"]) < 1.0, "no token was skipped: the test would prove nothing"
    assert report["spot_active_fraction"] == single.report.extra["spot_active_fraction"]
    assert np.abs(pixels(Image.open(tmp_path / "cfg.png")) - pixels(single.image)).max() <= 1


@pytest.mark.parametrize("extra, message", [
    (["--guidance", "1"], "no unconditional branch"),
    ([], "torchrun --nproc-per-node 2"),
])
def test_cfg_parallel_refuses_what_it_cannot_split(tiny_model, scene, tmp_path, capsys, monkeypatch, extra, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    scene.save(tmp_path / "scene.png")
    code = main(["edit", "--model", str(tiny_model), "--image", str(tmp_path / "scene.png"), "--out", str(tmp_path / "o.png"),
                 "--parallel", "cfg", *EDIT, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()
