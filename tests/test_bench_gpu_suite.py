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


def test_a_failing_case_is_recorded_and_results_are_written_after_every_case(suite, tmp_path, monkeypatch):
    module = suite["main"].__globals__  # the functions' own globals (run_path hands back a copy)
    cases = module["CASES"]
    seen_on_disk = []

    def measure(case, config, resolution, device, repeats, cap, row):
        seen_on_disk.append(json.loads((tmp_path / "gpu_suite.json").read_text())["rows"] if seen_on_disk or
                            case is not cases[0] else [])
        if case is cases[1]:
            raise RuntimeError("a bug nobody expected")
        row["step_s"] = 0.5

    monkeypatch.setitem(module, "measure", measure)
    assert suite["main"](["--cpu-smoke", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_suite.json").read_text())["rows"]
    assert [r["case"] for r in rows] == [c.name for c in cases]
    assert rows[1]["error"] == "RuntimeError: a bug nobody expected" and "measure" in rows[1]["traceback"]
    assert all(r["step_s"] == 0.5 for i, r in enumerate(rows) if i != 1)
    assert [len(r) for r in seen_on_disk] == list(range(len(cases)))  # every finished case was on disk already
    assert not list(tmp_path.glob("*.part"))


def test_inputs_carry_the_real_text_length_and_the_padded_unconditional_row(suite):
    uncond, cond = suite["text_lengths"](1024)
    assert 1000 < uncond < cond < 1200  # ~1,024 vision tokens + template (+ instruction)
    config = suite["SMOKE_CONFIG"]
    latents, text, padding, t = suite["inputs"](config, 64, torch.device("cpu"))
    uncond, cond = suite["text_lengths"](64)
    assert text.shape == (2, cond, config.text_states_dim) and padding.pads == (cond - uncond, 0)
    assert not text[0, uncond:].any() and text[0, :uncond].any()


def test_table_reports_reserved_bytes_and_allocator_retries(suite):
    row = {"case": "x", "capped": True, "cap_bytes": 24 * 2**30, "resident_blocks": 20, "blocks": 40, "step_s": 1.0,
           "peak_allocated": 20 * 2**30, "peak_reserved": 23 * 2**30, "alloc_retries": 3, "within_cap": True}
    text = suite["table"]({"rows": [row], "ratios": {}})
    header, line = text.splitlines()[:2]
    assert "peak resv" in header and "retries" in header
    assert suite["format_bytes"](23 * 2**30) in line and " 3 " in line
