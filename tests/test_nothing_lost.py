"""Issue 17's numbered cases: nothing the user has is lost, no run hangs, bad numbers are refused at
the door. Each test failed on the code before its fix (see the issue for the repro)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lowmem
from lowmem.cli import main
from lowmem.errors import ArgumentError, OutputPathError
from lowmem.offload import BudgetError


@pytest.fixture
def deadline():
    """Turn a hang into a failure: the test body gets 60 s (SIGALRM interrupts a Python loop)."""

    def expired(signum, frame):
        raise TimeoutError("hung: still running after 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def edit(model: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--out", str(out), "--steps", "1",
            "--resolution", "64", "--rotate", "left", "--device", "cpu", *extra]


def error_line(code: int, capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def usage_error(argv: list[str], capsys) -> str:
    """An argument refused by the parser: exit 2 with one `error:` line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return error_line(stop.value.code, capsys)


# -- 1. reports and images never collide; --overwrite means only --out ------------------------------

def test_report_and_out_on_one_file_is_refused(tiny_model, image_file, tmp_path, capsys):
    same = tmp_path / "same.png"
    line = error_line(main(edit(tiny_model, image_file, same, "--report", str(same))), capsys)
    assert "--out and --report are the same file" in line
    assert not same.exists()


def test_overwrite_does_not_replace_a_report_target_that_is_not_a_report(tiny_model, image_file, tmp_path, capsys):
    precious = image_file.read_bytes()
    other = tmp_path / "holiday.png"
    other.write_bytes(precious)
    line = error_line(main(edit(tiny_model, image_file, tmp_path / "out.png", "--overwrite", "--report", str(other))), capsys)
    assert "not a lowmem run report" in line
    assert other.read_bytes() == precious
    line = error_line(main(edit(tiny_model, image_file, tmp_path / "out.png", "--overwrite", "--report", str(image_file))), capsys)
    assert "same file" in line and image_file.read_bytes() == precious


def test_out_is_never_the_input_image(tiny_model, image_file, capsys):
    precious = image_file.read_bytes()
    line = error_line(main(edit(tiny_model, image_file, image_file.parent / "." / image_file.name, "--overwrite")), capsys)
    assert "--image and --out are the same file" in line and image_file.read_bytes() == precious


def test_overwrite_replaces_out_and_an_earlier_report(tiny_model, image_file, tmp_path):
    out, report = tmp_path / "out.png", tmp_path / "run.json"
    assert main(edit(tiny_model, image_file, out, "--report", str(report))) == 0
    first = json.loads(report.read_text())
    assert main(edit(tiny_model, image_file, out, "--report", str(report), "--overwrite", "--seed", "3")) == 0
    assert json.loads(report.read_text())["seed"] == 3 != first["seed"]


# -- 2. demo and doctor never replace the user's files ---------------------------------------------

def test_demo_refuses_to_replace_the_input_and_files_in_out_dir(image_file, capsys):
    photos = image_file.parent
    mine = photos / "input.png"
    image_file.rename(mine)
    (photos / "report.json").write_text("my notes")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    line = error_line(main(["demo", "--image", str(mine), "--out-dir", str(photos)]), capsys)
    assert "--image" in line and "input.png" in line
    line = error_line(main(["demo", "--out-dir", str(photos), "--overwrite", "--image", str(mine)]), capsys)
    assert "--image" in line
    (photos / "mine.png").write_bytes(mine.read_bytes())
    line = error_line(main(["demo", "--image", str(photos / "mine.png"), "--out-dir", str(photos)]), capsys)
    assert "input.png already exists" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in photos.iterdir() if p.name != "mine.png"} == before


def test_doctor_json_does_not_replace_an_existing_file(tmp_path, capsys):
    target = tmp_path / "notes.json"
    target.write_text("mine")
    line = error_line(main(["doctor", "--json", str(target)]), capsys)
    assert "already exists" in line and "--overwrite" in line
    assert target.read_text() == "mine"


