"""bench/quant.py --fast runs and reports every scheme/backend against bf16."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from quantize.schemes import SCHEME_BACKENDS, SCHEMES

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quant_fast(tmp_path):
    out = tmp_path / "quant.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quant.py"), "--fast", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "default backend per scheme measured on cpu" in proc.stdout.strip().splitlines()[-1]
    result = json.loads(out.read_text())
    kernels = result["kernels"]
    assert {(r["scheme"], r["backend"], r["dtype"]) for r in kernels["rows"]} == {
        (s, b, d) for s in SCHEMES for b in SCHEME_BACKENDS[s] for d in ("float32", "bfloat16")}
    for r in kernels["rows"]:
        assert r["dequant_ms"] > 0 and set(r["matmul_ms"]) == set(r["dense_ms"]) == {str(m) for m in kernels["tokens"]}
        assert bool(r["fused_ms"]) == (r["scheme"] == "int8") and (r["library_ms"] is not None) == (r["backend"] == "bnb")
    assert set(kernels["defaults"]) == set(SCHEMES) and kernels["defaults"]["fp8"] == "quanto"
    rows = {r["variant"]: r for r in result["model"]["rows"]}
    assert set(rows) == {"bf16", "int8/bnb", "int8/quanto", "fp8/quanto", "nf4/bnb", "nf4/quanto"}
    for scheme in SCHEMES:
        for backend in SCHEME_BACKENDS[scheme]:
            r = rows[f"{scheme}/{backend}"]
            assert r["dit_bytes"] < rows["bf16"]["dit_bytes"] and r["psnr_db"] > 20
    assert rows["int8/bnb"]["velocity_rel_err"] < rows["nf4/bnb"]["velocity_rel_err"]
