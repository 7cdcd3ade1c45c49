"""`lowmem bench-run`: SpatialEdit-Bench's meta file in, the official output tree out. The names, the
defaults and the camera files are the official `eval_inference.py`'s (pinned here); a run over the tiny
benchmark is checked file by file and image by image against the pipeline; bad items are reported one
by one while the others run; a killed run resumes with only the missing items."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowmem.bench_run.meta import MetaFileError, read_meta
from lowmem.bench_run.tree import camera_ground_truth, camera_sidecar, item_outputs
from lowmem.cli import main
from lowmem.tiny.bench_data import write_tiny_bench

STEPS = "2"


def bench_command(meta: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lowmem", "bench-run", "--meta", str(meta), "--data", str(meta.parent / "data"),
            "--out", str(out), "--model", str(model), "--steps", STEPS, "--basesize", "64", "--device", "cpu", *extra]


def read_report(out: Path, name: str = "lowmem-bench-report") -> dict:
    return json.loads((out / f"{name}.json").read_text())


def hidden_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*")]


def test_official_names_and_defaults():
    save = Path("/save")
    camera = item_outputs(save, "camera", "img7", "e3", "/bench/data/camera/img7.jpg")
    folder = save / "fullset" / "camera" / "en" / "img7"
    assert (camera.edit, camera.source, camera.prompt) == (folder / "e3.png", folder / "e3_src.png", folder / "e3_prompt.txt")
    # The sidecar keeps its own name; the ground truth is renamed after the edit, as a .png of the .jpg's bytes.
    assert camera.copies == {folder / "img7.json": Path("/bench/data/camera/img7.json"),
                             folder / "e3_gt.png": Path("/bench/data/camera/img7_gt.jpg")}
    assert camera.written()[-1] == camera.edit  # the edit last: its presence means the item is complete
    rotate = item_outputs(save, "rotate", "img7", "e3", "/bench/data/rotate/img7.jpg")
    assert rotate.copies == {} and rotate.edit == save / "fullset/rotate/en/img7/e3.png"
    # The official string operations, quirks included: [:-4] and str.replace of every ".jpg".
    assert camera_sidecar("d.jpg/x.jpg") == Path("d.jpg/x.json")
    assert camera_ground_truth("d.jpg/x.jpg") == Path("d_gt.jpg/x_gt.jpg")

    from lowmem.cli.dispatch import build_parser

    parser = build_parser("bench-run")
    args = parser.parse_args(["bench-run", "--meta-file", "m.json", "--bench-data-dir", "d", "--save-path", "s",
                              "--model", "x"])
    assert (args.meta, args.data, args.out) == (Path("m.json"), Path("d"), Path("s"))
    # dist_inference.sh: 50 steps, guidance 5.0, seed 42, basesize 1024, an empty negative prompt.
    assert (args.steps, args.guidance, args.seed, args.basesize, args.neg_prompt) == (50, 5.0, 42, 1024, "")
    aliases = parser.parse_args(["bench-run", "--meta", "m", "--data", "d", "--out", "s", "--model", "x",
                                 "--num-inference-steps", "7", "--guidance-scale", "2.5"])
    assert (aliases.steps, aliases.guidance) == (7, 2.5)


def write_meta(folder: Path, items) -> Path:
    path = folder / "meta.json"
    path.write_text(json.dumps(items))
    return path


def test_meta_file_errors_and_bad_items(tmp_path):
    meta = write_tiny_bench(tmp_path, per_type=1)
    good = json.loads(meta.read_text())
    data, save = tmp_path / "data", tmp_path / "out"
    for content, words in [({"items": good}, "holds a JSON dict, not the benchmark's list"), ([], "empty list")]:
        with pytest.raises(MetaFileError, match=words):
            read_meta(write_meta(tmp_path, content), data, save)
    (tmp_path / "broken.json").write_text('[{"image_path": ')
    with pytest.raises(MetaFileError, match="is not JSON"):
        read_meta(tmp_path / "broken.json", data, save)
    with pytest.raises(MetaFileError, match="data folder .* does not exist"):
        read_meta(meta, tmp_path / "nowhere", save)

    rotate, move, camera = good
    (data / "camera" / "lonely.jpg").write_bytes((data / "camera" / "camera_000.jpg").read_bytes())
    (data / "camera" / "lonely.json").write_text("{}")  # a sidecar, but no ground truth
    (data / "camera" / "camera_000.png").write_bytes(b"")
    bad = [
        {k: v for k, v in rotate.items() if k != "prompt"},
        {**rotate, "edit_id": "other", "image_path": "rotate/missing.jpg"},
        {**move, "edit_id": "../escape"},
        {**move, "prompt": "   "},
        {**camera, "edit_id": "lonely", "image_path": "camera/lonely.jpg"},
        {**camera, "edit_id": "as-png", "image_path": "camera/camera_000.png"},
        "not an object",
        {**rotate, "edit_id": 3.5},
    ]
    items = read_meta(write_meta(tmp_path, good + bad + [dict(rotate)]), data, save)
    assert [type(item).__name__ for item in items] == ["BenchItem"] * 3 + ["BadItem"] * (len(bad) + 1)
    errors = [item.error for item in items[3:]]
    expected = ["no 'prompt'", "rotate/missing.jpg does not exist", "'edit_id' '../escape' cannot be a file or folder name",
                "'prompt' must be the instruction text", "lonely_gt.jpg does not exist",
                "a camera item's image must end in .jpg", "not a JSON object but str", "'edit_id' must be text, got 3.5",
                "edit_id 'rotate_000_e0' is already used in .* by item 1"]
    for error, words in zip(errors, expected):
        assert re.search(words, error), (words, error)
    assert [item.number for item in items[3:]] == list(range(4, 4 + len(bad) + 1))


def expected_edit(pipeline, item: dict, data: Path):
    """The pipeline's own edit of a meta item, with the official settings as the command passes them."""
    result = pipeline.edit(data / item["image_path"], item["prompt"], steps=int(STEPS), guidance=5.0, seed=42,
                           resolution=64, progress=False)
    return np.asarray(result.image), np.asarray(result.input_image)


