"""Named plan presets: `offload_plans/*.toml`, one hardware class per file, validated strictly.

A preset fills in the planner's defaults for a kind of machine (its memory budget, host RAM, the
precision that suits it); anything given on the command line or to `plan_for` wins over it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from lowmem.common.json_files import read_text
from lowmem.errors import LowmemError
from lowmem.offload.budget import BudgetError, parse_bytes

PRECISIONS = ("bf16", "fp32", "int8", "fp8", "nf4")
DEVICES = ("cuda", "cpu")
STORAGE = ("auto", "pinned", "pageable", "disk")


class PresetError(LowmemError, ValueError):
    """A preset that does not exist or whose file is invalid."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    device: str
    budget: int  # bytes of compute-device memory (RAM when device is cpu)
    host_ram: int | None = None  # bytes of host RAM the runtime may pin / hold
    resolution: int = 1024
    quantization: str = "bf16"
    prefetch_depth: int | None = None
    storage: str = "auto"
    vae_tile: int | None = None  # None: the planner decides (untiled when it fits)
    spotedit: bool = False
    # Device figures for the time model (`lowmem plan`), each with its source in the preset file.
    bf16_tflops: float | None = None  # dense bf16 tensor throughput (FP32 accumulate), TFLOP/s
    # Dense peaks of the W8A8 GEMMs (`lowmem.planning.compute_choice`); absent: the card cannot run that mode.
    fp8_tflops: float | None = None  # dense fp8 (e4m3) tensor throughput (FP32 accumulate), TFLOP/s
    int8_tops: float | None = None  # dense int8 tensor throughput (int32 accumulate), TOP/s
    sustained: float | None = None  # fraction of it a whole DiT forward sustains
    h2d_gbps: float | None = None  # pinned host-to-device copy bandwidth, GB/s

    @property
    def peak_rates(self) -> dict[str, float]:
        """Dense peak tera-ops per second of each compute mode this card runs (bf16 first); empty
        without device figures."""
        rates = {"bf16": self.bf16_tflops, "fp8": self.fp8_tflops, "int8": self.int8_tops}
        return {mode: rate for mode, rate in rates.items() if rate} if self.bf16_tflops else {}


_KEYS = {f.name for f in fields(Preset)}


def presets_dir() -> Path:
    import offload_plans

    return Path(offload_plans.__file__).parent


def available_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def _check_choice(path: Path, key: str, value, choices) -> None:
    if value not in choices:
        raise PresetError(f"{path.name}: {key} = {value!r} is not one of {', '.join(choices)}")


def parse_preset(path: Path) -> Preset:
    """Read and validate one preset file; one PresetError names the file, the key and what is allowed."""
    path = Path(path)
    try:
        data = tomllib.loads(read_text(path, "save it as UTF-8 text (TOML files are UTF-8)", PresetError))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path.name} is not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise PresetError(f"{path.name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    for key in ("description", "device", "budget"):
        if key not in data:
            raise PresetError(f"{path.name}: missing required key {key!r}")
    data.setdefault("name", path.stem)
    if data["name"] != path.stem:
        raise PresetError(f"{path.name}: name = {data['name']!r} must match the file name {path.stem!r}")
    try:
        for key in ("budget", "host_ram"):
            if key in data:
                data[key] = parse_bytes(data[key])
    except BudgetError as exc:
        raise PresetError(f"{path.name}: {exc}") from exc
    _check_choice(path, "device", data["device"], DEVICES)
    _check_choice(path, "quantization", data.get("quantization", "bf16"), PRECISIONS)
    _check_choice(path, "storage", data.get("storage", "auto"), STORAGE)
    for key in ("resolution", "prefetch_depth", "vae_tile"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PresetError(f"{path.name}: {key} must be a non-negative integer, got {value!r}")
    if "resolution" in data and (data["resolution"] < 64 or data["resolution"] % 16):
        raise PresetError(f"{path.name}: resolution must be a multiple of 16 and at least 64, got {data['resolution']}")
    if data.get("vae_tile") and data["vae_tile"] % 8:
        raise PresetError(f"{path.name}: vae_tile must be a multiple of 8, got {data['vae_tile']}")
    for key in ("bf16_tflops", "fp8_tflops", "int8_tops", "sustained", "h2d_gbps"):
        value = data.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise PresetError(f"{path.name}: {key} must be a positive number, got {value!r}")
    if data.get("sustained") is not None and data["sustained"] > 1:
        raise PresetError(f"{path.name}: sustained is a fraction of the peak (0..1], got {data['sustained']}")
    if not isinstance(data.get("spotedit", False), bool):
        raise PresetError(f"{path.name}: spotedit must be true or false")
    if (data.get("fp8_tflops") or data.get("int8_tops")) and not data.get("bf16_tflops"):
        raise PresetError(f"{path.name}: fp8_tflops / int8_tops need bf16_tflops (the rate of everything else)")
    return Preset(**data)


def load_preset(name: str | Path) -> Preset:
    """A preset by name (`rtx4090-24gb`) or by path to a .toml file."""
    path = Path(name)
    if path.suffix != ".toml":
        path = presets_dir() / f"{name}.toml"
    if not path.exists():
        raise PresetError(f"unknown preset {str(name)!r}; available: {', '.join(available_presets())}")
    return parse_preset(path)
