"""Where the SpatialEdit release lives on the Hugging Face Hub, and which of its files lowmem needs.

The release is spread over three repositories: the DiT checkpoint and the post-training LoRA folder
(PEFT) in the authors' repository, the conditioner as Qwen publishes it, and the VAE as one file of
Wan2.1's repository. The files inside the authors' repository are found by listing it (the official
demo names them `CKPT_PT.pth` and `CKPT_CT_lora/`), never by guessing a path.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable, Optional

from lowmem.errors import ModelFolderError

RELEASE_REPO = "EasonXiao-888/SpatialEdit"
QWEN_REPO = "Qwen/Qwen3-VL-8B-Instruct"
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B"
WAN_VAE_FILE = "Wan2.1_VAE.pth"
# The Qwen3-VL folder as transformers reads it: configs, tokenizer and processor files, the weights.
QWEN_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja")
DIT_SUFFIXES = (".pth", ".pt")
OFFICIAL_DIT_STEM = "CKPT_PT"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ReleaseLayoutError(ModelFolderError):
    """The release repository does not hold what a SpatialEdit release holds."""


@dataclass(frozen=True)
class ReleaseFiles:
    """Paths inside the release repository (POSIX, relative to its root)."""

    dit: str
    lora: Optional[str]  # the LoRA folder, None when the release has none
    config: Optional[str]  # a DiT config.json at the top, when the release ships one

    def patterns(self) -> list[str]:
        """allow_patterns that fetch exactly these files."""
        return [self.dit] + ([f"{self.lora}/{name}" for name in LORA_FILES] if self.lora else []) + \
            ([self.config] if self.config else [])


def find_release_files(names: Iterable[str], repo: str = RELEASE_REPO, revision: Optional[str] = None) -> ReleaseFiles:
    """The DiT checkpoint, LoRA folder and optional config among the repository's file `names`; one
    ReleaseLayoutError naming what was found when the layout is not a SpatialEdit release's."""
    names = sorted(set(names))
    checkpoints = [n for n in names if PurePosixPath(n).suffix in DIT_SUFFIXES]
    official = [n for n in checkpoints if PurePosixPath(n).stem == OFFICIAL_DIT_STEM]
    dit = official[0] if len(official) == 1 else checkpoints[0] if len(checkpoints) == 1 else None
    folders = {str(PurePosixPath(n).parent) for n in names if PurePosixPath(n).name == LORA_FILES[0]}
    loras = sorted(f for f in folders if f"{f}/{LORA_FILES[1]}" in names or (f == "." and LORA_FILES[1] in names))
    if dit is None or len(loras) > 1:
        where = f"{repo}" + (f" at {revision}" if revision else "")
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "no files"
        wanted = ("one DiT checkpoint (*.pth or *.pt; the official demo's CKPT_PT.pth)" if dit is None
                  else f"at most one LoRA folder (found {', '.join(loras)})")
        raise ReleaseLayoutError(f"{where} does not look like the SpatialEdit release: it holds {shown}; expected {wanted} "
                                 f"and a PEFT LoRA folder ({' + '.join(LORA_FILES)}). Pass --revision for another "
                                 "commit, or fetch the files by hand and use `lowmem import`")
    config = "config.json" if "config.json" in names else None
    return ReleaseFiles(dit=dit, lora=loras[0] if loras else None, config=config)


def needed_qwen_files(names: Iterable[str]) -> list[str]:
    """The Qwen3-VL repository's files transformers needs (not its README, images or git files)."""
    return sorted(n for n in names if "/" not in n and any(fnmatch.fnmatch(n, p) for p in QWEN_PATTERNS))
