"""argparse types of the run options the commands share (--budget, --preset, --device): a bad value is
refused while the arguments are read, in the same words as later checks, before any model is loaded.
Each returns the text as given: the pipeline resolves it again where it is used."""

from __future__ import annotations

import argparse
from typing import Callable

from lowmem.errors import LowmemError

ENGINE_CHOICES = ("local", "ray")  # lowmem.batch.engines.run_engine's names (that module imports torch)


def _refusing(check: Callable[[str], object], name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            check(text)
        except LowmemError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _budget(text: str) -> None:
    if text != "auto":
        from lowmem.offload.budget import parse_bytes  # imports torch: only when a budget is given

        parse_bytes(text)


def _preset(text: str) -> None:
    from lowmem.planning.presets import load_preset

    load_preset(text)


def _device(text: str) -> None:
    from lowmem.common.validation import device

    device(text)


budget = _refusing(_budget, "budget")
preset = _refusing(_preset, "preset")
device = _refusing(_device, "device")
