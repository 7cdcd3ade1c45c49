"""`lowmem download` (issue 26) through the real huggingface_hub code, offline, from a Hub cache the
tests write in the exact layout huggingface_hub keeps (`models--org--name/blobs`, `snapshots/<commit>`
links, `refs/main`), holding the tiny model in the release's file layout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lowmem.cli import main
from lowmem.hub.release import QWEN_REPO, RELEASE_REPO, WAN_REPO, ReleaseLayoutError, find_release_files
from lowmem.models.dit_config import TINY_DIT_CONFIG
from lowmem.tiny.random_model import tiny_dit_state_dict

ROOT = Path(__file__).resolve().parents[1]
COMMITS = {RELEASE_REPO: "1" * 40, QWEN_REPO: "2" * 40, WAN_REPO: "3" * 40}


def put_repo(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """One repository as huggingface_hub caches it: content-addressed blobs, a snapshot of links, a ref."""
    commit = COMMITS[repo]
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)


def release_files(tmp: Path) -> dict[str, bytes]:
    """The tiny DiT as the official release ships it: CKPT_PT.pth ({"model": state}) and a PEFT LoRA folder."""
    state = tiny_dit_state_dict()
    torch.save({"model": state}, tmp / "dit.pth")
    g = torch.Generator().manual_seed(3)
    out_f, in_f = state["double_blocks.0.img_attn_qkv.weight"].shape
    save_file({"base_model.model.double_blocks.0.img_attn_qkv.lora_A.weight": torch.randn(4, in_f, generator=g) * 0.1,
               "base_model.model.double_blocks.0.img_attn_qkv.lora_B.weight": torch.randn(out_f, 4, generator=g) * 0.1},
              tmp / "adapter.safetensors")
    return {"CKPT_PT.pth": (tmp / "dit.pth").read_bytes(),
            "CKPT_CT_lora/adapter_config.json": json.dumps({"r": 4, "lora_alpha": 8}).encode(),
            "CKPT_CT_lora/adapter_model.safetensors": (tmp / "adapter.safetensors").read_bytes(),
            "config.json": TINY_DIT_CONFIG.to_json().encode(), "README.md": b"# SpatialEdit\n"}


@pytest.fixture(scope="module")
def hub_cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub-cache"
    put_repo(cache, RELEASE_REPO, release_files(tmp))
    text_encoder = tiny_model / "text_encoder"
    put_repo(cache, QWEN_REPO, {**{p.name: p.read_bytes() for p in text_encoder.iterdir() if p.is_file()},
                                "README.md": b"# Qwen3-VL\n"})
    put_repo(cache, WAN_REPO, {"Wan2.1_VAE.pth": (tiny_model / "vae" / "Wan2.1_VAE.pth").read_bytes(),
                               "README.md": b"# Wan2.1\n"})
    return cache


@pytest.fixture
def offline_hub(hub_cache: Path, tmp_path: Path, monkeypatch) -> Path:
    """huggingface_hub reading `hub_cache` with HF_HUB_OFFLINE=1; downloaded folders under tmp/home."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("LOWMEM_HOME", str(tmp_path / "home"))
    return hub_cache


def edit_args(model: str, image: Path, out: Path) -> list[str]:
    return ["edit", "--model", model, "--image", str(image), "--out", str(out), "--steps", "2", "--resolution", "64",
            "--rotate", "left", "--device", "cpu"]


def test_release_files_are_found_by_listing_and_a_foreign_layout_is_named():
    found = find_release_files(["README.md", "CKPT_PT.pth", "CKPT_CT_lora/adapter_config.json",
                                "CKPT_CT_lora/adapter_model.safetensors", "other/ckpt.pt"])
    assert (found.dit, found.lora, found.config) == ("CKPT_PT.pth", "CKPT_CT_lora", None)
    assert found.patterns() == ["CKPT_PT.pth", "CKPT_CT_lora/adapter_config.json", "CKPT_CT_lora/adapter_model.safetensors"]
    with pytest.raises(ReleaseLayoutError, match=r"it holds README.md, model.safetensors; expected one DiT checkpoint"):
        find_release_files(["README.md", "model.safetensors"])


