"""The official SpatialEdit-Bench output tree (`SpatialEdit-Bench/eval_inference.py`), name for name:
the scoring scripts find their files by these names, so they are facts, pinned by tests/test_bench_run.py.

    SAVE/fullset/<type>/en/<image_id>/<edit_id>.png         the edit
                                      <edit_id>_src.png     the source as the model saw it (its bucket)
                                      <edit_id>_prompt.txt  the instruction, as given (no newline added)
    camera items also:                <image stem>.json     the source's sidecar, copied (its own name)
                                      <edit_id>_gt.png      the ground truth <image stem>_gt.jpg, copied

The official code writes `<edit_id>.png` last but one and skips an item whose `<edit_id>.png` exists;
lowmem writes it last of all, so its existence means the item is complete for either program.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUBSET = "fullset"
LANGUAGE = "en"  # the official script's only instruction language (item["prompt"])
CAMERA_TYPE = "camera"  # the task whose items carry a sidecar and a ground truth
CAMERA_IMAGE_SUFFIX = ".jpg"  # the official script derives both from this suffix


def item_folder(save: Path, task: str, image_id: str) -> Path:
    return save / SUBSET / task / LANGUAGE / image_id


def camera_sidecar(image_path: str) -> Path:
    """The official `f"{image_path[:-4]}.json"`: the source's path without its 4-character suffix."""
    return Path(f"{image_path[:-4]}.json")


def camera_ground_truth(image_path: str) -> Path:
    """The official `image_path.replace(".jpg", "_gt.jpg")` (every occurrence, as str.replace does)."""
    return Path(image_path.replace(".jpg", "_gt.jpg"))


@dataclass(frozen=True)
class ItemOutputs:
    """The files one item leaves in the tree; `copies` maps a destination to the file copied there."""

    edit: Path
    source: Path
    prompt: Path
    copies: dict[Path, Path]

    def written(self) -> list[Path]:
        """Every file, in the order lowmem writes them: the edit last."""
        return [self.source, self.prompt, *self.copies, self.edit]


def item_outputs(save: Path, task: str, image_id: str, edit_id: str, image_path: str) -> ItemOutputs:
    """The outputs of one item whose source is `image_path` (joined with the data folder, as the
    official script joins it: the camera files are found from that string)."""
    folder = item_folder(save, task, image_id)
    copies: dict[Path, Path] = {}
    if task == CAMERA_TYPE:
        sidecar = camera_sidecar(image_path)
        copies[folder / sidecar.name] = sidecar
        copies[folder / f"{edit_id}_gt.png"] = camera_ground_truth(image_path)
    return ItemOutputs(edit=folder / f"{edit_id}.png", source=folder / f"{edit_id}_src.png",
                       prompt=folder / f"{edit_id}_prompt.txt", copies=copies)
