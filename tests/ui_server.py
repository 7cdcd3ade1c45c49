"""`lowmem ui`'s server on the shipped tiny model, started in the test process on 127.0.0.1 at a
free port (tests reach into its pipeline), and the pictures the tests upload."""

from __future__ import annotations

import socket
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lowmem.tiny.scenes import HELD_OUT_SEEDS, render_pair


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server() -> Iterator[tuple[str, object]]:
    """(its URL, its EditService) while the block runs."""
    from lowmem.ui.app import build_app
    from lowmem.ui.server import ServerSettings, launch, load

    service, defaults = load(ServerSettings())
    app = build_app(service, defaults)
    url = launch(app, "127.0.0.1", free_port(), share=False, block=False)
    try:
        yield url, service
    finally:
        app.close()
        service.pipe.close()


def scene_file(folder: Path) -> Path:
    """A held-out 64 px scene of the tiny model's world (a block on a ground)."""
    path = folder / "scene.png"
    render_pair(HELD_OUT_SEEDS, "move", size=64).source.image.save(path)
    return path


def bomb_file(folder: Path, side: int = 30000) -> Path:
    """A PNG that says it is side x side pixels (900 megapixels at the default): PIL refuses to open it
    as a decompression bomb before reading any pixel, so it needs no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = folder / "huge.png"
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path