def test_download_edits_exactly_as_the_imported_folder(offline_hub, tiny_model, image_file, tmp_path, capsys):
    assert main(["download", "--no-progress"]) == 0
    folder = tmp_path / "home" / "EasonXiao-888--SpatialEdit"
    record = json.loads((folder / "hub.json").read_text())
    assert record["revisions"] == COMMITS and record["files"]["dit"] == "CKPT_PT.pth"
    assert not (folder / "text_encoder" / "README.md").exists()  # only the files transformers reads
    # the VAE is the cached blob, hard-linked (one file system here): no second copy
    blob = (offline_hub / "models--Wan-AI--Wan2.1-T2V-1.3B" / "snapshots" / COMMITS[WAN_REPO] / "Wan2.1_VAE.pth").resolve()
    assert (folder / "vae" / "Wan2.1_VAE.pth").stat().st_ino == blob.stat().st_ino

    snapshot = offline_hub / "models--EasonXiao-888--SpatialEdit" / "snapshots" / COMMITS[RELEASE_REPO]
    imported = tmp_path / "imported"
    assert main(["import", "--dit", str(snapshot / "CKPT_PT.pth"), "--lora", str(snapshot / "CKPT_CT_lora"),
                 "--vae", str(blob), "--text-encoder", str(tiny_model / "text_encoder"), "--config",
                 str(snapshot / "config.json"), "--out", str(imported), "--no-progress"]) == 0
    assert main(edit_args(RELEASE_REPO, image_file, tmp_path / "by-id.png")) == 0  # --model as the Hub id
    assert main(edit_args(str(imported), image_file, tmp_path / "imported.png")) == 0
    assert (tmp_path / "by-id.png").read_bytes() == (tmp_path / "imported.png").read_bytes()
    capsys.readouterr()
    assert main(["download", "--no-progress"]) == 2  # again: the folder is there, and kept
    assert "already holds a downloaded model (hub.json); use it as --model" in capsys.readouterr().err


