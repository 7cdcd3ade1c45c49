"""Imports only go down: the layers contract in pyproject.toml (docs/architecture.md), run by import-linter.

The contract is checked on this tree, and on copies of it with one forbidden import added, to show
that the check fails on each kind of break: an import from a lower layer up to a higher one (also
inside a function), the batch engine reaching up into the command line, two sibling layers
importing each other, and quantize reaching up into the runtime that loads its files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lowmem", "quantize")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """import-linter over the packages in `tree` (found through PYTHONPATH), with `tree`'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def source_copy(destination: Path) -> Path:
    """The packages' Python files and pyproject.toml, without the shipped weights."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            target = destination / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.copyfile(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def test_this_tree_keeps_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imports only go down the layers KEPT" in result.stdout


BREAKS = {
    # module that gains the import, the line added, the import the report must name
    "a model module imports the pipeline, inside a function": (
        "lowmem/models/rope.py", "\ndef _upward():\n    from lowmem.pipeline import SpatialEditPipeline\n",
        "lowmem.models.rope -> lowmem.pipeline"),
    "the batch engine reaches up into the command line": (
        "lowmem/batch/jobs.py", "\nfrom lowmem.cli.edit import add_arguments\n", "lowmem.batch.jobs -> lowmem.cli.edit"),
    "spotedit imports the planner that sizes it": (
        "lowmem/spotedit/cache.py", "\nfrom lowmem.planning import planner\n", "lowmem.spotedit.cache -> lowmem.planning.planner"),
    "the tiny model's world imports the edit spec, its sibling": (
        "lowmem/tiny/scenes.py", "\nfrom lowmem.edits import EditSpec\n", "lowmem.tiny.scenes -> lowmem.edits"),
    "quantize imports the runtime's loader": (
        "quantize/convert.py", "\nfrom lowmem.loading import ModelLoader\n", "quantize.convert -> lowmem.loading"),
}


@pytest.mark.parametrize("case", BREAKS, ids=list(BREAKS))
def test_an_added_upward_import_breaks_the_contract(case, tmp_path):
    module, added, reported = BREAKS[case]
    tree = source_copy(tmp_path)
    with open(tree / module, "a") as file:
        file.write(added)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "imports only go down the layers BROKEN" in result.stdout
    assert reported in result.stdout, result.stdout
