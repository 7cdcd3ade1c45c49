"""Shared fixtures: one tiny seeded model folder per test session, written through lowmem.tiny.random_model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lowmem.tiny.random_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model: Path):
    from lowmem.pipeline import SpatialEditPipeline

    return SpatialEditPipeline.from_folder(tiny_model, device="cpu")


@pytest.fixture
def scene() -> Image.Image:
    """64x64 RGB test image: a red square on a grey-blue background."""
    canvas = np.full((64, 64, 3), (200, 210, 225), dtype=np.uint8)
    canvas[20:44, 20:44] = (180, 60, 40)
    return Image.fromarray(canvas)


@pytest.fixture(scope="session")
def quantized_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted to nf4 by `lowmem quantize` (read-only: copy it to change it)."""
    from lowmem.cli import main

    out = tmp_path_factory.mktemp("quantized") / "nf4"
    assert main(["quantize", str(tiny_model), "--scheme", "nf4", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def image_file(scene, tmp_path: Path) -> Path:
    """The `scene` saved as a PNG file."""
    path = tmp_path / "in.png"
    scene.save(path)
    return path


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model folder, to damage."""
    import shutil

    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@pytest.fixture
def cache_arenas(monkeypatch) -> list:
    """Every pinned arena SpotEdit's host cache ring makes while the test runs, in order."""
    import lowmem.spotedit.cache_ring as cache_ring

    arenas = []

    class Counted(cache_ring.PinnedArena):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            arenas.append(self)

    monkeypatch.setattr(cache_ring, "PinnedArena", Counted)
    return arenas


class Loaded(AssertionError):
    """A model folder was read (or converted) although an argument was already wrong."""


@pytest.fixture
def no_loading(monkeypatch) -> type[Loaded]:
    """While the test runs, reading a model folder's weights or converting one raises Loaded (returned,
    for tests that catch it to say which case read weights)."""
    import importlib

    import lowmem.loading

    def refuse(*args, **kwargs):
        raise Loaded("weights were read before the bad argument was refused")

    monkeypatch.setattr(lowmem.loading.ModelLoader, "__init__", refuse)
    monkeypatch.setattr(importlib.import_module("quantize.convert"), "convert", refuse)
    return Loaded