def test_an_existing_output_is_kept_and_an_uncached_repo_is_one_clear_error(offline_hub, tmp_path, capsys, monkeypatch):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["download", "--out", str(out), "--no-progress"]) == 2
    assert "already holds something" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["download", "--out", str(tmp_path / "new"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the Hugging Face cache" in err[0] and "HF_HUB_OFFLINE" in err[0]
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.*"))


def test_too_little_disk_is_refused_before_anything_is_written(offline_hub, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert main(["download", "--out", str(tmp_path / "m"), "--quantize", "nf4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "1.00 KB is free" in err and "nothing was written" in err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_a_hub_id_nothing_was_downloaded_for_says_what_to_run(tmp_path, monkeypatch, capsys, image_file):
    monkeypatch.setenv("LOWMEM_HOME", str(tmp_path / "nothing"))
    assert main(edit_args(RELEASE_REPO, image_file, tmp_path / "o.png")) == 2
    err = capsys.readouterr().err
    assert "is not downloaded yet" in err and "lowmem download --quantize nf4" in err


def test_cli_transcript_download_quantized_then_edit_by_id(hub_cache, image_file, tmp_path):
    """The issue's 'done when', as a user types it: real environment variables, two processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "LOWMEM_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "lowmem"]
    done = subprocess.run(run + ["download", "--quantize", "nf4", "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "home" / "EasonXiao-888--SpatialEdit-nf4"
    assert f"wrote {folder} (nf4;" in done.stdout and (folder / "manifest.json").is_file()
    edit = subprocess.run(run + edit_args(RELEASE_REPO, image_file, tmp_path / "o.png"), env=env, capture_output=True,
                          text=True, timeout=300)
    assert edit.returncode == 0, edit.stderr[-2000:]
    assert (tmp_path / "o.png").is_file() and "saved" in edit.stdout


# -- online failures, against a stand-in for the Hub's API on 127.0.0.1 ------------------------------
# The server answers the repository-info call (`GET /api/models/<repo>/revision/<rev>`) the way the
# Hub does for a repository that does not exist (404), a private one without a token (401) and a gated
# one (403 "GatedRepo"): status and the X-Error-Code header huggingface_hub reads.
HUB_ANSWERS = {"nobody/missing": (404, "RepoNotFound"), RELEASE_REPO: (401, "RepoNotFound"),
               "someone/gated": (403, "GatedRepo")}


@pytest.fixture
def hub_server(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            repo = "/".join(self.path.split("?")[0].split("/")[3:5])
            status, code = HUB_ANSWERS.get(repo, (404, "RepoNotFound"))
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield server
    server.shutdown()


@pytest.mark.parametrize("repo,expected", [("nobody/missing", "was not found on http://127.0.0.1"),
                                           ("someone/gated", "is gated: accept its terms")])
def test_unknown_and_gated_repositories_are_one_clear_error(hub_server, repo, expected):
    from lowmem.hub.fetch import HubError, list_repo

    with pytest.raises(HubError, match=expected):
        list_repo(repo, None)


def test_a_private_release_without_a_token_names_hf_token(hub_server, tmp_path, capsys):
    assert main(["download", "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and RELEASE_REPO in err[0] and "HF_TOKEN" in err[0]
    assert not (tmp_path / "m").exists()


def test_no_network_names_offline_mode_and_the_cache(tmp_path, capsys, monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert main(["download", "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hub" in err and "HF_HUB_OFFLINE=1" in err and "cache" in err


class FakeHub:
    """The Hub's file-serving side on 127.0.0.1, enough for huggingface_hub's download path: repository
    info and tree with sizes, HEAD of a file (commit, ETag, size) and GET with Range; `gets` records
    each file GET. While `dropping` names a file, every GET of it stops halfway through and closes
    the connection (a dropped download)."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repos, self.dropping, self.gets = repos, None, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                self.serve(body=False)

            def do_GET(self):
                self.serve(body=True)

            def serve(self, body: bool):
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and "/".join(parts[2:4]) in hub.repos:
                    repo = "/".join(parts[2:4])
                    files = hub.repos[repo]
                    if len(parts) > 4 and parts[4] == "tree":  # the listing snapshot_download walks
                        data = json.dumps([{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                           for n, b in files.items()]).encode()
                    else:  # repository info (model_info)
                        data = json.dumps({"id": repo, "sha": COMMITS[repo], "siblings": [
                            {"rfilename": n, "size": len(b)} for n, b in files.items()]}).encode()
                    return self.reply(200, data, {"Content-Type": "application/json"}, body)
                if parts[0] == "api":  # anything else the client asks the API for: not on this stand-in
                    return self.reply(404, b"", {}, body)
                repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                data = hub.repos[repo][name]
                headers = {"X-Repo-Commit": COMMITS[repo], "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
                start = 0
                if body:
                    hub.gets.append(name)
                if body and self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                chunk = data[start:]
                if body and name == hub.dropping:
                    self.send_response(206 if start else 200)
                    for key, value in {**headers, "Content-Length": str(len(chunk))}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(chunk[: max(1, len(chunk) // 2)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.reply(206 if start else 200, chunk, headers, body)

            def reply(self, status, data, headers, body):
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"


def test_a_dropped_download_is_resumed_and_a_rerun_fetches_only_what_is_missing(tiny_model, tmp_path):
    """Through HF_ENDPOINT (a mirror, as users set it), in a process of its own: a connection dropped in
    the middle of a file is retried by huggingface_hub, and when the run still fails every finished
    file stays in the cache, so the rerun fetches only the missing one. (huggingface_hub resumes a file
    from the 10 MB chunks it has written, which these small files never reach, and since 1.x it keeps
    no partial file across processes: the library's choices.)"""
    text_encoder = tiny_model / "text_encoder"
    hub = FakeHub({RELEASE_REPO: release_files(tmp_path),
                   QWEN_REPO: {p.name: p.read_bytes() for p in text_encoder.iterdir() if p.is_file()},
                   WAN_REPO: {"Wan2.1_VAE.pth": (tiny_model / "vae" / "Wan2.1_VAE.pth").read_bytes()}})
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "0"}
    command = [sys.executable, "-m", "lowmem", "download", "--out", str(tmp_path / "m"), "--no-progress"]
    hub.dropping = "Wan2.1_VAE.pth"  # the last file fetched
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]  # besides the library's
    assert first.returncode == 2 and len(errors) == 1 and "cannot reach the Hub" in errors[0], first.stderr[-2000:]
    assert "Trying to resume download" in first.stderr  # huggingface_hub's own retry notices
    assert not (tmp_path / "m").exists()
    assert "CKPT_PT.pth" in hub.gets and "config.json" in hub.gets and hub.gets.count("Wan2.1_VAE.pth") > 1

    hub.dropping, hub.gets = None, []
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert hub.gets == ["Wan2.1_VAE.pth"]  # nothing else downloaded again
    assert (tmp_path / "m" / "hub.json").is_file() and not list((tmp_path / "cache").rglob("*.incomplete"))
    hub.server.shutdown()
