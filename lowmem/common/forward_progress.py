"""A progress bar for a phase that has no loop of its own (a VAE pass, the conditioner): it moves each
time one of the phase's stages finishes its forward, so a 4096 px encode on a CPU shows it is alive."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional

from torch import nn
from tqdm.auto import tqdm


@contextmanager
def forward_progress(stages: Sequence[nn.Module], desc: str, total: Optional[int] = None,
                     enabled: bool = True) -> Iterator[None]:
    """While the block runs, a bar over the forwards of `stages` (`total` when the number of passes is
    known, else a count with its rate). Hooks are removed however the block ends."""
    if not enabled or not stages:
        yield
        return
    bar = tqdm(total=total, desc=desc, unit="stage", leave=False, file=sys.stderr, dynamic_ncols=True)

    def tick(*_) -> None:  # a forward hook that returns something replaces the stage's output
        bar.update(1)

    handles = [stage.register_forward_hook(tick) for stage in stages]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
