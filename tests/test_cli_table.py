"""Every command, every argument, every file it reads, run the way a user runs it: `python -m lowmem ...`
in a subprocess. A case fails on a Python traceback, on a hang (timeout), on an exit status or an
error line other than the expected one, and on any change to a file that existed before.

Each case is its own process (no state carried between cases). Most cases are refused before torch
is imported (arguments, paths, images and folder layouts are checked first), so they cost a fraction
of a second; the rest need torch (budgets, presets, configs, weights) and cost a few. Two cases run
at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

TIMEOUT_S = 90  # a case still running after this is a hang
WORKERS = 2


@dataclass(frozen=True)
class Case:
    argv: str  # words separated by spaces; {name} is a path in the sandbox
    words: str = ""  # expected in the one `error:` line ("" for a successful run)
    ok: bool = False  # the run must succeed (exit 0)

    def args(self, sandbox: Path) -> list[str]:
        return [word.format(**PATHS(sandbox)) for word in self.argv.split()]


def PATHS(root: Path) -> dict[str, str]:
    return {p.name.replace(".", "_").replace("-", "_"): str(p) for p in root.iterdir()} | {"root": str(root)}


EDIT = "edit --model {model} --image {image_png} --out new.png --steps 1 --resolution 64 --device cpu"
EDIT_NO_MODEL = "edit --image {image_png} --out new.png --steps 1 --resolution 64"

CASES: dict[str, Case] = {
    # -- the top level
    "no command": Case("", "required: command"),
    "unknown command": Case("frobnicate", "invalid choice"),
    "unknown option": Case("--frobnicate", "command"),
    "version": Case("--version", ok=True),
    "help": Case("--help", ok=True),
    **{f"{c} help": Case(f"{c} --help", ok=True) for c in ("edit", "batch", "bench-run", "demo", "plan", "quantize",
                                                              "doctor", "download", "import", "train-tiny", "ui")},
    # -- edit: required arguments and the edit itself
    "edit nothing": Case("edit", "required: --model, --image, --out"),
    "edit no out": Case("edit --model {model} --image {image_png} --rotate left", "required: --out"),
    "edit no edit": Case(EDIT, "exactly one edit"),
    "edit two edits": Case(EDIT + " --rotate left --zoom in", "exactly one edit"),
    "edit empty instruction": Case(EDIT + " --instruction=", "instruction is empty"),
    "edit yaw off the grid by a hair": Case(EDIT + " --camera-yaw 45.0000001", "camera yaw 45.0000001 was not trained"),
    "edit unknown view": Case(EDIT + " --rotate sideways", "8 canonical views"),
    "edit empty object": Case(EDIT + " --rotate left --object=", "name the object"),
    "edit box words": Case(EDIT + " --move-box a,b,c,d", "four integers"),
    "edit box three": Case(EDIT + " --move-box 1,2,3", "x0,y0,x1,y1"),
    "edit box empty": Case(EDIT + " --move-box 10,10,5,5", "empty"),
    "edit box negative": Case(EDIT + " --move-box=-1,0,5,5", "negative"),
    "edit box outside": Case(EDIT + " --move-box 10,10,500,500", "outside"),
    "edit scale 0": Case(EDIT + " --scale 0", "scale factor"),
    "edit scale 1": Case(EDIT + " --scale 1", "not 1"),
    "edit scale nan": Case(EDIT + " --scale nan", "scale"),
    "edit scale words": Case(EDIT + " --scale big", "--scale"),
    "edit yaw 30": Case(EDIT + " --camera-yaw 30", "yaw 30"),
    "edit yaw nan": Case(EDIT + " --camera-yaw nan", "yaw"),
    "edit pitch inf": Case(EDIT + " --camera-pitch inf", "pitch"),
    "edit zero camera": Case(EDIT + " --camera-yaw 0", "non-zero"),
    "edit zoom sideways": Case(EDIT + " --zoom sideways", "invalid choice"),
    # -- edit: numbers
    **{f"edit {flag} {value}": Case(f"{EDIT} --rotate left {flag}={value}", flag)
       for flag, values in {
           "--steps": ("0", "-1", "1.5", "many", "100000"),
           "--guidance": ("nan", "inf", "-inf", "-1", "1e9", "strong"),
           "--seed": ("-1", "x", str(2**64)),
           "--resolution": ("0", "-64", "1", "17", "100", "1e3", "100000"),
           "--spot-threshold": ("nan", "inf", "high"),
           "--spot-dilation": ("-1", "1000", "wide"),
       }.items() for value in values},
    "edit quantization int3": Case(EDIT + " --rotate left --quantization int3", "invalid choice"),
    # -- edit: the model folder
    "edit model missing": Case(EDIT_NO_MODEL + " --rotate left --model {root}/nowhere", "does not exist"),
    "edit model is a file": Case(EDIT_NO_MODEL + " --rotate left --model {image_png}", "does not exist"),
    "edit model empty": Case(EDIT_NO_MODEL + " --rotate left --model {empty_dir}", "no transformer/"),
    "edit model without vae": Case(EDIT_NO_MODEL + " --rotate left --model {model_no_vae}", "Wan2.1"),
    "edit model without qwen config": Case(EDIT_NO_MODEL + " --rotate left --model {model_no_te_config}", "config.json"),
    "edit dit config not json": Case(EDIT_NO_MODEL + " --rotate left --model {model_config_not_json}", "config.json"),
    "edit dit config wrong types": Case(EDIT_NO_MODEL + " --rotate left --model {model_config_types}", "config.json"),
    "edit dit config wrong shapes": Case(EDIT_NO_MODEL + " --rotate left --model {model_config_shapes}", "shape"),
    "edit dit index not json": Case(EDIT_NO_MODEL + " --rotate left --model {model_index_not_json}", "index"),
    "edit qwen config not json": Case(EDIT_NO_MODEL + " --rotate left --model {model_te_config_not_json}", "config.json"),
    "edit vae truncated": Case(EDIT_NO_MODEL + " --rotate left --model {model_vae_truncated}", "Wan2.1_VAE.pth"),
    "edit manifest not json": Case(EDIT_NO_MODEL + " --rotate left --model {quantized_manifest_not_json}", "manifest.json"),
    "edit manifest fields": Case(EDIT_NO_MODEL + " --rotate left --model {quantized_manifest_fields}", "manifest.json"),
    "edit manifest version": Case(EDIT_NO_MODEL + " --rotate left --model {quantized_manifest_version}", "version"),
    # -- edit: the input image
    "edit image missing": Case("edit --model {model} --out new.png --rotate left --image {root}/nope.png", "does not exist"),
    "edit image is a folder": Case("edit --model {model} --out new.png --rotate left --image {empty_dir}", "is a folder"),
    "edit image is text": Case("edit --model {model} --out new.png --rotate left --image {text_png}", "not a readable image"),
    "edit image empty": Case("edit --model {model} --out new.png --rotate left --image {empty_png}", "not a readable image"),
    "edit image truncated": Case("edit --model {model} --out new.png --rotate left --image {truncated_png}", "not a readable image"),
    "edit image bomb": Case("edit --model {model} --out new.png --rotate left --image {bomb_png}", "pixels"),
    # -- edit: outputs
    "edit out exists": Case("edit --model {model} --image {image_png} --rotate left --out {existing_png}", "--overwrite"),
    "edit out is a folder": Case("edit --model {model} --image {image_png} --rotate left --out {empty_dir} --overwrite", "is a folder"),
    "edit out in missing folder": Case("edit --model {model} --image {image_png} --rotate left --out no/new.png", "does not exist"),
    "edit out under a file": Case("edit --model {model} --image {image_png} --rotate left --out {image_png}/new.png", "is a file"),
    "edit out name too long": Case("edit --model {model} --image {image_png} --rotate left --out " + "n" * 300 + ".png", "longer"),
    "edit out is the image": Case("edit --model {model} --image {image_png} --rotate left --out {image_png} --overwrite", "same file"),
    "edit report is out": Case(EDIT + " --rotate left --report new.png", "same file"),
    "edit report is an image": Case(EDIT + " --rotate left --overwrite --report {existing_png}", "not a lowmem run report"),
    "edit report is a folder": Case(EDIT + " --rotate left --report {empty_dir}", "is a folder"),
    # -- edit: memory and device (these import torch)
    "edit budget words": Case(EDIT + " --rotate left --budget lots", "lots"),
    "edit preset unknown": Case(EDIT + " --rotate left --preset gtx-480", "gtx-480"),
    "edit preset not toml": Case(EDIT + " --rotate left --preset {not_toml_toml}", "not_toml"),
    "edit device unknown": Case(EDIT_NO_MODEL + " --model {model} --rotate left --device gpu", "device"),
    "edit device index": Case(EDIT_NO_MODEL + " --model {model} --rotate left --device cuda:99", "cuda"),
    # -- batch
    "batch nothing": Case("batch", "required: jobs, --out, --model"),
    "batch model missing": Case("batch {bad_jsonl} --out o --model {root}/nowhere", "does not exist"),
    "batch out is a file": Case("batch {bad_jsonl} --out {image_png} --model {model}", "is a file"),
    "batch jobs missing": Case("batch {root}/none.jsonl --out o --model {model}", "does not exist"),
    "batch guidance nan": Case("batch {bad_jsonl} --out o --model {model} --guidance nan", "finite"),
    # -- demo
    "demo out-dir is a file": Case("demo --out-dir {image_png}", "is a file"),
    "demo out-dir under a file": Case("demo --out-dir {image_png}/sub", "is a file"),
    "demo replaces the input": Case("demo --out-dir {demo_dir} --image {demo_dir}/input.png --overwrite", "--image"),
    "demo replaces files": Case("demo --out-dir {demo_dir}", "already exists"),
    "demo image text": Case("demo --out-dir d --image {text_png}", "not a readable image"),
    "demo image bomb": Case("demo --out-dir d --image {bomb_png}", "pixels"),
    "demo model missing": Case("demo --out-dir d --model {root}/nowhere", "does not exist"),
    "demo quantization bad": Case("demo --out-dir d --quantization int3", "invalid choice"),
    "demo guidance nan": Case("demo --out-dir d --guidance nan", "finite"),
    "demo resolution 17": Case("demo --out-dir d --resolution 17", "--resolution"),
    "demo steps 0": Case("demo --out-dir d --steps 0", "--steps"),
    "demo pitch 10": Case("demo --out-dir d --camera-pitch 10", "pitch 10"),
    "demo budget words": Case("demo --out-dir d --budget lots", "lots"),
    # -- plan (imports torch)
    "plan nothing": Case("plan", "budget"),
    "plan budget words": Case("plan --budget lots", "lots"),
    "plan preset unknown": Case("plan --preset gtx-480", "gtx-480"),
    "plan preset not toml": Case("plan --preset {not_toml_toml}", "not_toml"),
    "plan resolution 17": Case("plan --budget 24GB --resolution 17", "--resolution"),
    "plan quantization bad": Case("plan --budget 24GB --quantization int3", "invalid choice"),
    "plan device bad": Case("plan --budget 24GB --device tpu", "invalid choice"),
    "plan model missing": Case("plan --budget 24GB --model {root}/nowhere", "does not exist"),
    # -- quantize
    "quantize nothing": Case("quantize", "required"),
    "quantize model missing": Case("quantize {root}/nowhere --scheme nf4 --out q", "does not exist"),
    "quantize model is a file": Case("quantize {image_png} --scheme nf4 --out q", "does not exist"),
    "quantize scheme bad": Case("quantize {model} --scheme int3 --out q", "int3"),
    "quantize component bad": Case("quantize {model} --scheme nf4 --component vae --out q", "invalid choice"),
    "quantize out not empty": Case("quantize {model} --scheme nf4 --out {demo_dir}", "already holds something"),
    "quantize out is a file": Case("quantize {model} --scheme nf4 --out {image_png}", "already holds something"),
    "quantize out in missing folder": Case("quantize {model} --scheme nf4 --out no/q", "does not exist"),
    "quantize out name too long": Case("quantize {model} --scheme nf4 --out " + "q" * 300, "longer"),
    "quantize already quantized": Case("quantize {quantized} --scheme int8 --out q", "already a `lowmem quantize` folder"),
    "quantize config not json": Case("quantize {model_config_not_json} --scheme nf4 --out q", "config.json"),
    # -- doctor
    "doctor json exists": Case("doctor --json {existing_png}", "--overwrite"),
    "doctor json is a folder": Case("doctor --json {empty_dir} --overwrite", "is a folder"),
    "doctor json in missing folder": Case("doctor --json no/d.json", "does not exist"),
    "doctor resolution 0": Case("doctor --resolution 0", "--resolution"),
    # -- import
    "import nothing": Case("import", "required"),
    "import dit missing": Case("import --dit {root}/none.pt --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                               "--out m", "does not exist"),
    "import dit is text": Case("import --dit {text_png} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                               "--out m", "not a readable torch checkpoint"),
    "import vae missing": Case("import --dit {dit_pt} --vae {root}/none.pth --text-encoder {model}/text_encoder --out m",
                               "does not exist"),
    "import qwen missing": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {root}/none --out m",
                                "config.json"),
    "import out not empty": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                                 "--out {demo_dir}", "already holds something"),
    "import config not json": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                                   "--out m --config {text_png}", "text.png"),
    "import config missing": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                                  "--out m --config {root}/none.json", "none.json"),
    "import lora missing": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                                "--out m --lora {root}/nolora", "LoRA"),
    "import lora config not json": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder "
                                        "{model}/text_encoder --out m --lora {lora_bad}", "adapter_config.json"),
    # -- outputs that permissions allow but nothing can be created in: refused before any work
    "edit out under proc": Case(EDIT + " --rotate left --out /proc/new.png", "cannot create files in /proc"),
    "edit report under sys": Case(EDIT + " --rotate left --report /sys/report.json", "cannot create files in /sys"),
    "batch out under proc": Case("batch {bad_jsonl} --out /proc/b --model {model}", "cannot create files in /proc"),
    "demo out under proc": Case("demo --out-dir /proc/demo", "cannot create files in /proc"),
    "quantize out under proc": Case("quantize {model} --scheme nf4 --out /proc/q", "cannot create files in /proc"),
    "doctor json under proc": Case("doctor --json /proc/d.json", "cannot create files in /proc"),
    "download out under proc": Case("download --out /proc/m", "cannot create files in /proc"),
    "train-tiny out under proc": Case("train-tiny --out /proc/t", "cannot create files in /proc"),
    # -- bench-run
    "bench-run nothing": Case("bench-run", "required: --meta/--meta-file, --data/--bench-data-dir"),
    "bench-run meta missing": Case("bench-run --meta {root}/none.json --data {root} --out b --model {model}", "does not exist"),
    "bench-run meta not json": Case("bench-run --meta {bad_jsonl} --data {root} --out b --model {model}", "is not JSON"),
    "bench-run meta not a list": Case("bench-run --meta {meta_dict_json} --data {root} --out b --model {model}",
                                      "not the benchmark's list"),
    "bench-run data missing": Case("bench-run --meta {meta_dict_json} --data {root}/none --out b --model {model}",
                                   "does not exist"),
    "bench-run out is a file": Case("bench-run --meta {meta_dict_json} --data {root} --out {image_png} --model {model}",
                                    "is a file"),
    "bench-run out under proc": Case("bench-run --meta {meta_dict_json} --data {root} --out /proc/b --model {model}",
                                     "cannot create files in /proc"),
    "bench-run model missing": Case("bench-run --meta {meta_dict_json} --data {root} --out b --model {root}/nowhere",
                                    "does not exist"),
    "bench-run shard out of range": Case("bench-run --meta {meta_dict_json} --data {root} --out b --model {model} "
                                         "--shard 2/2", "--shard 2/2"),
    "bench-run steps 0": Case("bench-run --meta {meta_dict_json} --data {root} --out b --model {model} --steps 0",
                              "--steps"),
    "bench-run budget words": Case("bench-run --meta {meta_dict_json} --data {root} --out b --model {model} --budget lots",
                                   "lots"),
    # -- ui
    "ui model missing": Case("ui --model {root}/nowhere", "does not exist"),
    "ui budget words": Case("ui --budget lots", "lots"),
    "ui port words": Case("ui --port http", "--port"),
    "import shard size words": Case("import --dit {dit_pt} --vae {model}/vae/Wan2.1_VAE.pth --text-encoder {model}/text_encoder "
                                    "--out m --shard-size lots", "lots"),
}


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def sandbox(tiny_model: Path, quantized_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every input the cases name: good ones, and bad ones of each kind."""
    root = tmp_path_factory.mktemp("sandbox")
    Image.new("RGB", (64, 64), (90, 120, 200)).save(root / "image.png")
    Image.new("RGB", (8, 8)).save(root / "existing.png")
    (root / "text.png").write_text("not a picture")
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes((root / "image.png").read_bytes()[:60])
    # A 30000 x 30000 PNG of a few KB: PIL refuses to decode it (decompression bomb), and so must we.
    Image.new("1", (30000, 30000)).save(root / "bomb.png", optimize=True)
    (root / "empty_dir").mkdir()
    (root / "demo_dir").mkdir()
    Image.new("RGB", (64, 64)).save(root / "demo_dir" / "input.png")
    (root / "not_toml.toml").write_text("this = is [ not toml")
    (root / "bad.jsonl").write_text("{ not json\n")
    (root / "meta_dict.json").write_text(json.dumps({"image_path": "image.png"}))
    torch.save({"double_blocks.0.x": torch.zeros(1)}, root / "dit.pt")
    (root / "lora_bad").mkdir()
    (root / "lora_bad" / "adapter_config.json").write_text("{ nope")
    (root / "lora_bad" / "adapter_model.safetensors").write_bytes(b"")

    shutil.copytree(tiny_model, root / "model")
    shutil.copytree(quantized_model, root / "quantized")
    variants = {
        "model_no_vae": lambda m: (m / "vae" / "Wan2.1_VAE.pth").unlink(),
        "model_no_te_config": lambda m: (m / "text_encoder" / "config.json").unlink(),
        "model_config_not_json": lambda m: (m / "transformer" / "config.json").write_text("{ hidden_size: 64"),
        "model_config_types": lambda m: _edit_json(m / "transformer" / "config.json", lambda d: d.update(hidden_size="big")),
        "model_config_shapes": lambda m: _edit_json(m / "transformer" / "config.json", lambda d: d.update(hidden_size=128)),
        "model_index_not_json": lambda m: (m / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text("["),
        "model_te_config_not_json": lambda m: (m / "text_encoder" / "config.json").write_text("{"),
        "model_vae_truncated": lambda m: (m / "vae" / "Wan2.1_VAE.pth").write_bytes((m / "vae" / "Wan2.1_VAE.pth").read_bytes()[:5000]),
        "quantized_manifest_not_json": lambda m: (m / "manifest.json").write_text("{"),
        "quantized_manifest_fields": lambda m: _edit_json(m / "manifest.json", lambda d: d.pop("dit")),
        "quantized_manifest_version": lambda m: _edit_json(m / "manifest.json", lambda d: d.update(format_version=99)),
    }
    for name, change in variants.items():
        folder = Path(shutil.copytree(root / name.split("_")[0], root / name))
        change(folder)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root`: its sha256 (files) or '<dir>'."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run_case(case: Case, sandbox: Path, cwd: Path) -> tuple[int, str, float]:
    cwd.mkdir()
    start = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "lowmem", *case.args(sandbox)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"hung: still running after {TIMEOUT_S} s", TIMEOUT_S
    return done.returncode, done.stderr, time.perf_counter() - start


def judge(name: str, case: Case, code: int, stderr: str, seconds: float, cwd: Path) -> list[str]:
    """What is wrong with one case's outcome (empty: nothing)."""
    problems = []
    if code == -1:
        return [f"{name}: {stderr}"]
    if "Traceback (most recent call last)" in stderr:
        problems.append(f"{name}: traceback\n{stderr[-1500:]}")
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if case.ok:
        if code != 0:
            problems.append(f"{name}: exit {code}, expected 0: {stderr[-500:]}")
    elif code != 2 or len(errors) != 1 or case.words not in errors[0]:
        problems.append(f"{name}: exit {code}, expected 2 and one error line with {case.words!r}; stderr: {stderr[-800:]}")
    if not case.ok and any(cwd.iterdir()):
        problems.append(f"{name}: a refused run left {sorted(p.name for p in cwd.iterdir())} behind")
    return problems


def test_every_command_and_argument(sandbox: Path, tmp_path: Path):
    if torch.cuda.is_available():  # the device cases assume no GPU, as in CI
        CASES.pop("edit device index")
    before = snapshot(sandbox)
    names = list(CASES)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda i: run_case(CASES[names[i]], sandbox, tmp_path / f"case{i}"), range(len(names))))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    slowest = sorted(zip((o[2] for o in outcomes), names), reverse=True)[:8]
    print(f"{len(names)} cases, {cpu_s:.0f} CPU s in the subprocesses, {sum(o[2] for o in outcomes):.0f} s wall summed; slowest: "
          + ", ".join(f"{name} {seconds:.1f} s" for seconds, name in slowest))
    problems = [p for i, name in enumerate(names) for p in judge(name, CASES[name], *outcomes[i], tmp_path / f"case{i}")]
    after = snapshot(sandbox)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        problems.append(f"pre-existing files changed or files added among the inputs: {changed[:10]}")
    assert not problems, f"{len(problems)} of {len(names)} cases went wrong:\n\n" + "\n\n".join(problems)
