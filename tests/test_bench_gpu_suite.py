"""bench/gpu_suite.py: a clear refusal without CUDA, and its whole code path on a small CPU model."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).resolve().parent.parent / "bench" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    return runpy.run_path(str(SUITE), run_name="gpu_suite")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed when there is no CUDA device")
def test_without_cuda_it_says_so(suite, capsys):
    assert suite["main"]([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--cpu-smoke" in err


def test_cpu_smoke_runs_every_case(suite, tmp_path, capsys):
    assert suite["main"](["--cpu-smoke", "--repeats", "1", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [r["case"] for r in result["rows"]] == [c.name for c in suite["CASES"]]
    assert all("step_s" in r and "error" not in r for r in result["rows"])
    streamed = [r for r in result["rows"] if r["capped"]]
    assert all(r["resident_blocks"] < r["blocks"] for r in streamed)
    assert "SpotEdit speed-up" in capsys.readouterr().out
