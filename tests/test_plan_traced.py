"""Every phase of every plan covers what the code really allocates: weights placed on the device,
plus the live bytes traced on `meta` for that phase, plus the CUDA reserve; and by no more than 15%."""

from __future__ import annotations

import json

import pytest
import torch

from lowmem.models.dit_config import FULL_DIT_CONFIG
from lowmem.models.vae import FULL_VAE_CONFIG
from lowmem.offload import BudgetError
from lowmem.planning import available_presets, load_preset, plan_for
from lowmem.planning import phase_peaks as peaks
from lowmem.planning.live_bytes import trace_peak
from lowmem.planning.reserve import fixed_reserve

WEIGHT_ITEMS = ("vlm weights", "dit other weights", "dit resident blocks", "dit slots", "spotedit caches", "vae weights")
VAE = peaks.vae_config_key(FULL_VAE_CONFIG)


def traced_live_bytes(plan, phase: str) -> int:
    """A fresh trace of what runs in `phase`, from the plan's inputs alone."""
    dtype = peaks.activation_dtype(plan.device)
    precision = plan.dit.precision if plan.dit.precision in ("int8", "nf4") else "bf16"
    res, text, batch = plan.resolution, plan.text_tokens, plan.batch
    gemm = {"compute": plan.compute} if plan.compute != "bf16" else {}
    if phase == "denoise":
        runs = [peaks.dit_forward(FULL_DIT_CONFIG, precision, dtype, res, text, batch, **gemm)]
        if not plan.spotedit.enabled:
            return max(runs)
        shape = (FULL_DIT_CONFIG, precision, dtype, res, text, batch)
        runs += [peaks.spot_step(*shape, 0.3, **gemm), peaks.spot_step(*shape, 0.0, **gemm), peaks.selector(VAE, res)]
        return max(runs) + peaks.selector_state(VAE, res, dtype)  # the selector's copy of the stages, held throughout
    if phase == "encode image":
        return peaks.vae_encode(VAE, res)
    if phase == "decode":
        return peaks.vae_decode_tiled(VAE, res, plan.vae.tile) if plan.vae.tiled else peaks.vae_decode(VAE, res)
    config = peaks.conditioner_config_json(peaks.qwen3_vl_8b_config())
    return peaks.conditioner(config, res, text + 34, text)


def cases():
    for name in available_presets():
        yield pytest.param({"preset": name}, id=name)
    for budget in ("16GB", "24GB", "48GB", "80GB"):
        for res in (1024, 768, 512):
            for spot in (False, True):
                for q in ("bf16", "int8", "nf4"):
                    yield pytest.param({"budget": budget, "resolution": res, "spotedit": spot, "quantization": q},
                                       id=f"{budget}-{res}-{'spot' if spot else 'full'}-{q}")
    # W8A8 GEMMs: their activation codes, int32 accumulators and re-quantized weights are traced too.
    for name in ("rtx4090-24gb", "rtx3090-24gb"):
        yield pytest.param({"preset": name, "compute": "int8"}, id=f"{name}-int8")
    yield pytest.param({"preset": "rtx4090-24gb", "compute": "fp8"}, id="rtx4090-24gb-fp8")
    yield pytest.param({"budget": "24GB", "resolution": 1024, "spotedit": True, "quantization": "bf16", "compute": "int8"},
                       id="24GB-1024-spot-bf16-int8")


@pytest.mark.parametrize("kwargs", list(cases()))
def test_each_phase_is_planned_at_the_traced_peak_within_15_percent(kwargs):
    try:
        plan = plan_for(FULL_DIT_CONFIG, **kwargs)
    except BudgetError:
        pytest.skip("does not fit: the refusal is tested elsewhere")
    assert plan.text_tokens > 1000 if plan.resolution == 1024 else True
    for phase, items in plan.estimate.phases.items():
        weights = sum(v for k, v in items.items() if k in WEIGHT_ITEMS)
        traced = weights + traced_live_bytes(plan, phase) + fixed_reserve(plan.device)
        planned = plan.estimate.phase_total(phase)
        assert traced <= planned <= 1.15 * traced, (phase, planned, traced)


def test_guidance_of_one_plans_a_batch_of_one():
    cfg = plan_for(FULL_DIT_CONFIG, "80GB", 1024, "nf4")
    single = plan_for(FULL_DIT_CONFIG, "80GB", 1024, "nf4", guidance=1.0)
    assert (cfg.batch, single.batch) == (2, 1)
    act = single.estimate.phases["denoise"]["dit activations"]
    assert act == peaks.dit_forward(FULL_DIT_CONFIG, "nf4", torch.bfloat16, 1024, single.text_tokens, 1)
    assert act < 0.6 * cfg.estimate.phases["denoise"]["dit activations"]


def test_decode_is_untiled_when_it_fits_and_tiled_from_the_trace_when_not():
    roomy = plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb")  # nf4: the 7.3 GB untiled decode fits
    assert not roomy.vae.tiled and roomy.estimate.phases["decode"]["vae decode"] == peaks.vae_decode(VAE, 1024)
    tight = plan_for(FULL_DIT_CONFIG, "24GB", 1024, "bf16")
    assert tight.vae.tiled
    assert tight.estimate.phases["decode"]["vae decode"] == peaks.vae_decode_tiled(VAE, 1024, tight.vae.tile)


