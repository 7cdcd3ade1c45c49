"""3D rotary position embedding over the (frame, height, width) token grid, real (cos, sin) form.

Follows the official SpatialEdit / HunyuanVideo convention: each axis gets `rope_dim_list[i]` of the
head dim, frequencies theta^(-2j/dim), and channel pairs (2j, 2j+1) rotate together.

The tables depend only on (grid, rope dims, theta, device), so they are built once, on the device
that uses them (every tensor of the computation is created there), and kept in a small cache:
every forward of an edit reuses them, and no table is ever copied between devices.
"""

from __future__ import annotations

from functools import lru_cache

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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, L, heads, head_dim) by per-token tables (L, head_dim) or (B, L, head_dim)."""
    if cos.dim() == 2:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.float()
    even, odd = xf.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((-odd, even), dim=-1).flatten(-2)
    return (xf * cos + rotated * sin).type_as(x)
