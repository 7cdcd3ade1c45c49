"""Giving freed host memory back to the OS while a model is read block by block.

glibc raises its mmap threshold after the first few large frees and from then on keeps freed
block-sized buffers in its heaps: reading a model one block at a time (quantizing it, or packing
streamed blocks into their store) would see RSS creep toward the model's size although each block
is freed. Fixing the threshold makes large buffers mmapped again (returned on free), and trimming
releases what the heaps already hold.
"""

from __future__ import annotations


def return_freed_memory() -> None:
    """Make glibc give freed large buffers back to the OS, and trim its heaps (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed at 1 MiB (also stops its dynamic growth)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