def test_tree_file_by_file_and_images_equal_the_pipeline(tiny_model, tiny_pipeline, tmp_path):
    meta = write_tiny_bench(tmp_path, per_type=1)
    items, data, out = json.loads(meta.read_text()), tmp_path / "data", tmp_path / "out"
    run = subprocess.run(bench_command(meta, out, tiny_model), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    expected_files = {"lowmem-bench-report.json", "lowmem-bench-report.txt"}
    for item in items:
        folder = f"fullset/{item['type']}/en/{item['image_id']}"
        names = ["", "_src", "_prompt"] + (["_gt"] if item["type"] == "camera" else [])
        expected_files |= {f"{folder}/{item['edit_id']}{n}{'.txt' if n == '_prompt' else '.png'}" for n in names}
        if item["type"] == "camera":
            expected_files.add(f"{folder}/{Path(item['image_path']).stem}.json")
    made = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert made == expected_files
    for item in items:
        folder = out / "fullset" / item["type"] / "en" / item["image_id"]
        edit, source = expected_edit(tiny_pipeline, item, data)
        assert np.array_equal(np.asarray(Image.open(folder / f"{item['edit_id']}.png")), edit), item["edit_id"]
        assert np.array_equal(np.asarray(Image.open(folder / f"{item['edit_id']}_src.png")), source)
        assert (folder / f"{item['edit_id']}_prompt.txt").read_bytes() == item["prompt"].encode()
        if item["type"] == "camera":
            stem = data / Path(item["image_path"]).with_suffix("")
            assert (folder / f"{item['edit_id']}_gt.png").read_bytes() == Path(f"{stem}_gt.jpg").read_bytes()
            assert (folder / f"{stem.name}.json").read_bytes() == Path(f"{stem}.json").read_bytes()
    report = read_report(out)
    assert [r["status"] for r in report["items"]] == ["done"] * 3
    for record in report["items"]:
        assert record["seconds"] > 0 and record["peak_rss_bytes"] > 0 and record["spot_active_fraction"] is None
    assert {task: t["done"] for task, t in report["totals"].items()} == {"rotate": 1, "move": 1, "camera": 1, "all": 3}
    assert report["settings"]["steps"] == int(STEPS) and report["settings"]["seed"] == 42
    assert "camera" in run.stdout and "s/item" in run.stdout  # the table is printed
    assert f"denoise {STEPS}/{STEPS}" in run.stderr  # the bar over items shows each one's steps


def test_bad_items_are_reported_and_the_others_run(tiny_model, tmp_path):
    meta = write_tiny_bench(tmp_path, per_type=1)
    good = json.loads(meta.read_text())
    bad_meta = write_meta(tmp_path, [good[0], {**good[1], "image_path": "move/gone.jpg"}, good[2], dict(good[0])])
    (tmp_path / "data" / "move" / "unreadable.jpg").write_text("not an image")
    bad_meta.write_text(json.dumps(json.loads(bad_meta.read_text()) + [{**good[1], "image_path": "move/unreadable.jpg"}]))
    out = tmp_path / "out"
    command = bench_command(bad_meta, out, tiny_model)
    command[command.index("--data") + 1] = str(tmp_path / "data")
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    records = read_report(out)["items"]
    assert [r["status"] for r in records] == ["done", "failed", "done", "failed", "failed"]
    assert "move/gone.jpg does not exist" in records[1]["error"]
    assert "already used" in records[3]["error"] and "not a readable image" in records[4]["error"]
    assert "item 5 (move move_000_e0) failed" in run.stderr
    assert not (out / "fullset/move").exists() or not any((out / "fullset/move").rglob("*.png"))

    not_a_list = write_meta(tmp_path, {"image_path": "x"})
    command[command.index("--meta") + 1] = str(not_a_list)
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "not the benchmark's list" in run.stderr


def wait_for_edits(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        if len([p for p in out.rglob("*_e0.png")]) >= count:
            return
        time.sleep(0.01)
    pytest.fail("no edit appeared in time")


def test_killed_run_resumes_with_only_the_missing_items(tiny_model, tmp_path):
    meta = write_tiny_bench(tmp_path, per_type=2)
    out = tmp_path / "out"
    command = bench_command(meta, out, tiny_model)
    command[command.index("--steps") + 1] = "40"  # items long enough to be killed mid-run
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_edits(out, 1, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*_e0.png")}
    assert 1 <= len(finished) < 6
    for edit in finished:  # the edit is written last: a finished item has all its files
        assert edit.with_name(edit.stem + "_src.png").is_file() and edit.with_name(edit.stem + "_prompt.txt").is_file()

    changed = subprocess.run(command[:-2] + ["--seed", "7", *command[-2:]], capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "seed=42" in changed.stderr and "another --out" in changed.stderr

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    records = read_report(out)["items"]
    edits = {out / r["output"]: r["status"] for r in records}
    assert len(edits) == 6 and all(path.is_file() for path in edits)
    for path, status in edits.items():
        assert status == ("skipped" if path in finished else "done"), path
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was made again"
    assert not hidden_files(out)


def test_shard_and_ray_engine_fill_the_same_tree(tiny_model, tmp_path):
    pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install 'lowmem[ray]'")
    meta = write_tiny_bench(tmp_path, per_type=2)
    local, spread = tmp_path / "local", tmp_path / "ray"
    assert main(bench_command(meta, local, tiny_model)[3:]) == 0
    for rank, engine in ((0, ["--engine", "ray", "--workers", "2"]), (1, [])):  # two machines sharing one tree
        assert main(bench_command(meta, spread, tiny_model, "--shard", f"{rank}/2", *engine)[3:]) == 0
        records = read_report(spread, f"lowmem-bench-report-shard-{rank}-of-2")["items"]
        assert [r["item"] for r in records] == list(range(rank + 1, 7, 2))
        assert len({r["worker"] for r in records}) == (2 if engine else 1)
    edits = sorted(p.relative_to(local) for p in local.rglob("fullset/**/*.png"))
    assert edits == sorted(p.relative_to(spread) for p in spread.rglob("fullset/**/*.png"))
    for path in edits:
        assert np.array_equal(np.asarray(Image.open(local / path)), np.asarray(Image.open(spread / path))), path
