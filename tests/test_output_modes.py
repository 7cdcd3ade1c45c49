"""Outputs follow the umask as any other tool's do (issue 29, item 7): files renamed into place from
mkstemp (0600) and folders from mkdtemp (0700) get the mode open() and mkdir() would have given them."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from lowmem.common.images import save_image_atomic
from lowmem.common.paths import process_umask, staged_folder, write_text_atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_take_the_umask(umask, tmp_path):
    assert process_umask() == umask
    assert mode(write_text_atomic(tmp_path / "report.json", "{}")) == 0o666 & ~umask
    assert mode(save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.png")) == 0o666 & ~umask
    with staged_folder(tmp_path / "model") as staging:
        (staging / "a.txt").write_text("x")
    assert mode(tmp_path / "model") == 0o777 & ~umask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives, for comparison
    assert mode(tmp_path / "report.json") == mode(plain)
