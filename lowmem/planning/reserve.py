"""The CUDA reserve: device memory a run uses that no traced tensor accounts for, with its sources.

* CUDA context: the first CUDA call maps the driver's and the libraries' kernels; PyTorch users
  see ~700 MB of device memory taken before any tensor (PyTorch forums, "High gpu memory overhead"
  and "What is the reason for pytorch's GPU memory floor": 700-800 MB depending on CUDA version
  and GPU). CUDA >= 12.2 loads modules lazily, so this is the cautious end.
* cuBLAS workspaces: one per (handle, stream) that runs matmuls: 8,519,680 B for cuBLAS
  (`CUBLAS_WORKSPACE_CONFIG` default :4096:2:16:8, seen in `torch.cuda.memory_snapshot`) plus the
  cuBLASLt workspace, 4 MiB on Ampere/Ada with >= 24 GB and 32 MiB on Hopper (PyTorch #120925).
  The copy stream runs no matmul, so one of each.
* Allocator slack: the caching allocator rounds large requests up to 2 MiB-multiple segments and
  cannot always reuse a freed block for a larger request (fragmentation); cuDNN's convolution
  workspaces (VAE) come from the same allocator. We keep 10% of the phase's traced live bytes for
  these. To be replaced by a measurement (`max_memory_reserved` against the traced peak) once a
  GPU is lent to this project.
None of it applies on the CPU, where the budget bounds RAM and the allocator is malloc.
"""

from __future__ import annotations

CUDA_CONTEXT = 700 * 2**20
CUBLAS_WORKSPACES = 8_519_680 + 32 * 2**20
ALLOCATOR_SLACK = 0.10  # of the traced live bytes of a phase


def fixed_reserve(device: str) -> int:
    """Context and workspaces: held from the first CUDA call to the end of the run."""
    return CUDA_CONTEXT + CUBLAS_WORKSPACES if device == "cuda" else 0


def allocator_slack(device: str, live_bytes: int) -> int:
    return int(live_bytes * ALLOCATOR_SLACK) if device == "cuda" else 0
