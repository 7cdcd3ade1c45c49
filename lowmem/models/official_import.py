"""Turn the official SpatialEdit release into a lowmem model folder, merging its LoRA on the way.

The official code loads the DiT from one torch `.pt` state dict (optionally under a "model" key),
then applies the post-training LoRA (a PEFT adapter folder: adapter_config.json +
adapter_model.safetensors, rank 16) with `merge_and_unload`. This importer does the same merge,
W + (alpha / r) * B @ A per adapted Linear, in float32, and writes the result as sharded safetensors
with an index, next to the VAE and the Qwen3-VL folder: the layout every lowmem command reads.

The `.pt` is opened with mmap, tensors are read one at a time and each shard is written to a
temporary name and renamed; the whole folder is built beside the target and renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lowmem.common.disk_space import check_free_space, existing_parent
from lowmem.common.json_files import read_json_object
from lowmem.common.paths import staged_folder, write_text_atomic
from lowmem.errors import CorruptCheckpointError, ModelFolderError
from lowmem.models.dit import build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.models.layout import DIT_INDEX, open_model_folder

PEFT_PREFIX = "base_model.model."
DEFAULT_SHARD_BYTES = 5 * 10**9


def read_official_dit(path: Path) -> dict[str, torch.Tensor]:
    """The official DiT state dict, memory-mapped (nothing is read until a tensor is used)."""
    if not path.is_file():
        raise ModelFolderError(f"DiT checkpoint {path} does not exist; pass the official .pt file")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise CorruptCheckpointError(f"{path} is not a readable torch checkpoint ({exc}); re-download it") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"{path} does not hold a state dict of tensors")
    return {k: v for k, v in state.items() if "repa" not in k}  # training-only head, as the official loader


def infer_dit_config(state: dict[str, torch.Tensor]) -> DiTConfig:
    """The DiT configuration from the tensor shapes (the released 16B one for the official weights)."""
    try:
        hidden, in_channels = state["img_in.weight"].shape[:2]
        head_dim = state["double_blocks.0.img_attn_q_norm.weight"].shape[0]
        text_dim = state["condition_embedder.text_embedder.linear_1.weight"].shape[1]
        mlp_hidden = state["double_blocks.0.img_mlp.net.0.proj.weight"].shape[0]
        out_channels = state["proj_out.weight"].shape[0] // 4
    except KeyError as exc:
        raise CorruptCheckpointError(f"the DiT checkpoint has no {exc.args[0]!r}: it is not a SpatialEdit DiT") from exc
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("double_blocks."))
    # Split the head dim over (t, h, w) as the release does: [16, 56, 56] for 128.
    t_dim = head_dim // 8
    hw = (head_dim - t_dim) // 2
    return DiTConfig(hidden_size=hidden, heads_num=hidden // head_dim, mm_double_blocks_depth=depth,
                     in_channels=in_channels, out_channels=out_channels, text_states_dim=text_dim,
                     mlp_width_ratio=mlp_hidden / hidden, rope_dim_list=(t_dim, hw, head_dim - t_dim - hw))


class LoRA:
    """A PEFT LoRA adapter folder: per adapted module, A (r, in) and B (out, r), and the scale."""

    def __init__(self, folder: Path):
        config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise ModelFolderError(f"LoRA folder {folder} needs adapter_config.json and adapter_model.safetensors")
        config = read_json_object(config_file, "pass the PEFT LoRA folder of the release")
        rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (rank, alpha)):
            raise ModelFolderError(f"{config_file} needs a positive rank 'r' (and 'lora_alpha'), got r={rank!r}, "
                                   f"lora_alpha={alpha!r}")
        self.scale = alpha / (rank**0.5 if config.get("use_rslora") else rank)
        self.pairs: dict[str, dict[str, torch.Tensor]] = {}
        self.keys: dict[tuple[str, str], str] = {}  # (module, "A" | "B") -> its name in the adapter file
        try:
            with safe_open(weights, "pt", device="cpu") as reader:
                for key in reader.keys():
                    module, _, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
                    self.pairs.setdefault(module, {})[part.split(".")[0]] = reader.get_tensor(key)
                    self.keys[module, part.split(".")[0]] = key
        except (SafetensorError, OSError) as exc:
            raise CorruptCheckpointError(f"{weights} is truncated or corrupt ({exc})") from exc
        for module, pair in self.pairs.items():
            if set(pair) != {"A", "B"}:
                raise CorruptCheckpointError(f"LoRA module {module} lacks its lora_A or lora_B weight")

    def check_against(self, expected: dict[str, torch.Size]) -> None:
        """Every adapted module is a Linear of the DiT whose weight (out, in) takes this pair: A of
        (rank, in), B of (out, rank); else one CorruptCheckpointError naming the tensor and both shapes."""
        for module, pair in sorted(self.pairs.items()):
            base = expected.get(f"{module}.weight")
            if base is None or len(base) != 2:
                raise CorruptCheckpointError(f"the LoRA adapts {module!r}, which is not a Linear of this DiT")
            out_features, in_features = base
            a, b = pair["A"], pair["B"]
            rank = a.shape[0] if a.dim() == 2 else None
            for part, tensor, wanted in (("A", a, (rank, in_features)), ("B", b, (out_features, rank))):
                if tuple(tensor.shape) != wanted:
                    raise CorruptCheckpointError(
                        f"the LoRA's {self.keys[module, part]} has shape {tuple(tensor.shape)}, but {module}.weight is "
                        f"{tuple(base)} (lora_{part} must be {'(rank, in)' if part == 'A' else '(out, rank)'}): the LoRA "
                        "belongs to another model; pass the release's own LoRA folder")

    def delta(self, module: str) -> Optional[torch.Tensor]:
        """scale * B @ A in float32 for `module`, or None when the adapter does not touch it."""
        pair = self.pairs.get(module)
        return None if pair is None else self.scale * (pair["B"].float() @ pair["A"].float())


def check_merge(state: dict[str, torch.Tensor], lora: Optional[LoRA], expected: dict[str, torch.Size]) -> None:
    """The checkpoint holds exactly the DiT's tensors and the LoRA fits them: refused before writing."""
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise CorruptCheckpointError(f"the DiT checkpoint holds {unknown[0]!r} ({len(unknown)} unknown tensors): not a SpatialEdit DiT")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CorruptCheckpointError(f"the DiT checkpoint lacks {len(missing)} tensors (first: {missing[0]})")
    if lora is not None:
        lora.check_against(expected)


