"""A block as a set of named plain tensors packed into one flat byte buffer, and re-pointing it.

Any module whose state is plain tensors (float weights, or packed uint8/int8 weights with their
scales) is described by a `BlockLayout`: for each parameter and buffer its owner, dtype, shape and
byte offset (256-byte aligned) in one flat buffer. `bind` re-points every tensor of the module to a
view of a buffer laid out that way (no copy); `park` re-points them to zero-stride placeholders so
the module holds no memory while it waits for its next turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lowmem.offload.arena import aligned


@dataclass(frozen=True)
class Entry:
    owner: nn.Module
    attr: str
    is_param: bool
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Alias:
    """A tensor tied to one laid out elsewhere (`source`): after binding, it is re-tied to it."""

    owner: nn.Module
    attr: str
    is_param: bool
    source: Entry

    def retie(self) -> None:
        (self.owner._parameters if self.is_param else self.owner._buffers)[self.attr] = _get(self.source)


class BlockLayout:
    def __init__(self, module: nn.Module, recurse: bool = True, seen: Optional[dict[int, Entry]] = None):
        """The layout of `module`'s tensors (only its own, not its submodules', without `recurse`).
        A tensor already in `seen` (laid out by another layout) becomes an `Alias`; new ones are added."""
        entries, offset = [], 0
        self.aliases: list[Alias] = []
        for kind in ("param", "buffer"):
            named = module.named_parameters(recurse=recurse) if kind == "param" else module.named_buffers(recurse=recurse)
            for name, tensor in named:
                owner_name, _, attr = name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                if seen is not None and id(tensor) in seen:
                    self.aliases.append(Alias(owner, attr, kind == "param", seen[id(tensor)]))
                    continue
                nbytes = tensor.numel() * tensor.element_size()
                entries.append(Entry(owner, attr, kind == "param", tensor.dtype, tuple(tensor.shape), offset, nbytes))
                if seen is not None:
                    seen[id(tensor)] = entries[-1]
                offset += aligned(nbytes)
        self.entries: list[Entry] = entries
        self.nbytes = offset

    def tensors(self) -> list[torch.Tensor]:
        """The module's current tensors, in layout order."""
        return [_get(e) for e in self.entries]

    def pack_into(self, flat: torch.Tensor) -> None:
        """Copy the module's current tensors into `flat` (uint8, >= nbytes), in layout order."""
        for e, t in zip(self.entries, self.tensors()):
            if e.nbytes:
                flat[e.offset : e.offset + e.nbytes].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape) for e in self.entries]

    def bind(self, views: list[torch.Tensor]) -> None:
        for e, v in zip(self.entries, views):
            _set(e, v)

    def park(self, placeholders: dict[torch.dtype, torch.Tensor]) -> None:
        for e in self.entries:
            _set(e, placeholders[e.dtype].expand(e.shape))


def _get(e: Entry) -> torch.Tensor:
    return e.owner._parameters[e.attr] if e.is_param else e.owner._buffers[e.attr]


def _set(e: Entry, value: torch.Tensor) -> None:
    if e.is_param:
        # A new Parameter rather than `.data =`: that refuses to move a host tensor onto `meta`,
        # the device the CPU-only checks run the streamer on.
        e.owner._parameters[e.attr] = nn.Parameter(value, requires_grad=False)
    else:
        e.owner._buffers[e.attr] = value


def placeholders_for(layouts: list[BlockLayout], device: torch.device) -> dict[torch.dtype, torch.Tensor]:
    """One single-element tensor per dtype on `device`: what parked tensors point at."""
    dtypes = {e.dtype for layout in layouts for e in layout.entries}
    return {d: torch.zeros((), dtype=d, device=device) for d in dtypes}
