"""`lowmem batch` in this process, through the real CLI: outputs equal `lowmem edit`'s, bad jobs are
reported without stopping the others, and a killed batch resumes where it stopped."""

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

from batch_jobs import batch_command, expected_image, read_report, write_jobs

GOOD_JOBS = [
    {"image": "scene.png", "rotate": "left", "seed": 1, "name": "left.png"},
    {"image": "scene.png", "instruction": "make the square blue", "seed": 2},
    {"image": "scene.png", "move_box": [4, 4, 30, 30], "seed": 3, "steps": 1},
    {"image": "scene.png", "zoom": "in", "seed": 4, "name": "zoom.png"},
]


def test_batch_runs_every_job_reports_bad_ones_and_matches_edit(tiny_model, tiny_pipeline, scene, tmp_path):
    bad_image = tmp_path / "broken.png"
    bad_image.write_bytes(b"not a png")
    jobs = write_jobs(tmp_path, scene, [
        GOOD_JOBS[0],
        {"image": "broken.png", "zoom": "out", "seed": 0},  # fails while running
        {"image": "scene.png", "camera_yaw": 30},  # an angle the model was not trained for
        "{not json",
        {"image": "scene.png", "rotate": "left", "resolution": 128},  # per-batch setting in a job
        GOOD_JOBS[1],
    ])
    out = tmp_path / "out"
    run = subprocess.run(batch_command(jobs, out, tiny_model), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr  # some jobs failed: not a success, but the others ran
    assert "2 done, 0 skipped (already complete), 4 failed" in run.stdout
    assert "Traceback" not in run.stderr
    report = {record["line"]: record for record in read_report(out)}
    assert [report[line]["status"] for line in sorted(report)] == ["done", "failed", "failed", "failed", "failed", "done"]
    assert "not a readable image" in report[2]["error"]
    assert "camera yaw 30 was not trained" in report[3]["error"]
    assert "not a JSON object" in report[4]["error"]
    assert "resolution" in report[5]["error"] and "command line" in report[5]["error"]
    assert report[1]["seconds"] > 0 and set(report[1]["phases"]) >= {"denoise", "decode"}
    assert sorted(p.name for p in out.iterdir()) == ["00006-scene.png", "left.png", "report.jsonl"]
    for line, job in ((1, GOOD_JOBS[0]), (6, GOOD_JOBS[1])):
        made = np.asarray(Image.open(out / report[line]["name"]))
        assert np.array_equal(made, expected_image(tiny_pipeline, tmp_path, job)), f"line {line} differs from lowmem edit"


def wait_for_done(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the batch finished before it could be killed"
        try:
            if sum(r["status"] == "done" for r in read_report(out)) >= count:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} jobs done in {timeout} s")


def test_killed_batch_resumes_and_skips_complete_jobs(tiny_model, tiny_pipeline, scene, tmp_path):
    jobs_list = GOOD_JOBS + [{"image": "scene.png", "rotate": "back", "seed": 10 + i} for i in range(4)]
    jobs = write_jobs(tmp_path, scene, jobs_list)
    out = tmp_path / "out"
    first = subprocess.Popen(batch_command(jobs, out, tiny_model), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_done(out, 2, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    finished = {r["name"]: (out / r["name"]).stat().st_mtime_ns for r in read_report(out) if r["status"] == "done"}
    assert 2 <= len(finished) < len(jobs_list)

    second = subprocess.run(batch_command(jobs, out, tiny_model), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    report = read_report(out)
    assert len(report) == len(jobs_list) and not [p for p in os.listdir(out) if p.startswith(".")]
    for record in report:
        assert record["status"] == ("skipped" if record["name"] in finished else "done"), record
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was made again"
    for record, job in zip(report, jobs_list):
        made = np.asarray(Image.open(out / record["name"]))
        assert np.array_equal(made, expected_image(tiny_pipeline, tmp_path, job)), record["name"]

    # A changed job is not complete any more: its output is made again.
    jobs_list[0] = {**jobs_list[0], "seed": 99}
    write_jobs(tmp_path, None, jobs_list)
    third = subprocess.run(batch_command(jobs, out, tiny_model), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert [r["status"] for r in read_report(out)] == ["done"] + ["skipped"] * (len(jobs_list) - 1)
    assert np.array_equal(np.asarray(Image.open(out / "left.png")), expected_image(tiny_pipeline, tmp_path, jobs_list[0]))
