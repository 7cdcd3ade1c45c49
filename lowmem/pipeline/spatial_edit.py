"""SpatialEditPipeline: encode (Qwen3-VL + VAE) -> denoise (flow matching, batched CFG) -> decode.

The sampling follows the official pipeline: the condition image is VAE-encoded once and re-inserted
as the first item of the latents at every step; the conditional and unconditional prompts run as
one batch of two through the DiT, so each weight is touched once per step; the guided velocity is
rescaled to the norm of the conditional one.
"""

from __future__ import annotations

import gc
import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from PIL import Image
from tqdm.auto import tqdm

from lowmem.common import validation
from lowmem.common.forward_progress import forward_progress
from lowmem.common.images import fit_bucket, read_input, to_model_tensor, to_pil
from lowmem.errors import ArgumentError, DamagedOutputError, LowmemError
from lowmem.instructions import EditInstruction, as_instruction
from lowmem.models.conditioner import QwenVLConditioner
from lowmem.models.dit import SpatialEditDiT
from lowmem.models.guidance import BatchedGuidance, guidance_batch
from lowmem.models.joint_attention import TextPadding
from lowmem.models.layout import open_model_folder
from lowmem.models.scheduler import make_scheduler
from lowmem.models.vae import WanVAE
from lowmem.pipeline.report import RunReport
from lowmem.spotedit import DiTSpotModel, SpotConfig, SpotKVCache, spot_denoise


DAMAGED_WEIGHTS = ("its weights may be damaged: check the model folder (run `lowmem quantize` again for a quantized "
                   "one, download or import an original one again)")


def decoded_image(decoded: torch.Tensor) -> Image.Image:
    """The VAE's output as the edited image, or one DamagedOutputError when it is no image: NaN or
    infinite values, or every pixel alike, come from damaged weights, never from an edit. A run on the
    meta device (tracing, planning) has no values to check."""
    if decoded.is_meta:
        return to_pil(decoded)
    if not bool(torch.isfinite(decoded).all()):
        raise DamagedOutputError(f"the model produced a non-finite image (NaN or infinite values after the VAE decode); "
                                 f"{DAMAGED_WEIGHTS}")
    image = to_pil(decoded)
    if all(low == high for low, high in image.getextrema()):
        raise DamagedOutputError(f"the model produced a constant image (every pixel is RGB {image.getpixel((0, 0))}); "
                                 f"{DAMAGED_WEIGHTS}")
    return image


@dataclass
class EditResult:
    image: Image.Image
    report: RunReport
    input_image: Image.Image  # what the model saw: resized, with the red box when there is one
    spot_mask: Optional[Image.Image] = None  # SpotEdit's final edited region (white), None without --spot


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


