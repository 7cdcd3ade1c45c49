"""On CPU with the disk tier, a run under a quarter of the weights stays within that budget in RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("offload_rss_worker.py")
SLACK = 48 * 2**20  # allocator and page granularity, temporary tensors of torch ops


def run_worker(hidden: int, depth: int, fraction: float) -> dict:
    out = subprocess.run([sys.executable, str(WORKER), str(hidden), str(depth), str(fraction)],
                         check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_disk_tier_peak_rss_stays_under_a_quarter_of_the_weights():
    r = run_worker(512, 16, 0.25)
    assert r["streamed_blocks"] >= 12 and r["bytes_streamed"] > 0
    assert r["ledger_peak"] <= r["budget"]
    grown = r["peak_rss"] - r["baseline_rss"]
    assert grown < r["budget"] + r["activations"] + SLACK, r
    assert grown < r["weights"] / 2, r  # far below what holding the weights would cost
