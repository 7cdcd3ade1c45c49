"""Every script in examples/ runs on the tiny model and writes its image."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_there_is_an_example_per_geometric_edit():
    names = {p.stem for p in SCRIPTS}
    assert {"rotate_object", "move_object", "scale_object", "camera_orbit", "camera_zoom"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_runs(script: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "out.png"
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(out), "--steps", "2"])
    monkeypatch.syspath_prepend(str(EXAMPLES))
    runpy.run_path(str(script), run_name="__main__")
    assert Image.open(out).size == (64, 64)
    assert "saved" in capsys.readouterr().out
