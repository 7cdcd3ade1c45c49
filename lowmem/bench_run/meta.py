"""The official SpatialEdit-Bench meta file -> items: a JSON list of objects with `image_path`
(relative to the benchmark's data folder), `type` (the task: `camera` items carry a `.json` sidecar
and a `_gt.jpg` ground truth beside the image), `image_id`, `edit_id` and `prompt` (the free-text
instruction). Other keys (the scorers' `object`, `bbox_gt`, ...) are ignored.

A file that is not a JSON list is one error; an item that cannot run (a key missing, a missing
image, an `edit_id` already used in its output folder, ...) is kept as a `BadItem` with its reason,
and the other items still run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from lowmem.bench_run.tree import CAMERA_IMAGE_SUFFIX, CAMERA_TYPE, ItemOutputs, item_outputs
from lowmem.errors import LowmemError

REQUIRED_KEYS = ("image_path", "type", "image_id", "edit_id", "prompt")
NAME_KEYS = ("type", "image_id", "edit_id")  # each becomes a file or folder name of the output tree


class MetaFileError(LowmemError, ValueError):
    """A meta file that cannot be read as the benchmark's list of items."""


class ItemError(LowmemError, ValueError):
    """One item of a meta file that cannot run."""


@dataclass(frozen=True)
class BenchItem:
    number: int  # 1-based position in the meta file (the official ranks split on the 0-based one)
    task: str
    image_id: str
    edit_id: str
    prompt: str
    image: Path  # the data folder joined with `image_path`, as the official script joins them
    outputs: ItemOutputs

    def describe(self) -> dict:
        return {"item": self.number, "type": self.task, "image_id": self.image_id, "edit_id": self.edit_id}


@dataclass(frozen=True)
class BadItem:
    number: int
    task: str  # "?" when the item has no usable type
    edit_id: str  # "?" likewise
    error: str

    def describe(self) -> dict:
        return {"item": self.number, "type": self.task, "edit_id": self.edit_id}


def read_meta_list(meta: Path) -> list:
    """The meta file's JSON list, or one MetaFileError saying what the file is instead."""
    if not meta.is_file():
        raise MetaFileError(f"meta file {meta} " + ("is a folder; give the JSON file" if meta.is_dir() else "does not exist"))
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MetaFileError(f"meta file {meta} is not UTF-8 text; give the benchmark's JSON meta file") from None
    except json.JSONDecodeError as exc:
        raise MetaFileError(f"meta file {meta} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, list):
        raise MetaFileError(f"meta file {meta} holds a JSON {type(data).__name__}, not the benchmark's list of items "
                            "(each an object with " + ", ".join(REQUIRED_KEYS) + ")")
    if not data:
        raise MetaFileError(f"meta file {meta} is an empty list: there is nothing to run")
    return data


def _name(item: dict, key: str) -> str:
    """An id used as a file or folder name: text (or a whole number, as the official f-strings take it)
    that names one entry inside its folder."""
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ItemError(f"{key!r} must be text, got {json.dumps(value)}")
    text = str(value)
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ItemError(f"{key!r} {text!r} cannot be a file or folder name of the output tree")
    return text


def parse_item(item, number: int, data: Path, save: Path) -> BenchItem:
    """One meta-file entry -> a BenchItem whose files exist; ItemError says what is wrong."""
    if not isinstance(item, dict):
        raise ItemError(f"not a JSON object but {type(item).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in item]
    if missing:
        raise ItemError(f"no {', '.join(repr(key) for key in missing)} (every item needs {', '.join(REQUIRED_KEYS)})")
    task, image_id, edit_id = (_name(item, key) for key in NAME_KEYS)
    prompt, image_path = item["prompt"], item["image_path"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ItemError(f"'prompt' must be the instruction text, got {json.dumps(prompt)}")
    if not isinstance(image_path, str) or not image_path:
        raise ItemError(f"'image_path' must be a path relative to --data, got {json.dumps(image_path)}")
    joined = os.path.join(str(data), image_path)  # the official join, from which the camera files are named
    if not Path(joined).is_file():
        raise ItemError(f"image {joined} does not exist")
    outputs = item_outputs(save, task, image_id, edit_id, joined)
    if task == CAMERA_TYPE:
        if not joined.endswith(CAMERA_IMAGE_SUFFIX):
            raise ItemError(f"a camera item's image must end in {CAMERA_IMAGE_SUFFIX} (its ground truth is "
                            f"<name>_gt{CAMERA_IMAGE_SUFFIX} and its sidecar <name>.json), got {image_path}")
        for source in outputs.copies.values():
            if not source.is_file():
                raise ItemError(f"camera item: {source} does not exist (the official run copies it beside the edit)")
    return BenchItem(number, task, image_id, edit_id, prompt, Path(joined), outputs)


def read_meta(meta: Path, data: Path, save: Path) -> list[Union[BenchItem, BadItem]]:
    """Every entry of the meta file as a BenchItem or a BadItem; an `edit_id` used twice in one output
    folder makes the later item bad (both would write one file)."""
    if not data.is_dir():
        raise MetaFileError(f"benchmark data folder {data} " + ("is a file" if data.exists() else "does not exist"))
    items: list[Union[BenchItem, BadItem]] = []
    owners: dict[Path, int] = {}
    for number, entry in enumerate(read_meta_list(meta), start=1):
        try:
            item = parse_item(entry, number, data, save)
        except LowmemError as exc:
            items.append(BadItem(number, _field(entry, "type"), _field(entry, "edit_id"), str(exc)))
            continue
        first = owners.setdefault(item.outputs.edit, number)
        if first != number:
            items.append(BadItem(number, item.task, item.edit_id, f"edit_id {item.edit_id!r} is already used in "
                                 f"{item.outputs.edit.parent} by item {first}: both would write {item.outputs.edit.name}"))
            continue
        items.append(item)
    return items


def _field(entry, key: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else "?"
