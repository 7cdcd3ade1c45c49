"""A tiny SpatialEdit-Bench in the official layout, over rendered scenes the tiny model never saw:
a meta file (a JSON list of items: image_path, type, image_id, edit_id, prompt) and a data folder
in which each camera item's `<name>.jpg` has its `<name>.json` sidecar (the scene's two cameras)
and its ground truth `<name>_gt.jpg` (the target rendering). For the `lowmem bench-run` tests, and to
try the command on a fresh machine."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lowmem.tiny.scenes import HELD_OUT_SEEDS, render_pair

# The benchmark's task types, and the tiny scene kind that stands in for each.
BENCH_TYPES = {"rotate": "rotate", "move": "move", "camera": "camera"}
META_NAME = "SpatialEdit_Bench_Meta_File.json"  # the official run's name for it (dist_inference.sh)


def write_tiny_bench(folder: Path, per_type: int = 2, size: int = 64, seed: int = HELD_OUT_SEEDS + 7000) -> Path:
    """Write the data folder `folder/data` and the meta file `folder/<META_NAME>`; returns the meta file.
    A move item's image carries its red target box, as the benchmark's move images do."""
    data = folder / "data"
    items = []
    for task, kind in BENCH_TYPES.items():
        (data / task).mkdir(parents=True, exist_ok=True)
        for n in range(per_type):
            pair = render_pair(seed + len(items), kind, size)
            name = f"{task}_{n:03d}"
            image = data / task / f"{name}.jpg"
            pair.model_input.save(image, quality=95)
            if task == "camera":
                cameras = {"source": asdict(pair.source_scene.camera), "target": asdict(pair.target_scene.camera)}
                (data / task / f"{name}.json").write_text(json.dumps(cameras, indent=1))
                pair.target.image.save(data / task / f"{name}_gt.jpg", quality=95)
            items.append({"image_path": f"{task}/{name}.jpg", "type": task, "image_id": name,
                          "edit_id": f"{name}_e0", "prompt": pair.instruction.text})
    meta = folder / META_NAME
    meta.write_text(json.dumps(items, indent=1))
    return meta
