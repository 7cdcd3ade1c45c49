"""`lowmem demo` (README's main job): quantize -> plan -> SpotEdit edit -> side-by-side, from nothing."""

from __future__ import annotations

import json

import torch
from PIL import Image

from lowmem.cli import main
from lowmem.cli.demo import DEMO_KIND, DEMO_SEED
from lowmem.models.layout import open_model_folder
from lowmem.models.vae import load_folder_vae
from lowmem.spotedit.selector import two_means_threshold
from lowmem.tiny.scene_scoring import edit_succeeded, vae_roundtrip
from lowmem.tiny.scenes import render_pair
from lowmem.tiny.trained_model import trained_tiny_model


def test_demo_runs_the_whole_flow_on_the_shipped_model_and_the_edit_is_recognisable(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== quantize to nf4" in printed and "== plan" in printed and "== report" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["extra"]["plan"].startswith("dit nf4 2/4 blocks resident, 2 streamed")
    fractions = report["extra"]["spot_active_fraction"]
    assert len(fractions) == 16 and min(fractions) < 1.0, "SpotEdit skipped no token in the demo"
    sizes = {name: Image.open(out / name).size for name in ("input.png", "output.png", "spot_mask.png", "side_by_side.png")}
    assert sizes["output.png"] == sizes["input.png"] == (64, 64)
    assert sizes["side_by_side.png"] == (192, 64)
    # The edit did what was asked, judged against the rendered truth by the bench's own test.
    vae = load_folder_vae(open_model_folder(trained_tiny_model()), torch.device("cpu"))
    pair = render_pair(DEMO_SEED, DEMO_KIND)
    assert edit_succeeded(pair, Image.open(out / "output.png"), vae_roundtrip(vae))


def test_two_means_threshold_splits_two_groups():
    scores = torch.tensor([0.1, 0.12, 0.09, 0.11, 2.0, 2.2, 1.9])
    tau = two_means_threshold(scores)
    assert 0.12 < tau < 1.9
    assert int((scores >= tau).sum()) == 3
    assert two_means_threshold(torch.full((4,), 0.5)) == 0.5
