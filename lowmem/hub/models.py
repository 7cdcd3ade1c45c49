"""Model folders `lowmem download` made, and `--model` given as a Hub id.

`lowmem download` writes its folder under `models_home()` unless told otherwise (`--out`), with a
`hub.json` naming the repository and commits. `resolve_model("EasonXiao-888/SpatialEdit")` finds such
a folder without the network; an id nothing was downloaded for gets the exact command to run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from lowmem.errors import ModelFolderError

HUB_RECORD = "hub.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def models_home() -> Path:
    """Where downloaded model folders go by default: $LOWMEM_HOME, else the user's cache folder."""
    if os.environ.get("LOWMEM_HOME"):
        return Path(os.environ["LOWMEM_HOME"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lowmem" / "models"


def default_folder(repo: str, quantize: Optional[str]) -> Path:
    """`models_home()/<org>--<name>[-<scheme>]`."""
    return models_home() / (repo.replace("/", "--") + (f"-{quantize}" if quantize else ""))


def downloaded(repo: str) -> list[Path]:
    """The folders under `models_home()` that `lowmem download` made from `repo`."""
    home = models_home()
    found = []
    for record in sorted(home.glob(f"*/{HUB_RECORD}")) if home.is_dir() else []:
        try:
            if json.loads(record.read_text()).get("repo") == repo:
                found.append(record.parent)
        except (OSError, ValueError):
            continue  # a damaged record is not a model this id names
    return found


def resolve_model(value: str | Path) -> Path:
    """`value` as a model folder: a path that exists as given, else a Hub id `lowmem download` fetched
    (one ModelFolderError with the command to run when it did not). Anything else is returned as a
    path, for the folder checks to report."""
    path = Path(value).expanduser()
    if path.exists() or not HUB_ID.match(str(value)):
        return path
    found = downloaded(str(value))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ModelFolderError(f"--model {value}: several downloaded folders hold it ({', '.join(map(str, found))}); "
                               "pass one of them as --model")
    from lowmem.hub.release import RELEASE_REPO

    if str(value) != RELEASE_REPO:
        raise ModelFolderError(f"--model {value} is neither a folder nor a downloaded model; `lowmem download` "
                               f"fetches {RELEASE_REPO}")
    raise ModelFolderError(f"--model {value} is not downloaded yet (looked in {models_home()}); run "
                           f"`lowmem download --quantize nf4` (or `lowmem download` for bf16), then run this again")
