"""Loading a model folder: the one way the runtime reads weights, planned or not.

`ModelLoader(folder, device, dtype, quantization)` is the entry the pipeline and the planned load
both call; through it each component is loaded once. The DiT is built on the meta device in its
final form (quantized Linears already swapped in) and filled by selection, so a plan can read what
it keeps resident now and let the streamer read each other block when it needs it; the
conditioner and the VAE are loaded whole.

Three kinds of folder: an original one (weights as stored), a `lowmem quantize` output (per-block
files + manifest.json: every file's size checked when the loader is made, its sha256 before it is
read: the small files at once, each weight file when it is loaded), or an original one quantized in
memory while loading, one tensor at a time (`quantization=`). Stored quantized tensors are
assigned in straight from the files (mmap), so no dense copy of a quantized weight ever exists.
Only the format itself comes from `quantize`: the manifest, QuantizedLinear's layout, which
Linears to swap, and quantizing a tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from lowmem.errors import CorruptCheckpointError
from lowmem.models.conditioner import QwenVLConditioner, _check_folder, load_processor
from lowmem.models.dit import SpatialEditDiT
from lowmem.models.dit_loading import DiTCheckpoint, Selection, check_filled, everything
from lowmem.models.layout import ModelFolder, open_model_folder, open_shard
from lowmem.models.vae import WanVAE, load_folder_vae, vae_config
from lowmem.models.weight_sources import ComponentSource, check_complete, dit_source, meta_dit, meta_vlm, vlm_source
from quantize.convert import quantize_tensors
from quantize.linear import QuantizedLinear
from quantize.manifest import MANIFEST, read_manifest, verify_file, verify_files, verify_sizes
from quantize.plan import default_skip, quantizable_linears, swap_linears, use_compute
from quantize.schemes import SCHEMES, check_scheme


def assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
    """Put `tensor` in place of the (meta) tensor `key`; float tensors of plain modules take `dtype`."""
    module_name, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    keep = isinstance(module, QuantizedLinear) and leaf in module.stored_names
    if not keep and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    tensor = tensor.to(device)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    elif leaf in module._buffers:
        expected = module._buffers[leaf]
        if keep and (expected.shape != tensor.shape or expected.dtype != tensor.dtype):
            raise CorruptCheckpointError(
                f"{key}: stored {tuple(tensor.shape)} {tensor.dtype}, expected {tuple(expected.shape)} {expected.dtype}"
            )
        module._buffers[leaf] = tensor
    else:
        raise CorruptCheckpointError(f"{key!r} is not a tensor of this model")


def _finish(model: nn.Module, device: torch.device, what: str) -> nn.Module:
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise CorruptCheckpointError(f"the {what} weights lack {len(missing)} tensors (first: {missing[0]}); re-run the conversion")
    for module in model.modules():  # non-persistent buffers (rotary tables) built on the CPU
        for name, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
    return model.eval().requires_grad_(False)


def _fill_from_files(model: nn.Module, root: Path, files: Iterable[str], manifest: dict, component: str, device, dtype,
                     select: Selection = everything) -> None:
    """Load the selected tensors of `files`, each described by the manifest's `component` part."""
    described = _described_by(manifest[component]["tensors"])
    for rel in files:
        path = verify_file(root, rel, manifest)
        with open_shard(path) as reader:
            for key in reader.keys():
                if not select(key):
                    continue
                if not described(key):  # else the model would be built wrong and fail on a name the user never wrote
                    raise CorruptCheckpointError(
                        f"{root / MANIFEST} has no entry for the {component} tensor {_entry_name(key, model)} that {rel} "
                        f"holds: the folder is damaged (manifest.json edited, or files from another conversion); "
                        f"re-run `lowmem quantize` on the original model into a new folder")
                try:
                    tensor = reader.get_tensor(key)
                except Exception as exc:
                    raise CorruptCheckpointError(f"{path} is truncated or corrupt at {key!r} ({exc}); re-run the conversion") from exc
                assign_tensor(model, key, tensor, device, dtype)


def _described_by(tensors: dict) -> Callable[[str], bool]:
    """Whether a stored key has its manifest entry: a tensor stored as itself is its own entry; a quantized
    Linear's codes and scales (`<module>.qweight`, ...) belong to its `<module>.weight` entry."""
    quantized = {name.rpartition(".")[0] for name, entry in tensors.items() if entry.get("scheme") in SCHEMES}
    return lambda key: key in tensors or key.rpartition(".")[0] in quantized


