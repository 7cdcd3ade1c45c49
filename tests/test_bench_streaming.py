"""bench/streaming.py runs in --fast mode, prints its table last and writes JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "streaming.py"


def test_streaming_bench_fast(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--fast", "--device", "cpu", "--out", str(out)],
                          check=True, capture_output=True, text=True, timeout=600)
    assert "overlap" in done.stdout.strip().splitlines()[1]
    rows = json.loads(out.read_text())[0]["rows"]
    plans = {(r["plan"], r["runner"]) for r in rows}
    assert {("all resident", "lowmem"), ("half resident", "lowmem"), ("all streamed", "lowmem")} <= plans
    assert any(r["runner"] == "diffusers group" for r in rows)
    for r in rows:
        if r["runner"] == "lowmem":
            assert r["step_s"] > 0 and r["overlap"] > 0
