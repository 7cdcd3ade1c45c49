"""The tiny SpatialEdit trained in this repository, shipped as package data.

`lowmem train-tiny --out lowmem/tiny/trained/tiny-spatialedit --seed 0 --threads 2` (the defaults of
lowmem.tiny.training.TrainingSettings) wrote it; its `training.json` records the settings, losses and
phase times, and README the measured quality. It is the default model of
`lowmem demo`, of the examples and of bench/quality.py.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from lowmem.errors import ModelFolderError

TRAINED_TINY_SEED = 0
# SpotEdit on the tiny model's 64 px edits: their token grid is 4 x 4, and growing the edited set by
# one token on every side (the CLI's default) would mark most of it edited and skip nothing.
TINY_SPOT_DILATION = 0


def trained_tiny_model() -> Path:
    """The shipped tiny model folder (official layout, loads like any other `--model`)."""
    folder = Path(str(files("lowmem.tiny") / "trained" / "tiny-spatialedit"))
    if not (folder / "transformer").is_dir():
        raise ModelFolderError(f"the shipped tiny model is missing ({folder}); reinstall lowmem, or train it with "
                               f"`lowmem train-tiny --out DIR --seed {TRAINED_TINY_SEED}` and pass --model DIR")
    return folder
