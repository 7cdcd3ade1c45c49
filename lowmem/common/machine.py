"""What this machine has: accelerator, memory, disk, library versions (for `lowmem doctor`)."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

LIBRARIES = ("torch", "transformers", "diffusers", "accelerate", "safetensors", "bitsandbytes", "optimum-quanto")


@dataclass
class MachineInfo:
    gpu_name: Optional[str]
    gpu_total_bytes: int
    gpu_free_bytes: int
    host_ram_bytes: int
    host_available_bytes: int
    disk_free_bytes: int
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_name is not None

    def to_dict(self) -> dict:
        return asdict(self)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (Linux); falls back to sysconf for the total elsewhere."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    except OSError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        info = {"MemTotal": total, "MemAvailable": total}
    return info


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def inspect_machine(disk_path: str | Path = ".") -> MachineInfo:
    gpu_name, total, free = None, 0, 0
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
        free, total = torch.cuda.mem_get_info(0)
    mem = _meminfo()
    return MachineInfo(
        gpu_name=gpu_name,
        gpu_total_bytes=total,
        gpu_free_bytes=free,
        host_ram_bytes=mem.get("MemTotal", 0),
        host_available_bytes=mem.get("MemAvailable", mem.get("MemTotal", 0)),
        disk_free_bytes=shutil.disk_usage(disk_path).free,
        versions=library_versions(),
    )


def available_memory(device: torch.device | str) -> int:
    """Bytes this run may use on `device` right now: free GPU memory, or available RAM on the CPU
    (what `--budget auto` plans for)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    mem = _meminfo()
    return mem.get("MemAvailable", mem.get("MemTotal", 0))
