"""Bad arguments of the commands that load a model are refused before any weight is read: the loader and
the converter are booby-trapped while each case runs in this process, and each case must still end in
one `error:` line and exit status 2. (tests/test_cli_table.py runs every command's cases as a user
does, in subprocesses, and fails on any traceback.)"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowmem.cli import main

NO_CUDA = not torch.cuda.is_available()


def cases(model: Path, image: Path, tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, words the one error line holds)."""
    out = tmp / "out.png"
    edit = ["edit", "--model", str(model), "--image", str(image), "--out", str(out), "--resolution", "64"]
    meta = tmp / "meta.json"
    meta.write_text(json.dumps({"not": "a list"}))
    jobs = tmp / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(image), "rotate": "left"}) + "\n")
    bench = ["bench-run", "--meta", str(meta), "--data", str(tmp), "--out", str(tmp / "bench"), "--model", str(model)]
    table = [
        (edit + ["--rotate", "left", "--out", "/proc/out.png"], "cannot create files in /proc"),
        (edit + ["--rotate", "left", "--report", "/proc/report.json"], "cannot create files in /proc"),
        (edit + ["--rotate", "left", "--out", str(tmp / "missing" / "o.png")], "does not exist"),
        (edit + ["--rotate", "left", "--budget", "abc"], "--budget"),
        (edit + ["--rotate", "left", "--budget", "-3GB"], "--budget"),
        (edit + ["--rotate", "left", "--preset", "gtx-480"], "unknown preset 'gtx-480'"),
        (edit + ["--rotate", "left", "--device", "tpu"], "'tpu'"),
        (["edit", "--model", str(tmp / "nowhere"), "--image", str(image), "--out", str(out), "--rotate", "left"], "nowhere"),
        (["batch", str(tmp / "none.jsonl"), "--out", str(tmp / "b"), "--model", str(model)], "does not exist"),
        (["batch", str(jobs), "--out", "/proc/batch", "--model", str(model)], "cannot create files in /proc"),
        (["batch", str(jobs), "--out", str(tmp / "b"), "--model", str(model), "--budget", "lots"], "--budget"),
        (bench, "not the benchmark's list"),
        (bench[:2] + [str(tmp / "none.json")] + bench[3:], "does not exist"),
        (bench[:-2] + ["--model", str(model), "--out", "/proc/bench"], "cannot create files in /proc"),
        (bench + ["--shard", "2/2"], "--shard 2/2"),
        (bench + ["--preset", "nope"], "unknown preset"),
        (bench + ["--budget", "lots"], "--budget"),
        (["ui", "--model", str(model), "--budget", "lots"], "--budget"),
        (["ui", "--model", str(model), "--preset", "nope"], "unknown preset"),
        (["demo", "--out-dir", "/proc/demo"], "cannot create files in /proc"),
        (["demo", "--budget", "plenty"], "--budget"),
        (["quantize", str(tmp / "nowhere"), "--scheme", "nf4", "--out", str(tmp / "q")], "nowhere"),
        (["quantize", str(model), "--scheme", "int3", "--out", str(tmp / "q")], "int3"),
        (["quantize", str(model), "--scheme", "nf4", "--out", "/proc/q"], "cannot create files in /proc"),
        (["download", "--out", "/proc/models"], "cannot create files in /proc"),
        (["train-tiny", "--out", "/proc/tiny"], "cannot create files in /proc"),
    ]
    if NO_CUDA:
        table.append((edit + ["--rotate", "left", "--device", "cuda"], "no CUDA GPU"))
    return table


def test_bad_arguments_are_refused_before_any_weight_is_read(tiny_model, image_file, tmp_path, capsys, no_loading):
    failures = []
    for argv, words in cases(tiny_model, image_file, tmp_path):
        try:
            status = main(argv)
        except SystemExit as stop:  # the argument parser's refusal: already printed as one line
            status = stop.code
        except no_loading:  # the Loaded error the fixture raises
            failures.append(f"{' '.join(argv[:1])} ... {words!r}: weights were read first")
            continue
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if status != 2 or len(lines) != 1 or not lines[0].startswith("error:") or words not in lines[0]:
            failures.append(f"{argv}: status {status}, stderr {err!r} (wanted one error line with {words!r})")
    assert not failures, "\n".join(failures)
