"""bench/spotedit.py runs in --fast mode, prints its table last and writes JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "spotedit.py"


def test_spotedit_bench_fast(tmp_path):
    out = tmp_path / "spot.json"
    run = subprocess.run([sys.executable, str(BENCH), "--fast", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    last = run.stdout.strip().splitlines()
    assert last[-6].startswith("mode") and last[-1].startswith("spot") and "100%" in last[-1]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["mode"] for r in rows] == ["full", "spot", "spot", "spot", "spot"]
    assert [r["active_fraction"] for r in rows[1:]] == [0.1, 0.3, 0.6, 1.0]
    assert result["cache_bytes"] > 0
    # activation memory follows the active fraction (timings are too noisy to assert on a shared CPU)
    peaks = [r["peak_activation_bytes"] for r in rows]
    assert peaks[1] < peaks[2] < peaks[3] < peaks[4] < peaks[0]
