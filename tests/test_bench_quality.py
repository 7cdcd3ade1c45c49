"""bench/quality.py runs its whole path (edits, quantized variants, SpotEdit, tiled decode) on a tiny model."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from lowmem.scenes import EDIT_KINDS
from lowmem.testing import write_tiny_model

QUALITY = Path(__file__).resolve().parent.parent / "bench" / "quality.py"


def test_quality_bench_fast_on_a_tiny_model(tmp_path, capsys):
    model = write_tiny_model(tmp_path / "tiny")
    out = tmp_path / "quality.json"
    assert runpy.run_path(str(QUALITY))["main"](["--model", str(model), "--fast", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["kind"] for r in result["edits"]] == list(EDIT_KINDS)
    assert all(0 <= r["success"] <= 1 and 0 <= r["copy_success"] <= 1 and r["pairs"] == 1 for r in result["edits"])
    rows = {r["variant"]: r for r in result["quantization"]}
    assert set(rows) == {"int8/bnb", "int8/quanto", "nf4/bnb", "nf4/quanto"}
    for backend in ("bnb", "quanto"):  # holds for any weights: 8 bits per weight err less than 4
        assert rows[f"int8/{backend}"]["velocity_rel_err"] < rows[f"nf4/{backend}"]["velocity_rel_err"]
    assert len(result["spotedit"]) == len(EDIT_KINDS)
    assert "| DiT weights |" in capsys.readouterr().out


def test_quality_bench_needs_a_model():
    with pytest.raises(SystemExit):
        runpy.run_path(str(QUALITY))["main"]([])