def merged_tensors(state: dict[str, torch.Tensor], lora: Optional[LoRA]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each DiT tensor in its stored dtype, the LoRA delta merged into adapted Linear weights
    (`check_merge` first)."""
    for name, tensor in state.items():
        delta = lora.delta(name.removesuffix(".weight")) if lora is not None and name.endswith(".weight") else None
        if delta is not None:
            tensor = (tensor.float() + delta).to(tensor.dtype)
        yield name, tensor.contiguous()


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link when on the same file system (no second copy on disk), else copy. A symlink (a
    Hugging Face cache snapshot's files are links to its blobs) is followed to the file it names."""
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(source).resolve()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def import_official(
    dit: Path,
    vae: Path,
    text_encoder: Path,
    out: Path,
    lora: Optional[Path] = None,
    config: Optional[DiTConfig] = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> Path:
    """Write the lowmem model folder `out` from the official release's files (see the module doc).
    `config` overrides the configuration inferred from the shapes (the RoPE split is not in them)."""
    out = Path(out)
    if not Path(vae).is_file():
        raise ModelFolderError(f"VAE file {vae} does not exist; pass the official Wan2.1_VAE.pth")
    if not (Path(text_encoder) / "config.json").is_file():
        raise ModelFolderError(f"{text_encoder} holds no config.json; pass the Qwen3-VL-8B-Instruct folder")
    check_parts(Path(vae), Path(text_encoder))
    state = read_official_dit(Path(dit))
    adapter = LoRA(Path(lora)) if lora is not None else None
    config = config or infer_dit_config(state)
    expected = {k: v.shape for k, v in build_dit(config, device="meta").state_dict().items()}
    check_merge(state, adapter, expected)
    total_bytes = sum(t.numel() * t.element_size() for t in state.values())
    needed = total_bytes + sum(f.stat().st_size for f in _parts_to_link(Path(vae), Path(text_encoder))
                               if not same_file_system(f, out))
    check_free_space({out: needed}, f"the model folder {out}", "free some space, or choose an --out on another disk")

    with staged_folder(out, needed) as staging:
        transformer = staging / "transformer"
        transformer.mkdir()
        write_text_atomic(transformer / "config.json", config.to_json())
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in tqdm(merged_tensors(state, adapter), total=len(state), desc="import DiT",
                                 unit="tensor", disable=not progress):
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > shard_bytes:
                _write_shard(shards[-1], transformer, len(shards))
                shards[-1] = {n: None for n in shards[-1]}  # keep the names for the index, drop the tensors
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        _write_shard(shards[-1], transformer, len(shards))
        total = len(shards)
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            final = transformer / f"diffusion_pytorch_model-{i:05d}-of-{total:05d}.safetensors"
            os.replace(transformer / f".shard-{i}.safetensors", final)
            weight_map.update({n: final.name for n in shard})
        write_text_atomic(transformer / DIT_INDEX, json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map},
                                                              indent=2))
        link_or_copy(Path(vae), staging / "vae" / "Wan2.1_VAE.pth")
        for file in _parts_to_link(Path(vae), Path(text_encoder))[1:]:
            link_or_copy(file, staging / "text_encoder" / file.relative_to(text_encoder))
        open_model_folder(staging)  # the result must read back as a model folder
    return out


def _parts_to_link(vae: Path, text_encoder: Path) -> list[Path]:
    """The files the model folder takes as they are: the VAE, then every file of the Qwen3-VL folder."""
    return [vae] + [f for f in sorted(text_encoder.rglob("*")) if f.is_file()]


def same_file_system(source: Path, folder: Path) -> bool:
    """Whether `source` (a link followed) lives on the file system of `folder` (made or not), where a
    hard link takes no space."""
    return Path(source).resolve().stat().st_dev == existing_parent(folder).stat().st_dev


def check_parts(vae: Path, text_encoder: Path) -> None:
    """The VAE and Qwen3-VL files that the folder will link are complete and what they claim to be,
    so a broken part is refused now, not at the first edit."""
    from lowmem.models.vae import WanVAE
    from lowmem.models.weight_sources import check_complete, check_shards, meta_vlm, vlm_source

    WanVAE.from_file(vae, device="meta")
    source = vlm_source(text_encoder)
    check_shards(source.shards.values())
    check_complete(source, meta_vlm(text_encoder))


def _write_shard(tensors: dict[str, torch.Tensor], folder: Path, number: int) -> None:
    save_file(tensors, folder / f".shard-{number}.safetensors", metadata={"format": "pt"})
