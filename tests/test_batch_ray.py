"""`lowmem batch --engine ray` on a local Ray of two CPU workers, through the real CLI: the images equal
the in-process ones for the same seeds, and the job of a worker killed mid-run completes on the other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowmem.cli import main
from batch_jobs import batch_command, expected_image, read_report, write_jobs

pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install 'lowmem[ray]'")


def is_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::BatchWorker")
    except OSError:
        return False


def wait_for_two_workers(out: Path, launcher: subprocess.Popen, timeout: float = 240) -> list[dict]:
    """Records, once both workers have finished a job each."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, "the batch ended before a worker could be killed"
        try:
            records = [r for r in read_report(out) if r["status"] == "done"]
        except (FileNotFoundError, json.JSONDecodeError):
            records = []
        if len({r["worker"] for r in records}) == 2:
            return records
        time.sleep(0.02)
    pytest.fail("the two workers did not both finish a job in time")


def test_ray_batch_equals_in_process_and_survives_a_killed_worker(tiny_model, tiny_pipeline, scene, tmp_path):
    jobs_list = [{"image": "scene.png", "rotate": view, "seed": seed}
                 for seed, view in enumerate(["left", "right", "back", "front"] * 3)]
    jobs = write_jobs(tmp_path, scene, jobs_list)
    out = tmp_path / "out"
    command = batch_command(jobs, out, tiny_model, "--engine", "ray", "--workers", "2")
    command[command.index("--steps") + 1] = "30"  # jobs long enough that the killed worker is mid-job
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launcher:
        try:
            records = wait_for_two_workers(out, launcher)
            # The worker that did not write the latest record is in the middle of a job now.
            victim = next(int(r["worker"].split(":")[1]) for r in reversed(records) if r["worker"] != records[-1]["worker"])
            assert is_ray_worker(victim)
            os.kill(victim, signal.SIGKILL)
            stdout, stderr = launcher.communicate(timeout=300)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "retrying it on another worker" in stderr
    report = read_report(out)
    assert [r["status"] for r in report] == ["done"] * len(jobs_list)
    retried = [r for r in report if r["attempts"] == 2]
    assert retried and all(not r["worker"].endswith(f":{victim}") for r in retried)
    assert len({r["worker"] for r in report}) == 2  # the two workers, the killed one only before its death
    for record, job in zip(report, jobs_list):
        made = np.asarray(Image.open(out / record["name"]))
        assert np.array_equal(made, expected_image(tiny_pipeline, tmp_path, {**job, "steps": 30})), record["name"]


def test_ray_engine_without_ray_says_how_to_install(tiny_model, scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    jobs = write_jobs(tmp_path, scene, [{"image": "scene.png", "zoom": "in"}])
    code = main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--engine", "ray",
                 "--workers", "2", "--resolution", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'lowmem[ray]'" in err and len(err.strip().splitlines()) == 1, err
