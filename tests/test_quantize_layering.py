"""quantize/ is a library below the runtime: it knows formats, and never imports the runtime's
loading, offload or pipeline (those import quantize; the reverse would make a cycle and put
runtime decisions back into the quantization tool)."""

from __future__ import annotations

import ast
from pathlib import Path

import quantize

RUNTIME = ("lowmem.loading", "lowmem.offload", "lowmem.pipeline")


def imported_names(source: str, package: str) -> set[str]:
    """Every module `source` imports, at any depth of the file (function-level imports included),
    as dotted names; `from a import b` counts as both `a` and `a.b`, relative ones are resolved in `package`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def runtime_imports(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in RUNTIME))


def test_the_scan_finds_every_form_of_a_runtime_import():
    source = (
        "import lowmem.offload.plan as plan\n"
        "from lowmem import pipeline\n"
        "def f():\n    from lowmem.loading import ModelLoader\n"
        "from lowmem.models.layout import open_model_folder\n"
        "from .schemes import check_scheme\n"
    )
    found = imported_names(source, "quantize")
    assert runtime_imports(found) == ["lowmem.loading", "lowmem.loading.ModelLoader", "lowmem.offload.plan",
                                      "lowmem.pipeline"]
    assert "quantize.schemes" in found


def test_quantize_imports_nothing_from_the_runtime_above_it():
    root = Path(quantize.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) >= 6  # the scan really walked the package
    offenders = {}
    for path in modules:
        relative = path.relative_to(root.parent)
        package = ".".join(relative.with_suffix("").parts[:-1])
        offenders[str(relative)] = runtime_imports(imported_names(path.read_text(), package))
    assert {path: names for path, names in offenders.items() if names} == {}
