"""`lowmem download`: from the Hub to a model folder ready to edit (or already quantized).

    release = describe_release(revision)       # list three repositories: files, sizes, commits
    check_disk(...)                            # before the first byte: the cache and the output
    fetched = fetch(release)                   # huggingface_hub's cache, resumable
    import_official(... fetched ...)           # the model folder; the VAE and Qwen3-VL hard-linked
                                               # from the cache (no second copy where one file system)
    convert(...)                               # with --quantize: the quantized folder

The folder records where it came from in `hub.json` (each repository's commit), which is also how
`--model EasonXiao-888/SpatialEdit` finds it later (`lowmem.hub.models`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from lowmem.common.paths import check_new_folder, check_writable_folder, write_text_atomic
from lowmem.errors import OutputPathError
from lowmem.common.disk_space import existing_parent
from lowmem.hub.fetch import Release, cache_dir, check_disk, describe_release, environment, fetch
from lowmem.hub.models import HUB_RECORD
from lowmem.hub.release import RELEASE_REPO

# What a quantized folder keeps of the bf16 bytes (quantize.stored_bytes of a 4096x4096 weight over
# bf16's 2 bytes); the layers kept in bf16 (norms, embeddings, the vision tower) make the real folder
# a little larger, hence the margin.
QUANTIZED_SHARE = {"nf4": 0.258, "int8": 0.5005, "fp8": 0.5005}
SIZE_MARGIN = 1.1


def output_bytes(release: Release, out: Path, quantize: Optional[str]) -> dict[Path, int]:
    """Bytes each file system receives besides the cache: the imported DiT (written), the VAE and
    Qwen3-VL files (hard links: free on the cache's file system, copies elsewhere), and with
    `quantize` a temporary bf16 folder plus the quantized one."""
    dit = release.release.sizes[release.layout.dit]
    linked = sum(release.qwen.sizes.values()) + sum(release.wan.sizes.values())
    same_fs = existing_parent(cache_dir()).stat().st_dev == existing_parent(out.parent).stat().st_dev
    needs = dit + (0 if same_fs else linked)
    if quantize:
        needs += int((dit + linked) * QUANTIZED_SHARE[quantize] * SIZE_MARGIN)
    return {out.parent: needs}


def download_model(out: Path, quantize: Optional[str] = None, revision: Optional[str] = None,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Fetch the release and write the model folder `out` (quantized when `quantize`); return the
    record written as `out/hub.json`. An existing `out` is kept intact unless `overwrite`."""
    out = Path(out).expanduser()
    if (out / HUB_RECORD).is_file() and not overwrite:
        raise OutputPathError(f"{out} already holds a downloaded model ({HUB_RECORD}); use it as --model, or pass "
                              "--overwrite to download it again (nothing was changed)")
    if overwrite:
        check_writable_folder(out.parent)
    else:
        check_new_folder(out)  # absent or empty, in a writable folder: refused before any download
    release = describe_release(revision)
    check_disk({cache_dir(): release.download_bytes, **output_bytes(release, out, quantize)})
    fetched = fetch(release, progress)

    from lowmem.models.dit_config import DiTConfig
    from lowmem.models.official_import import import_official, link_or_copy

    config = DiTConfig.from_file(fetched.config) if fetched.config else None
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.download.", dir=out.parent))
    try:
        # Only the Qwen3-VL files transformers reads (an offline snapshot may hold more), as links.
        text_encoder = work / "text_encoder"
        for name in release.qwen.sizes:
            link_or_copy(fetched.text_encoder / name, text_encoder / name)
        imported = import_official(fetched.dit, fetched.vae, text_encoder, work / "bf16", lora=fetched.lora,
                                   config=config, progress=progress)
        built = imported
        if quantize:
            from quantize import convert

            built = work / quantize
            convert(imported, built, quantize, progress=progress, print_table=False)
        record = {"repo": RELEASE_REPO, "revisions": fetched.revisions, "quantization": quantize,
                  "files": {"dit": release.layout.dit, "lora": release.layout.lora, "config": release.layout.config},
                  "hub": environment(), "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text_atomic(built / HUB_RECORD, json.dumps(record, indent=2) + "\n")
        _put_in_place(built, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def _put_in_place(built: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an old `out` (with --overwrite) goes only once the new
    one is in place."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        old = out.with_name(f".{out.name}.replaced")
        os.replace(out, old)
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists():
            out.rmdir()
        os.replace(built, out)