# -- 7. non-finite numbers are refused at the door; the selector's loop is bounded ------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_spot_threshold_is_refused(value, tiny_model, image_file, tmp_path, capsys, deadline):
    line = usage_error(edit(tiny_model, image_file, tmp_path / "o.png", "--spot", f"--spot-threshold={value}"), capsys)
    assert "--spot-threshold" in line and "finite" in line


def test_non_finite_demo_guidance_is_refused(tmp_path, capsys, deadline):
    line = usage_error(["demo", "--guidance", "nan", "--out-dir", str(tmp_path / "d")], capsys)
    assert "--guidance" in line and "finite" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), 0.5])
def test_selector_threshold_loop_ends_on_any_scores(threshold, deadline):
    from lowmem.spotedit.selector import SpotSelector

    selector = SpotSelector.__new__(SpotSelector)  # the loop alone: scores stand in for the VAE features
    selector.threshold, selector.dilation = threshold, 0
    for scores in (torch.full((4, 4), float("nan")), torch.zeros(4, 4)):
        selector.scores = lambda x0_hat, scores=scores: scores
        assert selector.select(None) is None


def test_spot_config_refuses_non_finite_threshold():
    from lowmem.spotedit import SpotConfig

    for value in (float("nan"), float("inf")):
        with pytest.raises(ArgumentError, match="finite"):
            SpotConfig(threshold=value)


# -- 8. guidance, resolution and budget are checked, in the CLI and in the Python API ---------------

@pytest.mark.parametrize("flag, value, words", [
    ("--guidance", "nan", "finite"), ("--guidance", "inf", "finite"), ("--guidance", "-1", "between"),
    ("--resolution", "0", "between"), ("--resolution", "-64", "between"), ("--resolution", "1", "between"),
    ("--resolution", "17", "between"), ("--resolution", "100", "multiple of 16"),
    ("--steps", "0", "between"), ("--seed", "-1", "between"), ("--spot-dilation", "-1", "between"),
])
def test_edit_refuses_bad_numbers(flag, value, words, tiny_model, image_file, tmp_path, capsys, deadline):
    line = usage_error(edit(tiny_model, image_file, tmp_path / "o.png", flag, value), capsys)
    assert flag in line and words in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("budget", [0, "", False, "0GB"])
def test_load_refuses_an_empty_budget(budget, tiny_model):
    with pytest.raises(BudgetError):
        lowmem.load(tiny_model, memory_budget=budget, device="cpu", resolution=64)


@pytest.mark.parametrize("kwargs, words", [
    ({"guidance": float("nan")}, "finite"), ({"guidance": float("inf")}, "finite"), ({"resolution": 17}, "between"),
    ({"resolution": 0}, "between"), ({"steps": 0}, "between"), ({"seed": -5}, "between"),
])
def test_pipeline_edit_refuses_bad_numbers(kwargs, words, tiny_pipeline, scene):
    with pytest.raises(ArgumentError, match=words):
        tiny_pipeline.edit(scene, "Rotate the object to show the left side view.", progress=False, **{"steps": 1, **kwargs})


def test_load_refuses_a_bad_resolution(tiny_model):
    with pytest.raises(ArgumentError, match="multiple of 16"):
        lowmem.load(tiny_model, device="cpu", resolution=100)


# -- 3. a source is validated completely before anything is written --------------------------------

def drop_tensors(folder: Path, index_name: str, prefix: str) -> None:
    """Remove every tensor named `prefix`... from a sharded safetensors folder (shards and index)."""
    from safetensors.torch import load_file, save_file

    index_file = folder / index_name
    index = json.loads(index_file.read_text())
    dropped = {name for name in index["weight_map"] if name.startswith(prefix)}
    assert dropped, prefix
    for shard in sorted({index["weight_map"][name] for name in dropped}):
        kept = {k: v for k, v in load_file(folder / shard).items() if k not in dropped}
        save_file(kept, folder / shard, metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k not in dropped}
    index_file.write_text(json.dumps(index))


