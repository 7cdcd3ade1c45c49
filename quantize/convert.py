"""The streaming converter: an original SpatialEdit folder -> a quantized, self-contained folder.

    OUT/
      manifest.json                       format version, scheme/backend per tensor, skip lists,
                                          source sha256s, per-layer error, DiT config
      transformer/config.json
      transformer/block_000.safetensors   one file per DiT block (quantized Linears + bf16 rest)
      transformer/rest.safetensors        embeddings, final layer (bf16)
      text_encoder/layer_000.safetensors  one file per Qwen3-VL decoder layer (when vlm is quantized)
      text_encoder/rest.safetensors       vision tower, embeddings, lm_head, final norm (bf16)
      text_encoder/*.json ...             config, tokenizer, processor (copied)
      vae/                                copied

The source is read one tensor at a time (safetensors mmap, opened and closed per tensor) and one
output file is written per block, so peak RAM stays near one block. Everything is built in
`OUT.partial/`; each finished block is recorded with its sha256 in `OUT.partial/partial.json`, so
an interrupted run resumes from the finished blocks, and `OUT.partial/` becomes `OUT` by one rename.
The bytes still to write (from the source's headers and the scheme's stored bytes) are checked
against the free space before the source is hashed; a disk that fills up anyway is one error that
keeps the finished blocks for the resume.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lowmem.common.disk_space import check_free_space, out_of_space_is_an_error
from lowmem.common.host_memory import return_freed_memory
from lowmem.common.paths import atomic_file, check_new_folder, copy_atomic, exclusive_lock, write_text_atomic
from lowmem.errors import CorruptCheckpointError, LowmemError
from lowmem.models.layout import open_model_folder
from lowmem.models.vae import load_folder_vae
from lowmem.models.weight_sources import (ComponentSource, check_complete, check_shards, dit_source, meta_dit, meta_vlm,
                                          read_tensor, tensor_bytes, vlm_source)
from quantize.manifest import MANIFEST, format_version, format_error_table, sha256_file, verify_file, write_json_atomic
from quantize.plan import COMPONENTS, default_skip, quantizable_linears, unit_of
from quantize.schemes import (GROUP_SIZE, check_scheme, double_quantized, dequantize, quantize_linear_weight, stored_bytes,
                              weight_error)

PARTIAL_STATE = "partial.json"
SUBDIR = {"dit": "transformer", "vlm": "text_encoder"}
# Bytes per tensor besides its data: its safetensors header entry and its manifest.json entry (name,
# scheme, shape, dtype and errors, as JSON); a generous round figure for the free-space check.
PER_TENSOR_OVERHEAD = 512


def quantize_tensors(
    names: Iterable[str],
    source: ComponentSource,
    quant_modules: set[str],
    scheme: str,
    backend: str,
    expected_shapes: dict[str, torch.Size],
    measure: bool = True,
):
    """Yield (name, stored tensors, manifest entry) for each source tensor, read one at a time."""
    for name in names:
        tensor = read_tensor(source.shards[name], name)
        if name in expected_shapes and tensor.shape != expected_shapes[name]:
            raise CorruptCheckpointError(
                f"{name} has shape {tuple(tensor.shape)} in {source.shards[name].name} but the config expects "
                f"{tuple(expected_shapes[name])}; the config does not match the weights"
            )
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module in quant_modules:
            stored = quantize_linear_weight(tensor, scheme, backend, double_quantized(scheme, backend))
            entry = {"scheme": scheme, "backend": backend, "double_quant": double_quantized(scheme, backend),
                     "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
            if measure:
                approx = dequantize(stored, tuple(tensor.shape), scheme, backend, torch.float32)
                rel, sqnr = weight_error(tensor, approx)
                del approx
                entry.update(rel_error=rel, sqnr_db=sqnr)
            yield name, {f"{module}.{k}": v for k, v in stored.items()}, entry
        else:
            entry = {"scheme": "none", "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
            yield name, {name: tensor}, entry
        del tensor


def _units(names: Sequence[str], component: str) -> dict[str, list[str]]:
    units: dict[str, list[str]] = {}
    for name in names:
        units.setdefault(unit_of(name, component), []).append(name)
    blocks = sorted(u for u in units if u != "rest")
    return {u: units[u] for u in blocks + (["rest"] if "rest" in units else [])}


def convert(
    model: str | Path,
    out: str | Path,
    scheme: str,
    backend: Optional[str] = None,
    components: Sequence[str] = COMPONENTS,
    skip: Sequence[str] = (),
    progress: bool = True,
    print_table: bool = True,
) -> dict:
    """Quantize `model` into the new folder `out`; return the manifest (also written as OUT/manifest.json)."""
    backend = check_scheme(scheme, backend)
    components = tuple(c for c in COMPONENTS if c in components)
    if not components:
        raise LowmemError("nothing to quantize: --component must be dit, vlm or all")
    folder = open_model_folder(model)
    if folder.is_quantized:
        raise LowmemError(f"{folder.root} is already a `lowmem quantize` folder; quantize the original model folder instead")
    out = Path(out).expanduser()
    check_new_folder(out)
    busy = (f"another conversion into {out} is running (it holds {lock_file_of(out).name}); "
            "wait for it to finish, or choose another --out folder")
    with exclusive_lock(lock_file_of(out), busy):
        check_new_folder(out)  # a run that held the lock may have finished it meanwhile
        return _convert_locked(folder, out, scheme, backend, components, skip, progress, print_table)


def lock_file_of(out: Path) -> Path:
    """The lock a conversion into `out` holds, beside it."""
    return out.with_name(f".{out.name}.lock")


def _convert_locked(folder, out: Path, scheme: str, backend: str, components: tuple[str, ...], skip: Sequence[str],
                    progress: bool, print_table: bool) -> dict:
    partial = out.with_name(out.name + ".partial")

    return_freed_memory()
    # Every source completely (the parts copied as they are too): the exact tensor set with the
    # config's shapes, every shard readable, the VAE loadable; so a broken source never becomes a folder.
    dit_src = dit_source(folder)
    vlm_src = vlm_source(folder.text_encoder)
    dit_model, dit_config = meta_dit(folder)
    metas = {"dit": dit_model, "vlm": meta_vlm(folder.text_encoder)}
    sources = {"dit": dit_src, "vlm": vlm_src}
    for c in COMPONENTS:
        check_shards(sources[c].shards.values())
        check_complete(sources[c], metas[c])
    load_folder_vae(folder, torch.device("cpu"))
    skips = {c: list(default_skip(c)) + list(skip) for c in COMPONENTS}
    plans = {c: set(quantizable_linears(metas[c], c, skips[c], scheme, backend)) for c in components}
    expected = {c: {k: v.shape for k, v in metas[c].state_dict().items()} for c in components}
    units = {c: _units(sources[c].names(), c) for c in components}

    # Every file this output derives from, and the files copied into it as they are.
    copied = [p for p in sorted(folder.vae_file.parent.iterdir()) if p.is_file()]
    te_files = [p for p in sorted(folder.text_encoder.iterdir()) if p.is_file()]
    tr_files = dit_src.files if "dit" in components else [p for p in sorted(folder.transformer.iterdir()) if p.is_file()]
    if folder.dit_config_file.exists() and folder.dit_config_file not in tr_files:
        tr_files = tr_files + [folder.dit_config_file]
    source_files = sorted(set(copied + te_files + tr_files))
    copies = _copies(folder, components, copied, te_files, tr_files, set(vlm_src.files))

    # Before the source is hashed (minutes for the real model): room for what is still to write.
    needed = sum(_unit_bytes(names, sources[c], plans[c], expected[c], scheme, backend)
                 for c in components for unit, names in units[c].items()
                 if not (partial / f"{SUBDIR[c]}/{unit}.safetensors").exists())
    needed += sum(src.stat().st_size for src, rel in copies if not (partial / rel).exists())
    check_free_space({out.parent: needed}, f"the conversion into {out}",
                     "free some space, or choose an --out folder on another disk")

    hashes = {str(p.relative_to(folder.root)): sha256_file(p)
              for p in tqdm(source_files, desc="hash source", disable=not progress, leave=False)}
    options = {"scheme": scheme, "backend": backend, "double_quant": double_quantized(scheme, backend),
               "components": list(components),
               "skip": {c: skips[c] for c in components}, "source_files": hashes}

    resume = f"the finished blocks stay in {partial}, and the same command resumes from them"
    with out_of_space_is_an_error(partial, needed, what="the conversion", note=resume):
        state_file = partial / PARTIAL_STATE
        state = _resumable_state(state_file, options)
        partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state_file, state)

        parts: dict[str, dict] = {}
        for c in components:
            (partial / SUBDIR[c]).mkdir(exist_ok=True)
            tensors: dict[str, dict] = {}
            files = []
            for unit, names in tqdm(units[c].items(), desc=f"quantize {c} ({scheme}/{backend})", disable=not progress,
                                    unit="block"):
                rel = f"{SUBDIR[c]}/{unit}.safetensors"
                files.append(rel)
                done = state["units"].get(rel)
                target = partial / rel
                if done and target.exists() and sha256_file(target) == done["sha256"]:
                    tensors.update(done["tensors"])
                    continue
                stored: dict[str, torch.Tensor] = {}
                entries = {}
                for name, parts_of, entry in quantize_tensors(names, sources[c], plans[c], scheme, backend, expected[c]):
                    stored.update(parts_of)
                    entry["file"] = rel
                    entries[name] = entry
                with atomic_file(target, needed=sum(t.numel() * t.element_size() for t in stored.values())) as tmp:
                    # One metadata key: safetensors writes its metadata map in hash order, so two keys would
                    # make two identical conversions differ in bytes (and in every sha256 of the manifest).
                    save_file(stored, str(tmp), metadata={"format": "pt"})
                del stored
                state["units"][rel] = {"sha256": sha256_file(target), "tensors": entries}
                write_json_atomic(state_file, state)
                tensors.update(entries)
                return_freed_memory()
            parts[c] = {"quantized": True, "files": files, "tensors": tensors}

        # The rest of a self-contained model folder; every file of it is hashed in the manifest too.
        written = {rel: u["sha256"] for rel, u in state["units"].items()}
        for src, rel in copies:
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            copy_atomic(src, partial / rel)
            written[rel] = hashes[str(src.relative_to(folder.root))]  # a copy: read back against the source's hash
        if "dit" in components:
            write_text_atomic(partial / "transformer" / "config.json", dit_config.to_json())
            written["transformer/config.json"] = sha256_file(partial / "transformer" / "config.json")

        manifest = {
            "format_version": format_version(scheme),
            "scheme": scheme,
            "backend": backend,
            "group_size": GROUP_SIZE,
            "double_quant": double_quantized(scheme, backend),
            "components": list(components),
            "skip": {c: skips[c] for c in components},
            "source": {"folder": str(folder.root.resolve()), "sha256": hashes},
            "files": written,
            "sizes": {rel: (partial / rel).stat().st_size for rel in written},
            "dit": parts.get("dit", {"quantized": False}),
            "vlm": parts.get("vlm", {"quantized": False}),
            "dit_config": asdict(dit_config),
        }
        for rel in manifest["files"]:  # read back what was written: what the loader will check
            verify_file(partial, rel, manifest)
        write_json_atomic(partial / MANIFEST, manifest)
    state_file.unlink()
    if out.exists():
        out.rmdir()  # empty (checked above)
    partial.rename(out)
    if print_table:
        print(format_error_table(manifest, limit=40))
    return manifest


def _copies(folder, components: tuple[str, ...], vae_files: list[Path], te_files: list[Path], tr_files: list[Path],
            vlm_weights: set[Path]) -> list[tuple[Path, str]]:
    """(source file, path in the output) of every file copied as it is: the VAE, the text encoder's
    configs, tokenizer and processor (its weights too when it is not quantized), the DiT's files
    when it is not quantized."""
    copies = [(p, f"vae/{p.name}") for p in vae_files]
    keep_weights = "vlm" not in components
    copies += [(p, f"text_encoder/{p.name}") for p in te_files
               if keep_weights or (p not in vlm_weights and p.suffix != ".safetensors")]
    if "dit" not in components:
        copies += [(p, f"transformer/{p.relative_to(folder.transformer).as_posix()}") for p in tr_files]
    return copies


def _unit_bytes(names: Sequence[str], source: ComponentSource, quant_modules: set[str], expected: dict[str, torch.Size],
                scheme: str, backend: str) -> int:
    """The bytes one output file of these source tensors takes: quantized Linear weights as the
    scheme stores them, the rest as the source stores them."""
    by_file: dict[Path, dict[str, int]] = {}
    total = 0
    for name in names:
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module in quant_modules:
            total += stored_bytes(tuple(expected[name]), scheme, backend)
        else:
            shard = source.shards[name]
            if shard not in by_file:
                by_file[shard] = tensor_bytes(shard)
            total += by_file[shard][name]
        total += PER_TENSOR_OVERHEAD
    return total


def _resumable_state(state_file: Path, options: dict) -> dict:
    """What an interrupted conversion with these `options` finished (partial.json), or a fresh start.
    A partial.json that does not parse or lacks its fields is said in one notice, and the conversion
    starts afresh in the same folder (its blocks are rewritten; nothing of the user's is in there)."""
    fresh = {"options": options, "units": {}}
    if not state_file.exists():
        return fresh
    try:
        previous = json.loads(state_file.read_text(encoding="utf-8"))
        problem = None if _is_state(previous) else "it lacks the options or the finished blocks"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        previous, problem = None, f"it is not valid JSON: {exc}"
    if problem is not None:
        print(f"notice: {state_file} is damaged ({problem}); the conversion starts afresh", file=sys.stderr)
        return fresh
    if previous["options"] != options:
        raise LowmemError(
            f"{state_file.parent} holds an interrupted conversion with other options or another source; "
            f"re-run with the same options to resume it, or delete {state_file.parent} to start over"
        )
    return previous


def _is_state(data) -> bool:
    """Whether `data` is what `convert` writes as partial.json: options, and a sha256 and the manifest
    entries per finished block."""
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict) or not isinstance(data.get("units"), dict):
        return False
    return all(isinstance(u, dict) and isinstance(u.get("sha256"), str) and isinstance(u.get("tensors"), dict)
               for u in data["units"].values())
