"""bench/gpu_run.sh and bench/gpu_suite.py: the prepared GPU check runs end to end on the CPU (the
tiny configuration, as CI runs it), and the suite can fail: an error, an out-of-memory or a phase
over its plan is a failed case and a non-zero exit, with every finished case already on disk."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "bench" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(SUITE.parent))  # the suite imports its sibling random_models, as when run as a script
    try:
        yield runpy.run_path(str(SUITE), run_name="gpu_suite")["main"].__globals__  # the functions' own globals
    finally:
        sys.path.remove(str(SUITE.parent))


def test_gpu_run_on_the_cpu_runs_every_step_and_case(suite, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), "--cpu"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped" in (out / "pytest-cuda.txt").read_text()  # the CUDA tests were collected
    result = json.loads((out / "gpu_suite.json").read_text())
    rows = {row["case"]: row for row in result["rows"]}
    assert list(rows) == [case.name for case in suite["CASES"]]
    for name, row in rows.items():
        assert "failed" not in row and len(row["edits"]) == 2, name
        assert set(row["phases"]) == {"encode prompt", "encode image", "denoise", "decode"}
        streamed = [edit["bytes_streamed"] for edit in row["edits"]]
        if not row["capped"]:
            assert streamed == [0, 0], name
            continue
        assert min(streamed) > 0, name  # every block streamed from disk, at every step of both edits
        if row["precision"] == "bf16":  # unquantized (float32 on the CPU): what the plan counts, but the packed
            # layout's 256-byte alignment of each tensor (0.13% of these tiny blocks)
            assert 0 <= row["streamed_per_step"] - row["planned_streamed_per_step"] < 0.005 * row["streamed_per_step"]
    assert "nf4 + SpotEdit, capped" in (out / "gpu_suite.txt").read_text()


def test_a_failing_case_is_recorded_on_disk_and_the_exit_is_1(suite, tmp_path, monkeypatch):
    cases = suite["CASES"]
    on_disk = []

    def measure(case, setup, row):
        results = tmp_path / "gpu_suite.json"
        on_disk.append(len(json.loads(results.read_text())["rows"]) if results.exists() else 0)
        if case is cases[1]:
            raise RuntimeError("a bug nobody expected")
        if case is cases[2]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        row["edits"] = []

    monkeypatch.setitem(suite, "measure", measure)
    assert suite["main"](["--cpu", "--out-dir", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "gpu_suite.json").read_text())["rows"]
    assert [r["case"] for r in rows] == [c.name for c in cases]
    assert rows[1]["failed"] == "RuntimeError: a bug nobody expected" and "measure" in rows[1]["traceback"]
    assert rows[2]["failed"].startswith("out of memory: CUDA out of memory")
    assert all("failed" not in r for i, r in enumerate(rows) if i not in (1, 2))
    assert on_disk == list(range(len(cases)))  # each finished case was written before the next began
    assert not list(tmp_path.glob(".*.part"))


def test_a_phase_over_its_plan_fails_the_case(suite):
    setup = suite["Setup"](torch.device("cuda"), suite["TINY"], 64, 6, Path("."), None, None, context=600 * 2**20)
    gib = 2**30

    def row(reserved_denoise: int) -> dict:
        edit = {"allocated": {"denoise": 8 * gib, "decode": 3 * gib}, "reserved": {"denoise": reserved_denoise,
                                                                                  "decode": 4 * gib},
                "seconds": {"denoise": 1.5}, "bytes_streamed": 6 * gib}
        return {"planned": {"denoise": 10 * gib, "decode": 10 * gib}, "edits": [edit, edit]}

    within = row(9 * gib)
    suite["judge"](within, setup)
    assert "failed" not in within and within["phases"]["denoise"]["held"] == 9 * gib + 600 * 2**20
    over = row(int(9.5 * gib))  # reserved fits the plan, reserved + context does not
    suite["judge"](over, setup)
    assert over["failed"].startswith("denoise held") and "over its plan" in over["failed"]
    assert over["streamed_per_step"] == 1 * gib and over["denoise_measured_s"] == 1.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed when there is no CUDA device")
def test_without_cuda_it_says_so(suite, capsys):
    assert suite["main"]([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--cpu" in err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_synchronizing_calls_are_counted(suite):
    device = torch.device("cuda")
    x = torch.ones(8, device=device)
    with suite["sync_warnings"](device) as quiet:
        y = x * 2
    with suite["sync_warnings"](device) as seen:
        y.sum().item()
    assert quiet == [] and seen
