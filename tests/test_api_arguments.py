"""The Python API is the same contract as the CLI: every public function checks its arguments and raises
lowmem's own errors, in the CLI's words, before any weight is read."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import lowmem
from lowmem import instructions
from lowmem.cli import main
from lowmem.edits import EditSpec
from lowmem.errors import ArgumentError, InputImageError, InstructionError, LowmemError
from lowmem.offload import BudgetError
from lowmem.offload.budget import HOW_TO_WRITE
from lowmem.pipeline import SpatialEditPipeline

PROMPT = "Rotate the object to show the left side view."


LOAD_CASES = [
    ({"memory_budget": math.nan}, BudgetError, "memory size nan is not a finite number"),
    ({"memory_budget": math.inf}, BudgetError, "memory size inf is not a finite number"),
    ({"memory_budget": 0.5}, BudgetError, "memory size must be at least 1 byte, got 0.5"),
    ({"memory_budget": 2.5e6 + 0.5}, BudgetError, "not a whole number of bytes"),
    ({"memory_budget": "1"}, BudgetError, "memory size '1' has no unit"),
    ({"memory_budget": "abc"}, BudgetError, "cannot read memory size 'abc'"),
    ({"memory_budget": [24]}, BudgetError, "memory size must be text such as '24GB'"),
    ({"device": "gpu9"}, ArgumentError, "device 'gpu9' is not a device name"),
    ({"device": 0}, ArgumentError, "device must be a device name"),
    ({"dtype": "float16"}, ArgumentError, "dtype must be a torch floating-point dtype"),
    ({"dtype": torch.int8}, ArgumentError, "dtype must be a torch floating-point dtype"),
    ({"preset": 5}, ArgumentError, "preset must be a preset name"),
    ({"max_resident_blocks": -1}, ArgumentError, "max_resident_blocks must be a whole number of at least 0"),
    ({"max_resident_blocks": 1.5}, ArgumentError, "max_resident_blocks must be a whole number"),
    ({"guidance": math.nan}, ArgumentError, "guidance must be a finite number"),
]


@pytest.mark.parametrize("kwargs, error, words", LOAD_CASES, ids=[str(c[0]) for c in LOAD_CASES])
def test_load_refuses_bad_arguments_before_reading_weights(kwargs, error, words, tiny_model, no_loading):
    with pytest.raises(error) as refused:
        lowmem.load(tiny_model, **{"device": "cpu", "resolution": 64, **kwargs})
    assert words in str(refused.value)
    if isinstance(refused.value, BudgetError):
        assert str(refused.value).endswith(HOW_TO_WRITE)  # every size error says how to write one


def test_a_model_that_is_not_a_path_is_named(no_loading):
    with pytest.raises(ArgumentError, match="model must be a path .* got int 123"):
        SpatialEditPipeline.from_folder(123, device="cpu")


EDIT_CASES = [
    ({"image": 123}, InputImageError, "image must be a path or a PIL image, got int"),
    ({"image": None}, InputImageError, "image must be a path or a PIL image, got NoneType"),
    ({"instruction": None}, InstructionError, "the instruction must be text or a lowmem.instructions.EditInstruction"),
    ({"instruction": 123}, InstructionError, "got int 123"),
    ({"spot": True}, ArgumentError, "spot must be a lowmem.spotedit.SpotConfig or None"),
    ({"progress": "no"}, ArgumentError, "progress must be True or False"),
]


@pytest.mark.parametrize("kwargs, error, words", EDIT_CASES, ids=[str(c[0]) for c in EDIT_CASES])
def test_edit_refuses_bad_arguments(kwargs, error, words, tiny_pipeline, scene, monkeypatch):
    def no_encoding(*args, **kw):
        raise AssertionError("the edit ran although an argument was wrong")

    monkeypatch.setattr(tiny_pipeline.conditioner, "encode", no_encoding)
    arguments = {"image": scene, "instruction": PROMPT, "steps": 1, "resolution": 64, "progress": False, **kwargs}
    with pytest.raises(error, match=words):
        tiny_pipeline.edit(**arguments)


def test_edit_takes_numbers_written_as_text_as_the_flags_do(tiny_pipeline, scene):
    result = tiny_pipeline.edit(scene, PROMPT, steps="1", seed="3", resolution="64", progress=False)
    assert (result.report.steps, result.report.seed) == (1, 3)


BUILDER_CASES = [
    (lambda: instructions.camera(yaw="forty"), "camera yaw must be a number, got 'forty'"),
    (lambda: instructions.camera(yaw=None), "camera yaw must be a number, got None"),
    (lambda: instructions.camera(pitch=math.nan), "camera pitch must be a finite number"),
    (lambda: instructions.camera(yaw="30"), "camera yaw 30 was not trained"),
    (lambda: instructions.rotate(123, "left"), "the object's name must be text, got int 123"),
    (lambda: instructions.rotate("dog", None), "the view must be text, got NoneType None"),
    (lambda: instructions.move_to_box("cup", None), "a box is four pixel coordinates"),
    (lambda: instructions.move_to_box("cup", ("a", 1, 2, 3)), "four whole pixel coordinates"),
    (lambda: instructions.move_to_box("cup", (1.5, 2, 10, 10)), "four whole pixel coordinates"),
    (lambda: instructions.move_to_box("cup", (1, 2, 10, 10), image_size=5), "image_size is the input image's"),
    (lambda: instructions.scale("cup", None), "scale factor must be a number, got None"),
    (lambda: instructions.scale("cup", "ten"), "scale factor must be a number"),
    (lambda: instructions.EditInstruction(None), "the instruction must be text, got NoneType"),
    (lambda: instructions.EditInstruction("Move it.", box="abc"), "four whole pixel coordinates"),
]


@pytest.mark.parametrize("call, words", BUILDER_CASES, ids=[w for _, w in BUILDER_CASES])
def test_builders_refuse_bad_arguments_with_an_instruction_error(call, words):
    with pytest.raises(InstructionError, match=words):
        call()


def test_builders_take_numbers_written_as_text():
    assert instructions.camera(yaw="45") == instructions.camera(yaw=45)
    assert instructions.camera(pitch="-15.0") == instructions.camera(pitch=-15)
    assert instructions.scale("cup", "2") == instructions.scale("cup", 2)
    assert instructions.move_to_box("cup", [1, 2, 10.0, 10]).box == (1, 2, 10, 10)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"instruction": None}, InstructionError, "the instruction must be text"),
    ({"steps": 0}, ArgumentError, "steps must be between 1 and 1000"),
    ({"guidance": math.inf}, ArgumentError, "guidance must be a finite number"),
    ({"spot_threshold": math.nan}, ArgumentError, "finite"),
    ({"spot_dilation": -1}, ArgumentError, "SpotEdit dilation must be between"),
    ({"negative_prompt": 3}, ArgumentError, "negative_prompt must be text"),
])
def test_an_edit_spec_built_in_code_is_checked(kwargs, error, words):
    with pytest.raises(error, match=words):
        EditSpec(**{"instruction": instructions.EditInstruction(PROMPT), **kwargs})
    assert EditSpec(PROMPT).instruction == instructions.EditInstruction(PROMPT)  # text becomes an instruction


# -- the same bad values through the CLI: one line, exit 2, the API's words --------------------------

CLI_CASES = [
    (["--budget", "nan"], {"memory_budget": "nan"}, "cannot read memory size 'nan'; " + HOW_TO_WRITE),
    (["--budget", "1"], {"memory_budget": "1"}, "memory size '1' has no unit (it could mean bytes or GB); " + HOW_TO_WRITE),
    (["--budget", "0.5"], {"memory_budget": "0.5"}, "memory size '0.5' has no unit"),
    (["--budget", "0.1B"], {"memory_budget": "0.1B"}, "memory size must be at least 1 byte, got '0.1B'"),
    (["--device", "gpu9"], {"device": "gpu9"}, "device 'gpu9' is not a device name"),
    (["--guidance", "nan"], {"guidance": "nan"}, "guidance must be a finite number, got 'nan'"),
]


@pytest.mark.parametrize("flags, kwargs, words", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_the_cli_refuses_the_same_values_in_the_same_words(flags, kwargs, words, tiny_model, image_file, tmp_path,
                                                           capsys, no_loading):
    argv = ["edit", "--model", str(tiny_model), "--image", str(image_file), "--out", str(tmp_path / "o.png"),
            "--rotate", "left", "--resolution", "64", *flags]
    try:
        status = main(argv)
    except SystemExit as stop:  # the argument parser's refusal
        status = stop.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines
    with pytest.raises(LowmemError, match=re.escape(words.split(";")[0])):
        lowmem.load(tiny_model, **{"device": "cpu", "resolution": 64, **kwargs})


def test_an_image_path_and_a_pil_image_are_read_alike(tiny_pipeline, tmp_path):
    image = Image.new("LA", (64, 64), (90, 0))  # fully transparent gray: white once read
    path = Path(tmp_path / "la.png")
    image.save(path)
    from_path = tiny_pipeline.edit(path, PROMPT, steps=1, resolution=64, progress=False)
    from_pil = tiny_pipeline.edit(image, PROMPT, steps=1, resolution=64, progress=False)
    assert from_path.input_image.getpixel((5, 5)) == from_pil.input_image.getpixel((5, 5)) == (255, 255, 255)
