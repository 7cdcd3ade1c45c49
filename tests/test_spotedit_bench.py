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
    assert last[-7].startswith("mode") and last[-2].startswith("spot") and "100%" in last[-2]
    assert last[-1].startswith("FLOPs at 1024²")
    result = json.loads(out.read_text())
    assert result["schedule"] == {"steps": 30, "full": 5, "spot": 25, "selections": 4}
    (size,) = result["sizes"]
    rows = size["rows"]
    assert [r["mode"] for r in rows] == ["full", "spot", "spot", "spot", "spot"]
    assert [r["active_fraction"] for r in rows[1:]] == [0.1, 0.3, 0.6, 1.0]
    assert size["cache_bytes"] > 0 and size["selector_s"] > 0 and size["selector_old_s"] > 0
    for r in rows[1:]:  # the selector is counted in every speed-up but the DiT-only one
        assert r["speedup_with_selector"] <= r["speedup"] and r["speedup_selector_old_every_step"] < r["speedup"]
        assert r["run_speedup"] > 0
    # activation memory follows the active fraction (timings are too noisy to assert on a shared CPU)
    peaks = [r["peak_activation_bytes"] for r in rows]
    assert peaks[1] < peaks[2] < peaks[3] < peaks[4] < peaks[0]
    # full size at 1024²: the selector is a small fraction of a DiT step, and less than before
    flops = result["flops"]
    assert flops["selector"] < flops["selector_old"] and flops["selector_fraction_of_step"] < 0.01
    assert flops["dit_step"] > 1e14
