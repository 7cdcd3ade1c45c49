"""EditSpec: `lowmem edit`'s flags and a jobs-file line with the same fields build the same spec,
the flags' defaults are the spec's, and SpotEdit's settings come from it only when SpotEdit is on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lowmem import instructions
from lowmem.batch.jobs import parse_job
from lowmem.edits import EditSpec, add_edit_arguments, edit_spec
from lowmem.errors import InstructionError


def edit_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_edit_arguments(parser)
    return parser.parse_args(argv)


def test_flags_and_a_job_line_build_the_same_spec(tmp_path):
    argv = ["--rotate", "back", "--object", "chair", "--steps", "12", "--guidance", "3.5", "--seed", "7",
            "--spot-threshold", "auto", "--spot-dilation", "2", "--neg-prompt", "blurry"]
    from_flags = edit_spec(edit_flags(argv))
    line = {"image": "a.png", "rotate": "back", "object": "chair", "steps": 12, "guidance": 3.5, "seed": 7,
            "spot_threshold": "auto", "spot_dilation": 2, "negative_prompt": "blurry"}
    job = parse_job(json.dumps(line), 1, edit_flags([]), tmp_path, {})
    assert job.spec == from_flags
    assert from_flags == EditSpec(instructions.rotate("chair", "back"), steps=12, guidance=3.5, seed=7,
                                  spot_threshold="auto", spot_dilation=2, negative_prompt="blurry")


def test_the_flags_defaults_are_the_specs():
    spec = edit_spec(edit_flags(["--zoom", "in"]))
    assert spec == EditSpec(instructions.zoom("in"))
    assert (spec.steps, spec.guidance, spec.seed, spec.spot_threshold, spec.spot_dilation) == (30, 5.0, 0, 0.15, 1)


def test_a_given_instruction_replaces_the_edit_flags():
    chosen = instructions.scale("block", 1.5)
    assert edit_spec(edit_flags(["--seed", "3"]), chosen) == EditSpec(chosen, seed=3)
    with pytest.raises(InstructionError, match="give exactly one edit"):
        edit_spec(edit_flags(["--seed", "3"]))


def test_spot_settings_only_when_spotedit_is_on():
    spec = EditSpec(instructions.zoom("out"), spot_threshold=0.3, spot_dilation=0)
    assert spec.spot_config(False) is None
    config = spec.spot_config(True)
    assert (config.threshold, config.dilation) == (0.3, 0)


def test_a_job_line_is_refused_as_the_flags_are(tmp_path):
    with pytest.raises(InstructionError, match="camera yaw 30 was not trained"):
        parse_job(json.dumps({"image": "a.png", "camera_yaw": 30}), 1, edit_flags([]), Path(tmp_path), {})
    with pytest.raises(InstructionError, match="camera yaw 30 was not trained"):
        edit_spec(edit_flags(["--camera-yaw", "30"]))


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_a_blank_instruction_is_refused_wherever_it_comes_from(text, tmp_path):
    """Issue 29, item 8: spaces used to run an edit with an empty prompt while "" was refused."""
    with pytest.raises(InstructionError, match="the instruction is empty"):
        edit_spec(edit_flags(["--instruction", text]))
    with pytest.raises(InstructionError, match="the instruction is empty"):
        instructions.EditInstruction(text)  # the Python API's pipe.edit(image, "   ") builds one too
    with pytest.raises(InstructionError, match="the instruction is empty"):  # a jobs-file line: read_jobs reports it
        parse_job(json.dumps({"image": "a.png", "instruction": text}), 1, edit_flags([]), tmp_path, {})


def test_a_camera_angle_off_the_grid_is_named_as_given():
    with pytest.raises(InstructionError, match=r"camera yaw 45.0000001 was not trained"):
        instructions.camera(45.0000001)
