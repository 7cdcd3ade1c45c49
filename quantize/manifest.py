"""manifest.json of a quantized model folder: what was quantized how, from which files, how well,
and the sha256 check of each file against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lowmem.common.paths import write_text_atomic
from lowmem.errors import CorruptCheckpointError, ManifestVersionError, ModelFolderError

# 2: nf4/bnb scales may be double-quantized (per-tensor `double_quant`); version 1 folders, whose
# scales are all single-level, load unchanged. An older lowmem refuses a version 2 folder cleanly
# instead of failing on the new scale tensors. 3: the fp8 scheme (F8_E4M3 codes); only fp8 folders
# are written as version 3, so an int8 or nf4 folder still loads in a lowmem that predates fp8.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"


def format_version(scheme: str) -> int:
    """The oldest format version that can hold a folder of `scheme`: what `convert` writes."""
    return FORMAT_VERSION if scheme == "fp8" else 2


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


REQUIRED_FIELDS = {"scheme": str, "backend": str, "files": dict, "dit": dict, "vlm": dict}


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a quantized folder; ManifestVersionError for a format this code cannot read."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelFolderError(f"{path} is missing: {folder} is not a `lowmem quantize` output folder") from exc
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); re-run `lowmem quantize`") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, (str, bool)):  # "2" is not 2: say what is wrong with it
        raise ModelFolderError(f"{path} has format_version {version!r}, which is not a number; this lowmem reads "
                               f"format versions {', '.join(map(str, READABLE_VERSIONS))} (numbers): re-run "
                               "`lowmem quantize` rather than editing manifest.json")
    if version not in READABLE_VERSIONS:
        raise ManifestVersionError(
            f"{path} has format_version {version!r}, but this lowmem reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; "
            f"re-run `lowmem quantize` on the original model with this version"
        )
    wrong = [key for key, kind in REQUIRED_FIELDS.items() if not isinstance(data.get(key), kind)]
    if wrong:
        raise ModelFolderError(f"{path} lacks or mistypes the field(s) {', '.join(wrong)}; re-run `lowmem quantize`")
    return data


_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, sha256) already checked by this process


def _reconvert(manifest: dict) -> str:
    source = manifest.get("source", {}).get("folder", "the original model folder")
    return f"re-convert: `lowmem quantize {source} --scheme {manifest.get('scheme')} --out NEW_FOLDER`"


def verify_sizes(root: Path, manifest: dict) -> None:
    """Every file manifest.json lists is there, with the size it was written with (folders written
    before sizes were recorded: with any size). One stat per file: checked when a folder is opened."""
    sizes = manifest.get("sizes") or {}
    for rel in manifest.get("files", {}):
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ModelFolderError(f"{path} is missing ({exc.strerror}); {_reconvert(manifest)}") from None
        if rel in sizes and size != sizes[rel]:
            raise CorruptCheckpointError(f"{path} holds {size} bytes but manifest.json recorded {sizes[rel]} (truncated or "
                                         f"changed after the conversion); {_reconvert(manifest)}")


def verify_file(root: Path, rel: str, manifest: dict) -> Path:
    """`root/rel`, after checking its bytes against the sha256 manifest.json recorded when it was
    written (once per process and file version); a changed file names itself and what to re-run."""
    path = root / rel
    expected = manifest.get("files", {}).get(rel)
    if expected is None:
        raise CorruptCheckpointError(f"{root / MANIFEST} has no sha256 for {rel}; the folder is incomplete: re-run the conversion")
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelFolderError(f"{path} is missing ({exc.strerror}); re-run the conversion") from exc
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if key not in _VERIFIED:
        if sha256_file(path) != expected:
            raise CorruptCheckpointError(
                f"{path} does not match the sha256 manifest.json recorded for it (damaged or changed after the conversion); "
                f"{_reconvert(manifest)}"
            )
        _VERIFIED.add(key)
    return path


def verify_files(root: Path, manifest: dict, under: str) -> None:
    """Check every file manifest.json lists below the folder `under` (e.g. "vae/") against its sha256."""
    for rel in manifest.get("files", {}):
        if rel.startswith(under):
            verify_file(root, rel, manifest)


def is_quantized_folder(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def error_rows(manifest: dict) -> list[tuple[str, str, float, float]]:
    """(component, tensor, relative error, SQNR dB) for every quantized tensor."""
    rows = []
    for component in ("dit", "vlm"):
        part = manifest.get(component) or {}
        for name, entry in (part.get("tensors") or {}).items():
            if entry.get("scheme") not in (None, "none"):
                rows.append((component, name, entry["rel_error"], entry["sqnr_db"]))
    return rows


def format_error_table(manifest: dict, limit: int | None = None) -> str:
    rows = error_rows(manifest)
    if not rows:
        return "no tensors were quantized"
    worst = sorted(rows, key=lambda r: -r[2])
    shown = worst if limit is None else worst[:limit]
    width = max(len(r[1]) for r in shown)
    lines = [f"{'comp':4}  {'tensor':{width}}  {'rel.err':>8}  {'SQNR dB':>7}"]
    lines += [f"{c:4}  {n:{width}}  {e:8.5f}  {s:7.2f}" for c, n, e, s in shown]
    rel = [r[2] for r in rows]
    lines.append(f"{len(rows)} quantized tensors ({manifest['scheme']}/{manifest['backend']}): "
                 f"mean rel.err {sum(rel) / len(rel):.5f}, worst {max(rel):.5f}"
                 + ("" if limit is None or len(rows) <= limit else f" (worst {limit} shown)"))
    return "\n".join(lines)