def test_tiled_decode_bound_covers_a_full_trace_of_diffusers_tiled_decode():
    vae = peaks.traced_vae(VAE)
    latents = torch.empty(1, 16, 1, 64, 64, device="meta")
    real = trace_peak(lambda: vae.decode(latents, tiled=True, tile=256))
    assert real <= peaks.vae_decode_tiled(VAE, 512, 256) <= 1.05 * real


def test_conditioner_extrapolated_from_two_layers_equals_the_full_depth_trace():
    config = peaks.qwen3_vl_8b_config()
    config.vision_config.depth = 4  # the vision tower at full depth is traced in the planner's shape anyway
    config.vision_config.deepstack_visual_indexes = [0, 1, 2]
    config.text_config.num_hidden_layers = 6
    key = peaks.conditioner_config_json(config)
    full = peaks._conditioner(key, 6, 4, 3).model.language_model
    hidden = config.text_config.hidden_size

    def run():
        held = [torch.empty(n, hidden, device="meta", dtype=torch.bfloat16) for n in (300, 256, 256, 256, 256)]
        embeds = torch.empty(1, 334, hidden, device="meta", dtype=torch.bfloat16)
        positions = torch.empty(3, 1, 334, dtype=torch.long, device="meta")
        full(inputs_embeds=embeds, position_ids=positions, output_hidden_states=True, use_cache=False)
        del held

    assert peaks.conditioner(key, 512, 334, 300) == max(trace_peak(run), peaks.conditioner(key, 512, 1, 1))


def test_dit_traced_at_depth_two_is_the_steady_state_of_any_depth():
    from dataclasses import replace

    config = replace(FULL_DIT_CONFIG, hidden_size=512, heads_num=4, rope_dim_list=(16, 56, 56))
    two = peaks.dit_forward(config, "bf16", torch.bfloat16, 512, 300, 2)
    model = peaks.traced_dit(config, "bf16", torch.bfloat16, depth=5)
    latents = torch.empty(2, 2, 16, 1, 64, 64, device="meta", dtype=torch.bfloat16)
    text = torch.empty(2, 300, config.text_states_dim, device="meta", dtype=torch.bfloat16)
    timestep = torch.empty(2, device="meta")
    assert two == peaks._trace_dit(lambda: model(latents, timestep, text))


def test_w8a8_traces_hold_the_int32_accumulator_and_plans_record_their_mode():
    from dataclasses import replace

    config = replace(FULL_DIT_CONFIG, hidden_size=256, heads_num=2, mm_double_blocks_depth=3)
    shape = (config, "nf4", torch.bfloat16, 256, 40, 2)
    bf16, int8 = peaks.dit_block(*shape), peaks.dit_block(*shape, compute="int8")
    image_rows = 2 * 2 * (256 // peaks.DIT_PATCH) ** 2  # CFG batch x (condition, target)
    assert int8 - bf16 >= image_rows * 4 * 256 * 4  # the MLP up-projection's int32 product, beside its inputs
    assert peaks.dit_forward(*shape, compute="fp8") > peaks.dit_forward(*shape)
    # An int8 folder run in int8 reads its codes as stored: no re-quantized copy of the weight.
    assert peaks.dit_block(config, "int8", torch.bfloat16, 256, 40, 2, compute="int8") < int8
    assert peaks.traced_dit(config, "nf4", torch.bfloat16, 2, "int8") is peaks.traced_dit(config, "nf4", torch.bfloat16,
                                                                                            compute="int8")
    plan = plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb", compute="int8")
    base = plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb")
    assert (plan.compute, base.compute) == ("int8", "bf16")
    # At full size the GEMMs work GEMM_ELEMENTS at a time (codes, int32 product, float32 rescale: under
    # 16 bytes each), so W8A8 adds at most that much scratch to the bf16 forward's peak.
    from quantize.compute import GEMM_ELEMENTS

    w8a8, dense = plan.estimate.traced["denoise"]["dit forward"], base.estimate.traced["denoise"]["dit forward"]
    assert dense <= w8a8 <= dense + 16 * GEMM_ELEMENTS
    with pytest.raises(BudgetError, match="choose_compute"):
        plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb", compute="auto")


def test_exact_weight_bytes_follow_quantize_layout():
    from quantize.schemes import stored_bytes

    plan = plan_for(FULL_DIT_CONFIG, "80GB", 1024, "nf4")
    block = plan.dit.block_bytes
    shapes = [(3 * 4096, 4096), (4096, 4096), (16384, 4096), (4096, 16384)]
    linears = 2 * sum(stored_bytes(s, "nf4") for s in shapes)
    biases = 2 * 2 * (3 * 4096 + 4096 + 16384 + 4096)
    others = 2 * (2 * 6 * 4096 + 4 * 128)  # modulation tables, q/k norms
    assert block == linears + biases + others


def test_plan_json_keeps_the_traced_peaks():
    plan = plan_for(FULL_DIT_CONFIG, preset="rtx4090-24gb")
    data = json.loads(plan.to_json())
    assert data["estimate"]["traced"]["decode"] and data["batch"] == 2
    assert set(plan.estimate.traced["denoise"]) >= {"dit forward", "spotedit selector"}
