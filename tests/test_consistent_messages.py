"""Messages that agree with themselves: the byte figures of one refusal, one rule for sizes without a
unit, and a manifest entry that is missing named as the manifest's, not as a tensor the user never wrote."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import lowmem
from lowmem.cli import main
from lowmem.models.dit_config import TINY_DIT_CONFIG
from lowmem.offload import BudgetError, format_bytes, parse_bytes
from lowmem.planning.planner import plan_for


def refusal(budget: int) -> str:
    with pytest.raises(BudgetError) as refused:
        plan_for(TINY_DIT_CONFIG, budget, 64, "bf16", False, device="cpu")
    return str(refused.value)


def fits(budget: int) -> bool:
    try:
        plan_for(TINY_DIT_CONFIG, budget, 64, "bf16", False, device="cpu")
    except BudgetError:
        return False
    return True


@pytest.fixture(scope="module")
def smallest_budget() -> int:
    """The smallest budget the tiny DiT fits in at 64 px, found here by trying budgets, not from a message."""
    lo, hi = 1, 10**9
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("short_by", [1, 0.03])  # one byte short, 3% short (within the old search's slack)
def test_a_refusal_names_one_need_and_it_is_enough(short_by, smallest_budget):
    budget = smallest_budget - (short_by if isinstance(short_by, int) else round(smallest_budget * short_by))
    message = refusal(budget)
    need = re.search(r"needs about ([0-9.]+ [KMGT]?B)", message).group(1)
    given = re.search(r"the budget is ([0-9.]+ [KMGT]?B)", message).group(1)
    least = re.search(r"a budget of at least ([0-9.]+ [KMGT]?B)", message).group(1)
    assert need == least == format_bytes(smallest_budget, "up")  # one figure for one quantity
    assert given != need  # a budget short of the need never prints as the need
    assert fits(parse_bytes(least.replace(" ", "")))  # giving the printed figure is enough


def test_byte_figures_round_towards_what_they_promise():
    assert format_bytes(12_371_000) == "12.37 MB"
    assert format_bytes(12_371_000, "up") == "12.38 MB"
    assert format_bytes(12_379_999, "down") == "12.37 MB"
    assert format_bytes(12_370_000, "up") == format_bytes(12_370_000, "down") == "12.37 MB"
    assert format_bytes(999) == "999 B" and format_bytes(2.5e9) == "2.50 GB"


# -- one rule for sizes: text has a unit, a Python number is bytes -----------------------------------

@pytest.mark.parametrize("text", ["1", "24", "0.5", " 512 "])
def test_a_size_without_a_unit_is_refused_with_how_to_write_one(text):
    with pytest.raises(BudgetError, match=r"has no unit \(it could mean bytes or GB\); write a number and a unit"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["abc", "24XB", "GB", "nan"])
def test_an_unreadable_size_asks_for_the_same_unit(text):
    with pytest.raises(BudgetError, match=r"cannot read memory size .*; write a number and a unit, e.g. 24GB"):
        parse_bytes(text)


def test_the_cli_and_the_api_give_the_same_words_for_a_size_without_a_unit(tiny_model, image_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["edit", "--model", str(tiny_model), "--image", str(image_file), "--out", str(tmp_path / "o.png"),
              "--rotate", "left", "--budget", "1"])
    err = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and len(err.splitlines()) == 1
    with pytest.raises(BudgetError) as api:
        lowmem.load(tiny_model, memory_budget="1", device="cpu", resolution=64)
    assert str(api.value) in err and "has no unit" in err


# -- a manifest entry missing --------------------------------------------------------------------

@pytest.mark.parametrize("component, entry", [
    ("dit", "double_blocks.0.img_attn_proj.weight"),  # a quantized Linear: its file holds .qweight, .scale, ...
    ("dit", "double_blocks.0.img_mod.modulate_table"),  # a tensor stored as itself
    ("vlm", "model.language_model.layers.0.self_attn.o_proj.weight"),
])
def test_a_missing_manifest_entry_names_the_manifest_and_the_entry(component, entry, quantized_model, image_file,
                                                                   tmp_path, capsys):
    copy = Path(shutil.copytree(quantized_model, tmp_path / "q"))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest[component]["tensors"][entry]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code = main(["edit", "--model", str(copy), "--image", str(image_file), "--out", str(tmp_path / "o.png"),
                 "--rotate", "left", "--resolution", "64", "--steps", "1"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(lines) == 1, lines
    assert f"{copy / 'manifest.json'} has no entry for the {component} tensor {entry} that " in lines[0]
    assert "damaged" in lines[0] and "lowmem quantize" in lines[0] and "qweight" not in lines[0]
    assert not (tmp_path / "o.png").exists()
