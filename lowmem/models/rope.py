"""3D rotary position embedding over the (frame, height, width) token grid, real (cos, sin) form.

Follows the official SpatialEdit / HunyuanVideo convention: each axis gets `rope_dim_list[i]` of the
head dim, frequencies theta^(-2j/dim), and channel pairs (2j, 2j+1) rotate together.

The tables depend only on (grid, rope dims, theta, device), so they are built once, on the device
that uses them (every tensor of the computation is created there), and kept in a small cache:
every forward of an edit reuses them, and no table is ever copied between devices.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

TABLE_CACHE_SIZE = 8  # distinct (grid, dims, theta, device) kept: resolutions x devices of one process


def axis_frequencies(dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (len(positions), dim) for one axis on `positions`' device, each frequency
    repeated for its channel pair."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)[: dim // 2] / dim
    inv_freq = 1.0 / (theta**exponents)
    angles = torch.outer(positions.to(torch.float64), inv_freq)
    return (
        angles.cos().float().repeat_interleave(2, dim=1),
        angles.sin().float().repeat_interleave(2, dim=1),
    )


@lru_cache(maxsize=TABLE_CACHE_SIZE)
def _grid_tables(
    grid: tuple[int, int, int], rope_dim_list: tuple[int, ...], theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):  # plain tensors: usable inside and outside inference mode
        axes = [torch.arange(n, device=device) for n in grid]
        mesh = torch.meshgrid(*axes, indexing="ij")
        tables = [axis_frequencies(dim, m.reshape(-1), theta) for dim, m in zip(rope_dim_list, mesh)]
        cos = torch.cat([c for c, _ in tables], dim=1)
        sin = torch.cat([s for _, s in tables], dim=1)
    return cos, sin


def grid_rope(
    grid: tuple[int, int, int], rope_dim_list: tuple[int, ...], theta: float, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (t*h*w, head_dim) on `device` for tokens laid out frame-major, then row, then
    column. Cached and shared between callers: never modify them in place."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _grid_tables(tuple(int(n) for n in grid), tuple(int(d) for d in rope_dim_list), float(theta), device)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Rotate x (B, L, heads, head_dim) by per-token tables (L, head_dim) or (B, L, head_dim) laid out
    as `grid_rope` makes them (each value repeated for its channel pair), into `out` when given.

    Each pair (e, o) becomes (e cos - o sin, o cos + e sin), computed in float32 and rounded once to
    x's dtype: the same roundings as rotating the whole float32 copy, but with two half-size float32
    temporaries alive at a time instead of five full-size ones."""
    if cos.dim() == 2:
        cos, sin = cos[None, :, None, 0::2], sin[None, :, None, 0::2]
    else:
        cos, sin = cos[:, :, None, 0::2], sin[:, :, None, 0::2]
    out = torch.empty_like(x) if out is None else out
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    for first, straight, crossed, sign in ((0, even, odd, -1), (1, odd, even, 1)):
        rotated = straight * cos  # float32: the tables are float32
        rotated.add_(crossed * sin, alpha=sign)
        # A strided view taken right before its write: autograd (training) accepts that in-place copy.
        out[..., first::2].copy_(rotated)
        del rotated
    return out
