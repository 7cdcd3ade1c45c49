"""Fetching the release's files into the Hugging Face cache, through `huggingface_hub` only.

Everything network-side is the library's: the cache layout (`HF_HOME` / `HF_HUB_CACHE`), resumed
partial downloads, the token (`HF_TOKEN`), mirrors (`HF_ENDPOINT`), offline mode (`HF_HUB_OFFLINE`:
the cache is read and nothing is fetched), its progress bars, and the faster transfer backends when
installed. What is lowmem's: which files (`release`), listing each repository once to know sizes and
the commit, a disk-space check before the first byte, and one clear error per failure.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TypeVar

from lowmem.common.disk_space import check_free_space, is_out_of_space, out_of_space
from lowmem.errors import LowmemError
from lowmem.hub.release import (
    QWEN_REPO,
    RELEASE_REPO,
    WAN_REPO,
    WAN_VAE_FILE,
    ReleaseFiles,
    find_release_files,
    needed_qwen_files,
)

T = TypeVar("T")


class HubError(LowmemError):
    """The Hub (or the cache standing in for it) cannot give what was asked."""


@dataclass
class RepoFiles:
    """The files lowmem takes from one repository at one commit, with their sizes."""

    repo: str
    commit: str
    sizes: dict[str, int]  # path in the repository -> bytes
    missing: dict[str, int] = field(default_factory=dict)  # of those, not in the cache yet

    @property
    def download_bytes(self) -> int:
        return sum(self.missing.values())


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_call(repo: str, call: Callable[[], T]) -> T:
    """`call()`, its huggingface_hub failures turned into one HubError saying what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return call()
    except GatedRepoError as exc:
        raise HubError(f"{repo} is gated: accept its terms on the Hub page, then log in (`hf auth login`) or set "
                       "HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{repo} was not found on {constants.ENDPOINT}: check the name; a private repository needs "
                       "HF_TOKEN (or `hf auth login`)") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{repo} has no revision like that; pass an existing branch, tag or commit to --revision") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if offline():
            raise HubError(f"{repo} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1 forbids "
                           "downloading: unset HF_HUB_OFFLINE, or point HF_HUB_CACHE at a cache that holds it") from exc
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} for {repo} ({type(exc).__name__}): check the "
                       f"network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use the cache in {cache_dir()}") from exc
    except transport_errors() as exc:  # connection refused or reset, DNS, timeouts; or a full disk
        if is_out_of_space(exc):
            raise out_of_space(cache_dir(), what="the download", note="what was fetched stays in the cache and "
                               "`lowmem download` resumes from it") from exc
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} for {repo} ({exc}): check the network (or "
                       f"HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use the cache in {cache_dir()}") from exc


