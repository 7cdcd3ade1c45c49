"""Live bytes of real modules, traced on the `meta` device: what the planner's activation numbers come from.

`LiveBytes` is a `TorchDispatchMode`: every storage an op creates is counted when it appears and
uncounted when its last reference goes (a weakref finalizer on the storage), so `peak` is the most
bytes that the traced code kept alive at once beyond what existed before the trace (weights, inputs).
On `meta` nothing is computed, so a full-size DiT block at 1024² with CFG traces in
~0.02 s (2.41 GiB live at its peak, in the image MLP, with 256 text tokens).

What it counts is what a caching allocator is asked for by the ops as dispatched. It does not see
allocator rounding and segment slack, cuBLAS/cuDNN workspaces, or kernel-internal scratch: those
belong to the planner's CUDA reserve. Attention is traced as the fused kernel CUDA runs (memory
linear in the sequence length, see `FusedAttention`), not as the N x N math fallback.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Counts bytes of storages created inside the mode while they live; `peak` is the high-water mark."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # storage id (_cdata) -> bytes, while it lives

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        existing = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage(), existing)
        return out

    def _count(self, storage: torch.UntypedStorage, existing: set[int]) -> None:
        key = storage._cdata
        if key in existing or key in self._sizes:  # a view, an in-place result or already counted
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def trace_peak(fn: Callable[[], Any]) -> int:
    """Peak live bytes created while running `fn()` for inference (no autograd graph keeps
    temporaries alive) on `meta` tensors; the result is dropped."""
    with torch.no_grad(), FusedAttention(), LiveBytes() as tracer:
        fn()
    return tracer.peak


class FusedAttention(TorchFunctionMode):
    """`scaled_dot_product_attention` on meta tensors allocates as CUDA's fused kernels do.

    On meta (as on CPU) torch takes the math path, which materialises the (L, S) score matrix; the
    flash / memory-efficient kernels a GPU runs keep only the output and a float32 log-sum-exp per
    query (plus a boolean mask turned into an additive bias of the mask's own shape)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or args[0].device.type != "meta":
            return func(*args, **kwargs)
        query, key, value = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        bias = mask.to(query.dtype) if mask is not None and mask.dtype == torch.bool else None
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        del bias, logsumexp  # scratch, freed when the kernel returns
        return out