def quantize(model: Path, out: Path) -> list[str]:
    return ["quantize", str(model), "--scheme", "nf4", "--out", str(out), "--no-progress"]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("part, index_name, prefix, words", [
    ("transformer", "diffusion_pytorch_model.safetensors.index.json", "double_blocks.1.", "DiT weights lack"),
    ("text_encoder", "model.safetensors.index.json", "model.language_model.layers.1.", "Qwen3-VL weights lack"),
])
def test_quantize_refuses_an_incomplete_source(part, index_name, prefix, words, model_copy, tmp_path, capsys):
    drop_tensors(model_copy / part, index_name, prefix)
    out = tmp_path / "q"
    line = error_line(main(quantize(model_copy, out)), capsys)
    assert words in line and prefix in line
    assert_nothing_written(out)


def test_quantize_refuses_a_truncated_vae(model_copy, tmp_path, capsys):
    vae = model_copy / "vae" / "Wan2.1_VAE.pth"
    vae.write_bytes(vae.read_bytes()[: vae.stat().st_size // 2])
    out = tmp_path / "q"
    line = error_line(main(quantize(model_copy, out)), capsys)
    assert "Wan2.1_VAE.pth" in line and "corrupt" in line
    assert_nothing_written(out)


def test_import_refuses_a_vae_that_is_not_one(tiny_model, tmp_path, capsys):
    from lowmem.tiny.random_model import tiny_dit_state_dict

    dit = tmp_path / "dit.pt"
    torch.save(tiny_dit_state_dict(), dit)
    not_a_vae = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"weight": torch.zeros(3)}, not_a_vae)
    out = tmp_path / "imported"
    line = error_line(main(["import", "--dit", str(dit), "--vae", str(not_a_vae), "--text-encoder",
                            str(tiny_model / "text_encoder"), "--out", str(out), "--no-progress"]), capsys)
    assert "not a Wan2.1 VAE" in line
    assert_nothing_written(out)


# -- 4. one conversion at a time into one output ----------------------------------------------------

def test_quantize_refuses_while_another_conversion_holds_the_output(tiny_model, tmp_path, capsys):
    import fcntl

    out = tmp_path / "q"
    with open(tmp_path / ".q.lock", "w") as held:  # what a running conversion into `out` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        line = error_line(main(quantize(tiny_model, out)), capsys)
    assert "another conversion into" in line and "is running" in line
    assert not out.exists() and not (tmp_path / "q.partial").exists()


# -- 5. quantized blocks are checked against the manifest's sha256 ----------------------------------