def transport_errors() -> tuple[type[BaseException], ...]:
    """The network failures of the HTTP clients huggingface_hub has used (httpx2 today), and OSError."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def list_repo(repo: str, revision: Optional[str]) -> tuple[str, dict[str, int]]:
    """(commit, path -> size) of every file of `repo` at `revision`: from the Hub, or offline from the
    cached snapshot (the files the cache holds)."""
    if offline():
        from huggingface_hub import snapshot_download

        snapshot = Path(hub_call(repo, lambda: snapshot_download(repo, revision=revision, local_files_only=True)))
        files = [p for p in snapshot.rglob("*") if p.is_file()]
        return snapshot.name, {p.relative_to(snapshot).as_posix(): p.stat().st_size for p in files}
    from huggingface_hub import HfApi

    info = hub_call(repo, lambda: HfApi().model_info(repo, revision=revision, files_metadata=True))
    return info.sha, {s.rfilename: s.size or 0 for s in info.siblings or []}


def _cached(repo: str, commit: str, name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, name, revision=commit), str)


def repo_files(repo: str, revision: Optional[str], choose: Callable[[list[str]], list[str]]) -> RepoFiles:
    commit, sizes = list_repo(repo, revision)
    chosen = {name: sizes[name] for name in choose(sorted(sizes))}
    missing = {name: size for name, size in chosen.items() if not _cached(repo, commit, name)}
    return RepoFiles(repo, commit, chosen, missing)


@dataclass
class Release:
    """What `lowmem download` takes from each repository (at fixed commits), before fetching."""

    release: RepoFiles
    layout: ReleaseFiles
    qwen: RepoFiles
    wan: RepoFiles

    @property
    def repos(self) -> list[RepoFiles]:
        return [self.release, self.qwen, self.wan]

    @property
    def download_bytes(self) -> int:
        return sum(r.download_bytes for r in self.repos)

    @property
    def total_bytes(self) -> int:
        return sum(sum(r.sizes.values()) for r in self.repos)


def describe_release(revision: Optional[str] = None) -> Release:
    """List the three repositories and pick the files (the release's by its layout)."""
    layout_of: dict[str, ReleaseFiles] = {}

    def release_choice(names: list[str]) -> list[str]:
        layout_of["layout"] = find_release_files(names, RELEASE_REPO, revision)
        return layout_of["layout"].patterns()

    release = repo_files(RELEASE_REPO, revision, release_choice)
    qwen = repo_files(QWEN_REPO, None, needed_qwen_files)
    if not any(n.endswith(".safetensors") for n in qwen.sizes):
        raise HubError(f"{QWEN_REPO} at {qwen.commit} holds no .safetensors weights; it is not the Qwen3-VL release")

    def wan_choice(names: list[str]) -> list[str]:
        if WAN_VAE_FILE not in names:
            raise HubError(f"{WAN_REPO} at its newest commit has no {WAN_VAE_FILE}; fetch it by hand and use "
                           "`lowmem import`")
        return [WAN_VAE_FILE]

    wan = repo_files(WAN_REPO, None, wan_choice)
    return Release(release, layout_of["layout"], qwen, wan)


def check_disk(needs: dict[Path, int]) -> None:
    """Refuse before any byte is written when a file system has less free space than what will be
    written to it (`needs`: a folder on each file system -> bytes), naming both numbers."""
    check_free_space(needs, "this download", "free some space, or point HF_HUB_CACHE / --out at another disk")


@dataclass
class Fetched:
    """Local paths (inside the Hugging Face cache) of everything the import reads."""

    dit: Path
    lora: Optional[Path]
    config: Optional[Path]
    vae: Path
    text_encoder: Path
    revisions: dict[str, str]


def fetch(release: Release, progress: bool = True) -> Fetched:
    """Download what is missing (resumable, with the library's progress bars unless `progress` is
    False) and return the paths."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        return _fetch(release)
    finally:
        if quiet:
            enable_progress_bars()


def _fetch(release: Release) -> Fetched:
    from huggingface_hub import hf_hub_download, snapshot_download

    def snapshot(files: RepoFiles) -> Path:
        return Path(hub_call(files.repo, lambda: snapshot_download(files.repo, revision=files.commit,
                                                                   allow_patterns=list(files.sizes))))

    root = snapshot(release.release)
    qwen = snapshot(release.qwen)
    vae = Path(hub_call(WAN_REPO, lambda: hf_hub_download(WAN_REPO, WAN_VAE_FILE, revision=release.wan.commit)))
    layout = release.layout
    return Fetched(dit=root / layout.dit, lora=root / layout.lora if layout.lora else None,
                   config=root / layout.config if layout.config else None, vae=vae, text_encoder=qwen,
                   revisions={r.repo: r.commit for r in release.repos})


def environment() -> dict[str, str]:
    """The huggingface_hub settings in effect (for the report)."""
    from huggingface_hub import constants

    return {"endpoint": constants.ENDPOINT, "cache": str(cache_dir()), "offline": str(offline()).lower(),
            "token": "set" if os.environ.get("HF_TOKEN") else "from `hf auth login` or none"}
