"""bench/vae_tiling.py runs in --fast mode, prints its table last and writes JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "vae_tiling.py"


def test_vae_tiling_bench_fast(tmp_path):
    out = tmp_path / "vae.json"
    run = subprocess.run([sys.executable, str(BENCH), "--fast", "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-5].split()[:3] == ["tile", "px", "overlap"] and len(lines[-4:]) == 4
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tile"], r["overlap"]) for r in rows] == [(64, 0.25), (64, 0.5), (96, 0.25), (96, 0.5)]
    # Tiles are not the untiled decode (finite PSNR), and a wider overlap brings them closer.
    assert all(0 < r["psnr_db"] < math.inf for r in rows)
    assert rows[1]["psnr_db"] > rows[0]["psnr_db"] and rows[3]["psnr_db"] > rows[2]["psnr_db"]