LONG_EDIT_SECONDS = 60  # an edit predicted to take longer is announced with its prediction


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 is the released precision; CPUs without bf16 matmul units run float32 much faster.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class SpatialEditPipeline:
    def __init__(
        self,
        dit: SpatialEditDiT,
        vae: WanVAE,
        conditioner: QwenVLConditioner,
        device: torch.device,
        dtype: torch.dtype,
        compute: str = "bf16",
    ):
        self.dit = dit
        self.vae = vae
        self.conditioner = conditioner
        self.device = device
        self.dtype = dtype
        self.compute = compute  # the DiT's GEMM mode, as loaded (quantize.plan.use_compute)
        self.choices: list[str] = []  # what from_folder decided for "auto" settings, and why
        self.spot = False  # whether it was loaded (planned) for SpotEdit: what edit callers ask for by default
        self.offload = None  # lowmem.offload.OffloadRuntime when loaded with a memory budget
        self.cfg_strategy = BatchedGuidance()  # where the CFG rows run: here, or one per rank (lowmem.parallel)
        self.host_spot_cache: Optional[SpotKVCache] = None  # see `_host_spot_cache`
        self.closed = False

    def close(self) -> None:
        """Give back what the pipeline holds: a budgeted one's device slots, pinned host memory and the
        streamed blocks' disk files, and every pipeline's models, so their device memory is free once
        nothing else refers to them (a long-lived process can load another model). The pipeline
        cannot edit afterwards."""
        if self.host_spot_cache is not None:
            self.host_spot_cache.release()
            self.host_spot_cache = None
        if self.offload is not None:
            self.offload.close()
            self.offload = None
        self.dit = self.vae = self.conditioner = None
        self.closed = True
        if self.device.type == "cuda":
            gc.collect()  # streaming hooks tie modules and streamers in cycles: free them now, not at some later pass
            torch.cuda.empty_cache()

    def __enter__(self) -> "SpatialEditPipeline":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @classmethod
    def from_folder(
        cls,
        model: str | Path,
        device: Optional[str | torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        quantization: Optional[str] = None,
        memory_budget: Optional[str | int] = None,
        preset: Optional[str] = None,
        resolution: int = 1024,
        spot: Union[bool, str] = False,  # or "on" / "off" / "auto"
        max_resident_blocks: Optional[int] = None,
        guidance: float = 5.0,
        compute: str = "auto",
    ) -> "SpatialEditPipeline":
        """Load every component of a SpatialEdit model folder, resident on `device`.

        A `lowmem quantize` folder (it has manifest.json) loads its quantized weights; with an
        original folder, `quantization="int8"|"fp8"|"nf4"` quantizes the DiT and Qwen3-VL decoder while
        loading. With `memory_budget` (e.g. "24GB", or "auto": what is free on the device now) or a hardware
        `preset`, the planner decides what stays on the device for edits at `resolution` (with SpotEdit
        caches when `spot`), keeping at most `max_resident_blocks` DiT blocks resident when given; the
        rest streams; planned for edits at `guidance` (at 1 or less the DiT runs one row per forward, not the
        CFG batch of two). Without either, everything is loaded resident. `spot` is True / "on", False /
        "off", or "auto": on where the time model says SpotEdit pays; the answer is `pipe.spot`.

        `compute` is the GEMM of the DiT's large Linears: "bf16", "fp8" or "int8" (W8A8, `quantize.compute`),
        or "auto": the fastest the device runs (int8 on CUDA sm_80+; on the CPU int8 for a DiT at least
        256 wide, the dense GEMM for narrower ones, where W8A8's per-call quantization costs more).
        """
        # Every argument is checked before any file is read, with the CLI's words (common/validation).
        model = validation.path(model, "model")
        resolution = validation.resolution(resolution)
        guidance = validation.guidance(guidance)
        device = validation.device(device, allow_meta=True) if device is not None else default_device()
        dtype = validation.dtype(dtype) if dtype is not None else default_dtype(device)
        if preset is not None and not isinstance(preset, str):
            raise ArgumentError(f"preset must be a preset name such as 'rtx4090-24gb', got {type(preset).__name__} {preset!r}")
        if max_resident_blocks is not None:
            max_resident_blocks = validation.integer(max_resident_blocks, "max_resident_blocks", 0)
        if memory_budget is not None and memory_budget != "auto":
            from lowmem.offload import parse_bytes

            parse_bytes(memory_budget)  # 0, "" or False are refused, not taken as "no budget"
        from lowmem.hub.models import resolve_model

        folder = open_model_folder(resolve_model(model))  # a folder, or a Hub id `lowmem download` fetched
        from lowmem.models.dit_loading import read_dit_config
        from lowmem.planning.compute_choice import choose_compute, choose_spot
        from lowmem.planning.presets import load_preset

        hardware = load_preset(preset) if preset is not None else None
        config = read_dit_config(folder)
        compute, why = choose_compute(compute, device, hardware, config.hidden_size)
        choices = [f"compute {compute}: {why}"]
        asked_auto = spot == "auto"
        spot, spot_why = choose_spot(spot, resolution, preset=hardware, compute=compute, device=device, config=config)
        if asked_auto:  # a decision worth saying; an explicit on/off is only repeated back
            choices.append(spot_why)
        if memory_budget == "auto":
            from lowmem.common.machine import available_memory

            memory_budget = available_memory(device)
        if memory_budget is not None or preset is not None:
            from lowmem.pipeline.planned_load import load_under_plan

            dit, vae, conditioner, runtime = load_under_plan(folder, device, dtype, quantization, memory_budget, preset,
                                                             resolution, spot, max_resident_blocks, guidance, compute)
            pipe = cls(dit, vae, conditioner, device, dtype, compute)
            pipe.offload = runtime
        else:
            from lowmem.loading import ModelLoader

            loader = ModelLoader(folder, device, dtype, quantization, compute)
            dit = loader.resident_dit()  # bad DiT weights fail before the conditioner is read
            conditioner = loader.conditioner()
            pipe = cls(dit, loader.vae(), conditioner, device, dtype, compute)
        pipe.choices, pipe.spot = choices, bool(spot)
        return pipe

    @torch.inference_mode()
    def edit(
        self,
        image: Union[Image.Image, str, Path],
        instruction: Union[str, EditInstruction],
        steps: int = 30,
        guidance: float = 5.0,
        seed: int = 0,
        resolution: int = 1024,
        progress: bool = True,
        spot: Optional[SpotConfig] = None,
        negative_prompt: str = "",
        on_progress: Optional[Callable[[str, int], None]] = None,
    ) -> EditResult:
        """Edit `image` as `instruction` says; the same seed gives the same image. `negative_prompt` is the
        unconditional row's text under classifier-free guidance ("" as the model was trained).

        `on_progress(phase, steps_done)` is called as each phase starts and after each denoising step (a
        long-lived server shows it, and stops the edit by raising from it: the device is given back as
        after any failure)."""
        if self.closed:
            raise LowmemError("this pipeline was closed; load the model again to edit")
        steps, guidance, seed, resolution = validation.check_edit_arguments(steps, guidance, seed, resolution)
        validation.text(negative_prompt, "negative_prompt")
        validation.flag(progress, "progress")
        if spot is not None and not isinstance(spot, SpotConfig):
            raise ArgumentError(f"spot must be a lowmem.spotedit.SpotConfig or None, got {type(spot).__name__} {spot!r}")
        instruction = as_instruction(instruction)
        source, input_notes = read_input(image)
        if self.offload is not None and resolution > self.offload.plan.resolution:
            from lowmem.offload import BudgetError

            raise BudgetError(f"this pipeline was planned for {self.offload.plan.resolution}px edits; load it with "
                              f"resolution={resolution} (or --resolution {resolution}) to edit at {resolution}px")
        if self.offload is not None and self.cfg_strategy.rows(guidance) > self.offload.plan.batch:
            from lowmem.offload import BudgetError

            raise BudgetError(f"this pipeline was planned for guidance <= 1 (one DiT row per step); load it with "
                              f"guidance={guidance:g} (or --guidance {guidance:g}) to edit with classifier-free guidance")
        fit = fit_bucket(*source.size, base_size=resolution)
        source = instruction.prepare_image(fit.apply(source), fit)  # a box is in the input's pixels: mapped as the image
        report = RunReport(device=str(self.device), dtype=str(self.dtype).removeprefix("torch."), compute=self.compute,
                           width=source.width, height=source.height, steps=steps, guidance=guidance, seed=seed)
        report.extra["input"] = fit.describe()
        crop_warning = fit.crop_warning()
        for note in input_notes + ([crop_warning] if crop_warning else []):
            report.warn_about_input(note)
        generator = torch.Generator("cpu").manual_seed(seed)

        offload = self.offload
        notify = on_progress or (lambda phase, steps_done: None)
        with offload.editing() if offload else nullcontext():  # a failed edit leaves the device as it found it
            rows = guidance_batch(guidance)
            with report.phase("encode prompt", announce=progress), (offload.encoding() if offload else nullcontext()):
                notify("encode prompt", 0)
                stages = self.conditioner.stages()
                with forward_progress(stages, "encode prompt", len(stages) * rows, progress):
                    states, mask = self.conditioner.encode([source], instruction.text, negative=negative_prompt,
                                                           unconditional=rows == 2)
                # The padding of [uncond ; cond] is read here, once per edit, not in every DiT forward.
                states, mask = self.cfg_strategy.select(states.to(self.device), TextPadding.from_mask(mask))
            if progress:
                self._announce_long_edit(source.size, states.shape[1], rows, steps)
            with report.phase("encode image", announce=progress):
                notify("encode image", 0)
                stages = self.vae.stages("encoder")
                with forward_progress(stages, "encode image", len(stages), progress):
                    condition = self.vae.encode(to_model_tensor(source).to(self.device), generator=generator)
            spotting = spot is not None and spot.enabled
            with report.phase("denoise", announce=progress), (offload.denoising(spotting) if offload else nullcontext()):
                notify("denoise", 0)
                on_step = partial(notify, "denoise")
                if spotting:
                    if offload and spot.cache_device is None:
                        spot = replace(spot, cache_device=offload.spot_cache_device())
                    latents, outcome = spot_denoise(self.dit, self.vae, condition, states, mask, steps, guidance,
                                                    generator, spot, self.device, self.dtype, progress, self.cfg_strategy,
                                                    cache=self._host_spot_cache(spot.cache_device), on_step=on_step)
                    report.extra.update(outcome.report_items())
                else:
                    latents, outcome = self.denoise(condition, states, mask, steps, guidance, generator, progress,
                                                    on_step), None
            with report.phase("decode", announce=progress), (offload.decoding() if offload else nullcontext()):
                notify("decode", steps)
                decode_kwargs = offload.decode_kwargs() if offload else {}
                stages = self.vae.stages("decoder")  # once, or once per tile: a count without a total then
                with forward_progress(stages, "decode", None if decode_kwargs.get("tiled") else len(stages), progress):
                    decoded = self.vae.decode(latents, **decode_kwargs)
                edited = decoded_image(decoded)
        if offload:
            report.extra.update(offload.report_items())
        spot_mask = outcome.mask_image(source.size) if outcome is not None else None
        return EditResult(image=edited, report=report.finish(), input_image=source, spot_mask=spot_mask)

    def _announce_long_edit(self, size: tuple[int, int], text_tokens: int, rows: int, steps: int) -> None:
        """Say before the long phases when an edit will take over a minute (the 16B model at 4096 px on
        a CPU takes hours): traced FLOPs over a GEMM rate measured here (`planning.edit_time`)."""
        from lowmem.planning.edit_time import edit_flops, measured_gemm_rate
        from lowmem.planning.phase_peaks import vae_config_key

        flops = edit_flops(self.dit.config, vae_config_key(self.vae.module.config), *size, text_tokens, rows, steps)
        rate = measured_gemm_rate(self.device, self.dtype)
        if flops / rate > LONG_EDIT_SECONDS:
            tqdm.write(f"this edit is predicted to take at least {_duration(flops / rate)} on {self.device} "
                       f"({flops / 1e12:.1f} TFLOP for {steps} steps and the VAE, at the {rate / 1e12:.2f} TFLOP/s "
                       f"a large matmul runs at here); every phase shows its progress", file=sys.stderr)

    def _host_spot_cache(self, cache_device) -> Optional[SpotKVCache]:
        """SpotEdit's caches when they live on the host, kept for the pipeline's life: their pinned arena
        is made once, not at every edit of a batch (pinning tens of GB takes seconds); None when they
        live on the compute device (made and given back per edit)."""
        if cache_device is None or torch.device(cache_device).type == self.device.type:
            return None
        if self.host_spot_cache is None or self.host_spot_cache.device != torch.device(cache_device):
            if self.host_spot_cache is not None:
                self.host_spot_cache.release()
            self.host_spot_cache = DiTSpotModel(self.dit).new_cache(cache_device)
        return self.host_spot_cache

    def denoise(
        self,
        condition: torch.Tensor,
        states: torch.Tensor,
        mask: TextPadding,
        steps: int,
        guidance: float,
        generator: torch.Generator,
        progress: bool = True,
        on_step: Optional[Callable[[int], None]] = None,
    ) -> torch.Tensor:
        """Flow-matching sampling from noise; `condition` (1, C, 1, h, w) normalised VAE latents.
        `on_step(steps_done)` after each step."""
        scheduler = make_scheduler(steps)
        x = torch.randn(condition.shape, generator=generator, dtype=torch.float32).to(self.device)
        condition = condition.float()
        batch = self.cfg_strategy.rows(guidance)  # [uncond ; cond], or one of them (guidance <= 1, CFG parallel)
        timesteps = scheduler.timesteps.to(self.device, torch.float32)  # once: a copy per step would make the host wait
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoise", disable=not progress, leave=False)):
            items = torch.stack((condition, x), dim=1).expand(batch, -1, -1, -1, -1, -1)
            timestep = timesteps[i].expand(batch)
            v = self.dit(items.to(self.dtype), timestep, states, mask).float()
            v = self.cfg_strategy.velocity(v, guidance)
            x = scheduler.step(v, t, x).prev_sample
            if on_step is not None:
                on_step(i + 1)
        return x
