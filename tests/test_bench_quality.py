"""bench/quality.py runs its whole path (edits, quantized variants, SpotEdit, tiled decode) on a tiny model."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from lowmem.tiny.random_model import write_tiny_model
from lowmem.tiny.scenes import EDIT_KINDS

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
    variants = {(r["variant"], r["kind"]) for r in result["compute"]}
    assert len(variants) == 4 * len(EDIT_KINDS) and all(r["pairs"] == 1 for r in result["compute"])
    out = capsys.readouterr().out
    assert "| DiT weights |" in out and "| int8 W8A8 |" in out


# What the shipped trained model must keep (README's train-tiny section has the full table). Measured
# with 8 pairs per kind: mean success 0.225 against the copy baseline's 0; the margin leaves room for
# one or two edits flipping on another machine's float rounding, not for a worse model.
SUCCESS_MARGIN = 0.15


def test_shipped_model_quality_bounds(tmp_path):
    out = tmp_path / "quality.json"
    assert runpy.run_path(str(QUALITY))["main"](["--per-kind", "8", "--compute-per-kind", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    success = sum(r["success"] for r in result["edits"]) / len(result["edits"])
    copied = sum(r["copy_success"] for r in result["edits"]) / len(result["edits"])
    assert success >= copied + SUCCESS_MARGIN, result["edits"]
    rows = {r["variant"]: r for r in result["quantization"]}
    for backend in ("bnb", "quanto"):
        assert rows[f"int8/{backend}"]["velocity_rel_err"] < rows[f"nf4/{backend}"]["velocity_rel_err"]
        assert rows[f"int8/{backend}"]["psnr_vs_full_db"] > rows[f"nf4/{backend}"]["psnr_vs_full_db"]
    # Issue 25's accuracy target: W8A8 edits within 30 dB of the full-precision ones (measured on 8
    # pairs per kind: int8 55.5 dB, fp8 45.5 dB), each closer than nf4 weight-only (36.3 dB).
    worst = {v: min(r["psnr_vs_full_db"] for r in result["compute"] if r["variant"] == v)
             for v in ("int8 W8A8", "fp8 W8A8", "nf4 weight-only")}
    assert worst["int8 W8A8"] > 30 and worst["fp8 W8A8"] > 30, worst
    mean = {v: sum(r["psnr_vs_full_db"] for r in result["compute"] if r["variant"] == v) for v in worst}
    assert mean["int8 W8A8"] > mean["fp8 W8A8"] > mean["nf4 weight-only"], mean
    skipped = [r for r in result["spotedit"] if r["background_exact"] is not None]
    assert skipped, "SpotEdit kept every token active on every kind"
    assert all(r["background_exact"] for r in skipped), result["spotedit"]
