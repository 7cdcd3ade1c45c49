"""Every PIL mode read by its real range, transparency composited over the stated background, EXIF
orientation applied, and a crop that cuts away much of the image said on the terminal and in the report."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lowmem.cli import main
from lowmem.common.images import (
    CROP_WARNING_SHARE,
    TRANSPARENT_BACKGROUND,
    TRANSPARENT_BACKGROUND_NAME,
    fit_bucket,
    load_image,
    open_image,
    read_input,
    to_rgb,
)
from lowmem.errors import InputImageError

WHITE = TRANSPARENT_BACKGROUND


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_a_16_bit_gray_ramp_keeps_its_levels(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0..65535: each 8-bit level once
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    read = pixels(load_image(path))
    assert np.array_equal(read[..., 0], np.arange(256).reshape(16, 16))  # not all white
    assert np.array_equal(read[..., 0], read[..., 2])


def test_a_float_tiff_in_0_to_1_is_not_black(tmp_path):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "float.tif"
    Image.fromarray(ramp).save(path)
    read = pixels(load_image(path))
    assert read[0, 0, 0] == 0 and read[-1, -1, 0] == 255
    assert np.array_equal(read[..., 1], np.round(ramp * 255))


@pytest.mark.parametrize("values, expected", [
    (np.array([[0, 255]], dtype=np.int32), [0, 255]),  # 8-bit levels in a 32-bit image: as they are
    (np.array([[0, 65535]], dtype=np.int32), [0, 255]),  # 16-bit data opened as I
    (np.array([[0.0, 127.5]], dtype=np.float32), [0, 128]),  # a float image of 8-bit levels
])
def test_wide_modes_take_the_smallest_usual_range_that_holds_them(values, expected):
    rgb, notes = to_rgb(Image.fromarray(values))
    assert pixels(rgb)[0, :, 0].tolist() == expected and notes == []


def test_values_beyond_16_bits_are_stretched_and_said():
    rgb, notes = to_rgb(Image.fromarray(np.array([[-10, 100_000]], dtype=np.int32)))
    assert pixels(rgb)[0, :, 0].tolist() == [0, 255]
    assert "stretched" in notes[0] and "-10..100000" in notes[0]


def test_pixels_that_are_not_finite_are_read_as_black_and_said():
    rgb, notes = to_rgb(Image.fromarray(np.array([[np.nan, 0.5, np.inf, 1.0]], dtype=np.float32)))
    assert pixels(rgb)[0, :, 0].tolist() == [0, 128, 0, 255]
    assert notes == ["the input has 2 pixels that are not finite (nan, inf): they were read as black"]


def test_half_transparent_rgba_is_composited_over_the_stated_background(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[...] = (255, 0, 0, 128)  # half-transparent red
    rgba[0, 0] = (0, 0, 255, 255)  # one opaque blue pixel
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    rgb, notes = read_input(path)
    read = pixels(rgb)
    assert WHITE == (255, 255, 255) and TRANSPARENT_BACKGROUND_NAME == "white"
    assert read[0, 0].tolist() == [0, 0, 255]
    assert read[1, 1].tolist() == [255, 127, 127]  # red at alpha 128 over white, not plain red
    assert len(notes) == 1 and "composited over white (255, 255, 255)" in notes[0]


def test_an_opaque_rgba_image_gets_no_note():
    rgb, notes = to_rgb(Image.new("RGBA", (4, 4), (10, 20, 30, 255)))
    assert pixels(rgb)[0, 0].tolist() == [10, 20, 30] and notes == []


def test_a_palette_with_a_transparent_entry_is_composited(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # entry 0 black (transparent), 1 green
    image.putpixel((0, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    rgb, notes = read_input(path)
    assert pixels(rgb)[0, 0].tolist() == [0, 255, 0]
    assert pixels(rgb)[3, 3].tolist() == list(WHITE)  # the transparent entry, not its black
    assert notes


def test_la_with_transparency_is_composited():
    rgb, notes = to_rgb(Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), "LA"))
    assert pixels(rgb)[0].tolist() == [list(WHITE), [100, 100, 100]] and notes


def test_cmyk_goes_through_pils_conversion():
    rgb, notes = to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert pixels(rgb)[0, 0].tolist() == [255, 0, 0] and notes == []


def test_exif_orientation_is_applied(tmp_path):
    landscape = np.zeros((20, 40, 3), dtype=np.uint8)
    landscape[:, 20:] = 255  # right half white
    image = Image.fromarray(landscape)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    upright = open_image(path)
    assert upright.size == (20, 40)  # portrait, as every viewer shows it
    read = pixels(to_rgb(upright)[0])
    assert read[:15].mean() < 30 and read[25:].mean() > 225  # the white half now at the bottom
    assert load_image(path).size == (20, 40)


def test_an_image_of_the_wrong_type_is_named():
    with pytest.raises(InputImageError, match="image must be a path or a PIL image, got int"):
        read_input(123)


def test_a_folder_is_named_a_folder(tmp_path):
    with pytest.raises(InputImageError, match="is a folder; give an image file"):
        open_image(tmp_path)


def test_a_strip_cropped_to_one_percent_is_warned_about():
    fit = fit_bucket(4000, 10, base_size=64)
    assert fit.cropped_share > 0.95
    warning = fit.crop_warning()
    assert warning is not None and "4000x10" in warning and "cut away" in warning
    assert f"more than {CROP_WARNING_SHARE:.0%}" in warning and "kept: x" in warning


@pytest.mark.parametrize("size", [(1600, 1200), (1920, 1080), (1024, 1024), (64, 64)])
def test_usual_photos_are_not_warned_about(size):
    assert fit_bucket(*size, base_size=1024).crop_warning() is None


def test_the_pipeline_warns_once_on_the_terminal_and_in_the_report(tiny_pipeline, capsys):
    strip = Image.new("RGBA", (4000, 10), (200, 30, 30, 100))
    result = tiny_pipeline.edit(strip, "Rotate the object to show the left side view.", steps=1, resolution=64,
                                progress=False)
    warnings = result.report.extra["input_warnings"]
    assert len(warnings) == 2 and "composited over white" in warnings[0] and "cut away" in warnings[1]
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [f"warning: {w}" for w in warnings]
    assert "input_warnings: " + "; ".join(warnings) in result.report.format()
    assert pixels(result.input_image)[0, 0].tolist() != [200, 30, 30]  # composited, not the bare colour


def test_a_plain_input_has_no_warnings(tiny_pipeline, scene, capsys):
    result = tiny_pipeline.edit(scene, "Rotate the object to show the left side view.", steps=1, resolution=64,
                                progress=False)
    assert "input_warnings" not in result.report.extra and "warning" not in capsys.readouterr().err


def test_lowmem_edit_names_a_folder_given_as_image(tiny_model, tmp_path, capsys):
    code = main(["edit", "--model", str(tiny_model), "--image", str(tmp_path), "--out", str(tmp_path / "out.png"),
                 "--rotate", "left", "--resolution", "64", "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: input image {tmp_path} is a folder; give an image file"]