def _entry_name(key: str, model: nn.Module) -> str:
    """The manifest entry a stored key belongs to: the key itself, or `<module>.weight` for a quantized code."""
    module_name, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return key
    return key if leaf in module._parameters or leaf in module._buffers else f"{module_name}.weight"


def _quantized_modules(tensors: dict) -> dict[tuple[str, str, bool], list[str]]:
    """(scheme, backend, double_quant) -> module names; folders written before double quantization
    existed have no `double_quant` entries and single-level scales."""
    groups: dict[tuple[str, str, bool], list[str]] = {}
    for name, entry in tensors.items():
        if entry.get("scheme") in SCHEMES:
            key = (entry["scheme"], entry["backend"], bool(entry.get("double_quant", False)))
            groups.setdefault(key, []).append(name.rpartition(".")[0])
    return groups


def dit_parts(folder: ModelFolder, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
              quantization: Optional[str] = None) -> tuple[nn.Module, Callable[[Selection], None]]:
    """The DiT built on meta, quantized Linears already swapped in, and `fill(select)`, which loads the
    selected tensors (e.g. `in_block(3)`) from a `lowmem quantize` folder, from an original folder
    quantized on the fly when `quantization` is given, or from an original folder as stored."""
    device = torch.device(device)
    model, _ = meta_dit(folder, dtype=dtype)
    manifest = read_manifest(folder.root) if folder.is_quantized else {}
    part = manifest.get("dit", {})
    if part.get("quantized"):
        for (scheme, backend, double_quant), modules in _quantized_modules(part["tensors"]).items():
            swap_linears(model, modules, scheme, backend, double_quant=double_quant)

        def fill(select: Selection) -> None:
            files = sorted({entry["file"] for name, entry in part["tensors"].items() if select(name)})
            _fill_from_files(model, folder.root, files, manifest, "dit", device, dtype, select)
            check_filled(model, select, "quantized DiT")
    elif quantization is not None and not folder.is_quantized:
        quantizing = _quantizing_filler(model, dit_source(folder), "dit", quantization, check_scheme(quantization, None),
                                        (), device, dtype)

        def fill(select: Selection) -> None:
            quantizing(select)
            check_filled(model, select, "DiT")
    else:
        checkpoint = DiTCheckpoint(folder)

        def fill(select: Selection) -> None:
            checkpoint.fill(model, select, device, dtype)
    return model, fill


def load_quantized_dit(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16):
    """The SpatialEdit DiT of a `lowmem quantize` folder, quantized Linears as QuantizedLinear."""
    model, fill = dit_parts(open_model_folder(folder), device, dtype)
    fill(everything)
    return _finish(model, torch.device(device), "DiT")


