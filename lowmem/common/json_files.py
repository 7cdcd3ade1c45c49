"""Reading the JSON files a model folder or a user hands us, with one clear error for each way they
can be wrong (missing, unreadable, not JSON, not an object)."""

from __future__ import annotations

import json
from pathlib import Path

from lowmem.errors import ModelFolderError


def read_json_object(path: Path, fix: str) -> dict:
    """The JSON object in `path`; ModelFolderError naming the file, what is wrong and `fix` (what to do)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} cannot be read ({exc}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data