def test_a_quantized_block_with_flipped_bytes_is_refused_with_the_file_to_reconvert(quantized_model, image_file, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(quantized_model, tmp_path / "nf4"))
    block = copy / "transformer" / "block_001.safetensors"
    data = bytearray(block.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # tensor bytes, not the header: safetensors reads them fine
    block.write_bytes(bytes(data))
    out = tmp_path / "out.png"
    line = error_line(main(edit(copy, image_file, out)), capsys)
    assert "block_001.safetensors" in line and "sha256" in line and "lowmem quantize" in line
    assert not out.exists()
    line = error_line(main(edit(copy, image_file, out, "--budget", "256MB")), capsys)
    assert "block_001.safetensors" in line


# -- 6. an incomplete or foreign Qwen3-VL is refused like the DiT ----------------------------------

def test_an_incomplete_conditioner_is_refused(model_copy, image_file, tmp_path, capsys):
    drop_tensors(model_copy / "text_encoder", "model.safetensors.index.json", "model.language_model.layers.0.mlp.")
    out = tmp_path / "out.png"
    line = error_line(main(edit(model_copy, image_file, out)), capsys)
    assert "Qwen3-VL weights lack" in line and "layers.0.mlp" in line
    assert not out.exists()


def test_a_foreign_conditioner_is_refused(model_copy, image_file, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    te = model_copy / "text_encoder"
    index = json.loads((te / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(te / shard)
        save_file({k.replace("language_model.", "llm."): v for k, v in tensors.items()}, te / shard, metadata={"format": "pt"})
    index["weight_map"] = {k.replace("language_model.", "llm."): v for k, v in index["weight_map"].items()}
    (te / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out.png"
    line = error_line(main(edit(model_copy, image_file, out, "--budget", "256MB")), capsys)
    assert "llm." in line and "not a VLM weight" in line
    assert not out.exists()


# -- 9. --move-box is in the input image's pixels, mapped through the same resize/crop ----------------

def red_pixels(image) -> set[tuple[int, int]]:
    import numpy as np

    array = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero((array[..., 0] > 200) & (array[..., 1] < 60) & (array[..., 2] < 60))
    return set(zip(xs.tolist(), ys.tolist()))


def test_move_box_is_drawn_where_it_is_in_the_input_image(tiny_pipeline):
    from PIL import Image

    from lowmem import instructions

    big = Image.new("RGB", (256, 256), (200, 210, 225))  # 4x the 64 px working size
    edit_ = instructions.move_to_box("object", (128, 128, 250, 250), image_size=big.size)
    result = tiny_pipeline.edit(big, edit_, steps=1, resolution=64, progress=False)
    red = red_pixels(result.input_image)
    assert red, "the box was never drawn on what the model saw"
    xs, ys = {x for x, _ in red}, {y for _, y in red}
    assert min(xs) == min(ys) == 32 and 60 <= max(xs) <= 63 and 60 <= max(ys) <= 63  # 128..250 scaled by 1/4


def test_move_box_follows_the_centre_crop(tiny_pipeline):
    from PIL import Image

    from lowmem import instructions
    from lowmem.common.images import fit_bucket

    wide = Image.new("RGB", (512, 256), (200, 210, 225))
    fit = fit_bucket(512, 256, 64)
    edit_ = instructions.move_to_box("object", (200, 64, 312, 192), image_size=wide.size)
    result = tiny_pipeline.edit(wide, edit_, steps=1, resolution=64, progress=False)
    x0, y0, x1, y1 = fit.map_box((200, 64, 312, 192))
    red = red_pixels(result.input_image)
    assert min(x for x, _ in red) == x0 and min(y for _, y in red) == y0
    assert result.input_image.size == fit.bucket


def test_move_box_outside_the_input_image_is_refused(tiny_pipeline, tiny_model, image_file, tmp_path, capsys):
    from PIL import Image

    from lowmem import instructions
    from lowmem.errors import InstructionError

    with pytest.raises(InstructionError, match="outside the 256x256 input image"):
        tiny_pipeline.edit(Image.new("RGB", (256, 256)), instructions.EditInstruction("Move it.", box=(10, 10, 300, 200)),
                           steps=1, resolution=64, progress=False)
    out = tmp_path / "o.png"
    argv = edit(tiny_model, image_file, out)
    argv[argv.index("--rotate"):argv.index("--rotate") + 2] = ["--move-box", "10,10,65,40"]
    line = error_line(main(argv), capsys)
    assert "outside the 64x64 input image" in line and not out.exists()


# -- the rule behind the rest: a failed or interrupted phase never says "done" ---------------------

@pytest.mark.parametrize("raised, said", [(RuntimeError("boom"), "failed after"), (KeyboardInterrupt(), "interrupted after")])
def test_a_failed_phase_is_not_reported_done(raised, said, capsys):
    from lowmem.pipeline.report import RunReport

    report = RunReport(device="cpu", dtype="float32")
    with pytest.raises(type(raised)):
        with report.phase("denoise", announce=True):
            raise raised
    err = capsys.readouterr().err
    assert "done" not in err and f"denoise {said}" in err


# -- 10. a terminated command cleans up as an interrupted one does ---------------------------------

def test_sigterm_removes_the_staged_output_folder(tmp_path):
    """`kill` during `lowmem train-tiny` (a long job a scheduler may stop): the folder it was
    building aside goes, the output never appears, and the exit status says SIGTERM."""
    out = tmp_path / "model"
    command = [sys.executable, "-m", "lowmem", "train-tiny", "--out", str(out), "--pairs", "8", "--vae-steps", "100000",
               "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".model.*")):  # the staging folder: the job is under way
            assert process.poll() is None and time.monotonic() < deadline, "train-tiny never started its output"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert "terminated; nothing half-written was left behind" in stderr
    assert list(tmp_path.iterdir()) == []