def load_quantized_vlm(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Qwen3VLForConditionalGeneration of a `lowmem quantize` folder whose vlm component was quantized."""
    device = torch.device(device)
    root = Path(folder)
    manifest = read_manifest(root)
    part = manifest["vlm"]
    model = meta_vlm(root / "text_encoder", dtype=dtype)
    for (scheme, backend, double_quant), modules in _quantized_modules(part["tensors"]).items():
        swap_linears(model, modules, scheme, backend, double_quant=double_quant)
    _fill_from_files(model, root, part["files"], manifest, "vlm", device, dtype)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return _finish(model, device, "Qwen3-VL")


def _quantizing_filler(model: nn.Module, source: ComponentSource, component: str, scheme: str, backend: str,
                       skip: Iterable[str], device, dtype) -> Callable[[Selection], None]:
    """Swap the quantizable Linears of the meta-built `model` and return `fill(select)`, which reads the
    selected source tensors one at a time, quantizing those that belong to a swapped Linear."""
    check_complete(source, model)
    modules = set(quantizable_linears(model, component, list(default_skip(component)) + list(skip), scheme, backend))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    swap_linears(model, modules, scheme, backend)

    def fill(select: Selection) -> None:
        names = [n for n in source.names() if select(n)]
        for _, stored, _ in quantize_tensors(names, source, modules, scheme, backend, expected, measure=False):
            for key, tensor in stored.items():
                assign_tensor(model, key, tensor, device, dtype)

    return fill


def load_dit_quantizing(folder: ModelFolder, scheme: str, backend: Optional[str] = None, device="cpu",
                        dtype: torch.dtype = torch.bfloat16, skip: Iterable[str] = ()):
    """The DiT of an original folder, quantized in memory tensor by tensor while it loads."""
    backend = check_scheme(scheme, backend)
    device = torch.device(device)
    model, _ = meta_dit(folder, dtype=dtype)
    _quantizing_filler(model, dit_source(folder), "dit", scheme, backend, skip, device, dtype)(everything)
    return _finish(model, device, "DiT")


def load_vlm_quantizing(text_encoder: Path, scheme: str, backend: Optional[str] = None, device="cpu",
                        dtype: torch.dtype = torch.bfloat16, skip: Iterable[str] = ()) -> nn.Module:
    backend = check_scheme(scheme, backend)
    device = torch.device(device)
    model = meta_vlm(text_encoder, dtype=dtype)
    _quantizing_filler(model, vlm_source(text_encoder), "vlm", scheme, backend, skip, device, dtype)(everything)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return _finish(model, device, "Qwen3-VL")


def _conditioner(model: nn.Module, text_encoder: Path) -> QwenVLConditioner:
    _check_folder(text_encoder)
    return QwenVLConditioner(model, load_processor(text_encoder))


def check_requested_scheme(folder: ModelFolder, quantization: Optional[str]) -> None:
    """A quantized folder can only be used in the scheme it was converted to."""
    if quantization is not None and folder.is_quantized:
        scheme = read_manifest(folder.root)["scheme"]
        if scheme != quantization:
            raise CorruptCheckpointError(
                f"{folder.root} is already quantized as {scheme}; pass the original folder to use {quantization}"
            )


# Files hashed when they are loaded (the rest of a quantized folder is hashed when it is opened).
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def check_quantized_folder(folder: ModelFolder) -> None:
    """Before any weight is read: every file manifest.json lists is there with its size, and each
    small one (configs, tokenizer, processor) matches its sha256; weight files are hashed as they load."""
    manifest = read_manifest(folder.root)
    verify_sizes(folder.root, manifest)
    for rel in manifest["files"]:
        if not rel.endswith(WEIGHT_SUFFIXES):
            verify_file(folder.root, rel, manifest)


def load_conditioner(folder: ModelFolder, device: torch.device, dtype: torch.dtype,
                     quantization: Optional[str] = None) -> QwenVLConditioner:
    """The QwenVLConditioner of a quantized folder, or of an original one (quantized in memory when asked)."""
    if folder.is_quantized:
        verify_files(folder.root, read_manifest(folder.root), "text_encoder/")
    if folder.is_quantized and read_manifest(folder.root)["vlm"].get("quantized"):
        return _conditioner(load_quantized_vlm(folder.root, device, dtype), folder.text_encoder)
    if quantization is not None and not folder.is_quantized:
        return _conditioner(load_vlm_quantizing(folder.text_encoder, quantization, device=device, dtype=dtype),
                            folder.text_encoder)
    # transformers would fill missing or foreign weights with random values and only warn: refuse, as the DiT does.
    check_complete(vlm_source(folder.text_encoder), meta_vlm(folder.text_encoder))
    return QwenVLConditioner.from_folder(folder.text_encoder, dtype=dtype, device=device)


class ModelLoader:
    """One model folder's components on `device`, each loaded once, in the order its caller needs:
    a `lowmem quantize` folder's quantized weights, an original folder's weights as stored, or
    quantized in memory as they load when `quantization` ("int8" | "fp8" | "nf4") is given. The DiT's
    large Linears multiply in `compute` mode (bf16 | fp8 | int8, `quantize.compute`; a mode the
    caller resolved from "auto").

    The DiT is built on construction (meta device, quantized Linears swapped in) with no weight read:
    `fill(select)` reads the selected tensors, `resident_dit()` all of them. `conditioner()` and
    `vae()` load those components whole."""

    def __init__(self, folder: ModelFolder, device: torch.device | str, dtype: torch.dtype,
                 quantization: Optional[str] = None, compute: str = "bf16"):
        check_requested_scheme(folder, quantization)
        if folder.is_quantized:
            check_quantized_folder(folder)
        vae_config(folder)  # every config is checked before any weight is read (the DiT's when it is built)
        self.folder, self.device, self.dtype, self.quantization = folder, torch.device(device), dtype, quantization
        self.dit, self.fill = dit_parts(folder, self.device, dtype, quantization)
        use_compute(self.dit, compute)  # before any weight is read: a dense Linear becomes a W8A8Linear on meta

    def resident_dit(self) -> SpatialEditDiT:
        """The DiT with every weight read: a run without a plan keeps it all on the device."""
        self.fill(everything)
        return _finish(self.dit, self.device, "DiT")

    def conditioner(self) -> QwenVLConditioner:
        return load_conditioner(self.folder, self.device, self.dtype, self.quantization)

    def vae(self) -> WanVAE:
        if self.folder.is_quantized:
            verify_files(self.folder.root, read_manifest(self.folder.root), "vae/")
        return load_folder_vae(self.folder, self.device)
