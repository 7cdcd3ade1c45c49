"""Prompt builders: the trained forms, and a clear error for anything else."""

from __future__ import annotations

import pytest
from PIL import Image

from lowmem import instructions
from lowmem.errors import InstructionError


def test_rotation_views():
    assert instructions.rotate("dog", "front-left").text == "Rotate the dog to show the front left side view."
    assert instructions.rotate("car", "Back").text == "Rotate the car to show the rear side view."
    with pytest.raises(InstructionError, match="front left"):
        instructions.rotate("dog", "top")


def test_camera_angles():
    assert instructions.camera(yaw=45).text == (
        "Move the camera. Camera rotation: Yaw 45.0°, Pitch 0.0°. Keep the 3D scene static."
    )
    assert "Pitch -15.0°" in instructions.camera(yaw=0, pitch=-15).text
    with pytest.raises(InstructionError, match="-180, -135, -90, -45, 0, 45, 90, 135, 180"):
        instructions.camera(yaw=30)
    with pytest.raises(InstructionError, match="pitch 20"):
        instructions.camera(pitch=20)
    with pytest.raises(InstructionError):
        instructions.camera(0, 0)


def test_zoom_and_scale():
    assert "zoom: in" in instructions.zoom("in").text
    with pytest.raises(InstructionError):
        instructions.zoom("sideways")
    assert "factor of 2" in instructions.scale("cup", 2).text
    with pytest.raises(InstructionError):
        instructions.scale("cup", 10)


def test_move_box_draws_red_outline():
    edit = instructions.move_to_box("cup", (10, 10, 40, 30), image_size=(64, 64))
    image = edit.prepare_image(Image.new("RGB", (64, 64), (0, 0, 0)))
    assert image.getpixel((10, 20)) == (255, 0, 0)
    assert image.getpixel((25, 20)) == (0, 0, 0)
    with pytest.raises(InstructionError, match="outside"):
        instructions.move_to_box("cup", (10, 10, 80, 30), image_size=(64, 64))
    with pytest.raises(InstructionError, match="empty"):
        instructions.move_to_box("cup", (40, 10, 10, 30))
