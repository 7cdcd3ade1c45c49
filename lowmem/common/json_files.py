"""Reading the text and JSON files a model folder or a user hands us, with one clear error for each
way they can be wrong (missing, unreadable, not UTF-8, not JSON, not an object)."""

from __future__ import annotations

import json
from pathlib import Path

from lowmem.errors import LowmemError, ModelFolderError


def read_text(path: Path, fix: str, error: type[LowmemError] = ModelFolderError) -> str:
    """The UTF-8 text of `path`; `error` naming the file, what is wrong and `fix` (what to do)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); {fix}") from None
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror or exc}); {fix}") from None


def read_json_object(path: Path, fix: str) -> dict:
    """The JSON object in `path`; ModelFolderError naming the file, what is wrong and `fix` (what to do)."""
    path = Path(path)
    try:
        data = json.loads(read_text(path, fix))
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data
