"""W8A8 compute (issue 25): the int8 / fp8 GEMMs against a dequantized float32 reference, on full-width
block shapes and on the trained tiny model; stored codes are used as they are; the modes reach the DiT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantize.compute as compute
import quantize.linear
from lowmem.errors import LowmemError
from lowmem.models.dit_config import FULL_DIT_CONFIG
from quantize import QuantizedLinear
from quantize.compute import quantize_rows, reference_linear, supported_modes, w8a8_linear, w8a8_matmul
from quantize.linear import W8A8Linear
from quantize.plan import use_compute
from quantize.schemes import quantize_linear_weight, row_step

MODES = ("int8", "fp8")
STORED = {"int8": ("int8", "bnb"), "fp8": ("fp8", "quanto")}  # each mode's own stored scheme
# Relative error of the W8A8 product against the dense float32 one, on Gaussian operands: int8's 255
# levels per row vs e4m3's 3 mantissa bits.
DENSE_BOUND = {"int8": 0.02, "fp8": 0.06}


@pytest.fixture(scope="module")
def trained_dit():
    """A maker of fresh copies of the shipped trained tiny DiT, loaded in float32 through the real loader."""
    from lowmem.loading import ModelLoader
    from lowmem.models.layout import open_model_folder
    from lowmem.tiny.trained_model import trained_tiny_model

    folder = open_model_folder(trained_tiny_model())
    return lambda: ModelLoader(folder, "cpu", torch.float32).resident_dit()


@pytest.fixture(scope="module")
def dit_inputs(trained_dit):
    config = trained_dit().config
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 2, config.in_channels, 1, 8, 8, generator=gen)
    text = torch.randn(1, 6, config.text_states_dim, generator=gen)
    return latents, torch.tensor([600.0]), text


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def full_width_shapes() -> list[tuple[int, int]]:
    """(out, in) of a full-size block's large Linears: qkv, the attention projection, the MLP's two."""
    h, mlp = FULL_DIT_CONFIG.hidden_size, int(FULL_DIT_CONFIG.hidden_size * FULL_DIT_CONFIG.mlp_width_ratio)
    return [(3 * h, h), (h, h), (mlp, h), (h, mlp)]


def test_the_cpu_runs_both_w8a8_kernels():
    assert supported_modes("cpu") == ("bf16", "fp8", "int8") and supported_modes("meta") == compute.COMPUTE_MODES
    with pytest.raises(LowmemError, match="unknown compute mode 'fp4'"):
        compute.check_mode("fp4")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", full_width_shapes(), ids=lambda s: f"{s[0]}x{s[1]}")
def test_kernels_equal_the_dequantized_reference_at_full_width(mode, shape):
    out_f, in_f = shape
    gen = torch.Generator().manual_seed(out_f + in_f)
    x = torch.randn(48, in_f, generator=gen)
    w = torch.randn(out_f, in_f, generator=gen) * 0.02
    stored = quantize_linear_weight(w, *STORED[mode])
    codes, step = stored["qweight"], row_step(stored, *STORED[mode])
    got = w8a8_matmul(x, codes, step, mode)
    reference = reference_linear(x, codes, step, mode)
    assert relative(got, reference) < 1e-5  # the same quantized product; only the summation order differs
    assert relative(got, x @ w.t()) < DENSE_BOUND[mode]


@pytest.mark.parametrize("mode", MODES)
def test_gemm_in_row_chunks_equals_one_call(mode, monkeypatch):
    """Rows go through the GEMM a chunk at a time (bounded scratch); an uneven last chunk included."""
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(100, 64, generator=gen), torch.randn(48, 64, generator=gen)
    stored = quantize_linear_weight(w, *STORED[mode])
    codes, step = stored["qweight"], row_step(stored, *STORED[mode])
    whole = w8a8_matmul(x, codes, step, mode)
    monkeypatch.setattr(compute, "GEMM_ELEMENTS", 64 * 32)  # 32 rows per chunk: 4 chunks, the last of 4 rows
    assert torch.equal(w8a8_matmul(x, codes, step, mode), whole)


@pytest.mark.parametrize("mode", MODES)
def test_activation_rows_use_their_absmax_and_zero_rows_stay_zero(mode):
    x = torch.tensor([[0.5, -2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    codes, step = quantize_rows(x, mode)
    top = compute.CODE_MAX[mode]
    assert step[0, 0].item() == pytest.approx(2.0 / top) and codes[0, 1].float().item() == -top
    assert torch.equal(codes[1].float(), torch.zeros(4)) and step[1, 0].item() > 0
    assert torch.equal(x, torch.tensor([[0.5, -2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))  # the input is not touched


@pytest.mark.parametrize("mode", MODES)
def test_stored_codes_of_the_modes_own_scheme_are_used_without_dequantizing(mode, monkeypatch):
    linear = torch.nn.Linear(256, 96)
    q = QuantizedLinear.from_linear(linear, *STORED[mode])
    q.compute = mode
    x = torch.randn(2, 5, 256)
    expected = (reference_linear(x.reshape(-1, 256), q.qweight, row_step(q.quantized_tensors(), *STORED[mode]), mode)
                + linear.bias).reshape(2, 5, 96)

    def no_dense_copy(*args, **kwargs):
        raise AssertionError("the stored codes must be multiplied directly, not dequantized first")

    monkeypatch.setattr(quantize.linear, "dequantize", no_dense_copy)
    assert relative(q(x), expected) < 1e-5


@pytest.mark.parametrize("scheme,backend", [("nf4", "bnb"), ("int8", "quanto"), ("fp8", "quanto")])
@pytest.mark.parametrize("mode", MODES)
def test_other_schemes_are_requantized_from_their_dequantized_weight(scheme, backend, mode):
    if scheme == mode:
        pytest.skip("the mode's own scheme is read directly (test above)")
    q = QuantizedLinear.from_linear(torch.nn.Linear(128, 64), scheme, backend)
    q.compute = mode
    x = torch.randn(7, 128)
    codes, step = quantize_rows(q.dequantized_weight(torch.float32), mode)
    assert relative(q(x), reference_linear(x, codes, step.reshape(-1), mode) + q.bias) < 1e-5


def test_use_compute_swaps_dense_linears_keeping_parameters_and_state_dict(trained_dit):
    model = trained_dit()
    keys = list(model.state_dict())
    weights = {n: p for n, p in model.named_parameters()}
    count = use_compute(model, "int8")
    swapped = [m for m in model.modules() if isinstance(m, W8A8Linear)]
    assert count == len(swapped) > 0 and list(model.state_dict()) == keys
    assert all(p is weights[n] for n, p in model.named_parameters())  # the same tensors: a streamer still finds them
    assert type(model.img_in) is not W8A8Linear and type(model.proj_out) is not W8A8Linear  # skip list kept in bf16
    assert use_compute(model, "bf16") == count and all(m.compute == "bf16" for m in swapped)


@pytest.mark.parametrize("mode", MODES)
def test_trained_tiny_dit_matches_its_dequantized_reference(trained_dit, dit_inputs, mode):
    """Every W8A8 Linear of a whole tiny-DiT forward, on the input it really saw, equals its product
    from dequantized float32 operands; the forward stays close to the bf16-compute one. (Whole
    outputs are not compared with a reference forward: a last-bit difference in one layer moves an
    activation across a rounding boundary of the next one's codes, which compounds to ~0.3%.)"""
    dense = trained_dit()
    model = trained_dit()
    use_compute(model, mode)
    checked = []

    def check(module, inputs, output):
        x = inputs[0].reshape(-1, module.in_features)
        codes, step = quantize_rows(module.weight, mode)
        reference = reference_linear(x, codes, step.reshape(-1), mode) + module.bias
        checked.append(relative(output.reshape(reference.shape), reference))

    for module in model.modules():
        if isinstance(module, W8A8Linear):
            module.register_forward_hook(check)
    with torch.no_grad():
        got, expected = model(*dit_inputs), dense(*dit_inputs)
    assert len(checked) == sum(isinstance(m, W8A8Linear) for m in model.modules()) > 0
    assert max(checked) < 1e-5
    assert relative(got, expected) < DENSE_BOUND[mode]


def test_w8a8_linear_adds_the_bias_in_the_activation_dtype():
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    out = W8A8Linear(linear, "int8")(x)
    assert out.dtype == torch.bfloat16
    assert relative(out, F.linear(x.float(), linear.weight.float(), linear.bias.float())) < DENSE_BOUND["int8"]
    codes, step = quantize_rows(linear.weight, "int8")
    assert relative(out, w8a8_linear(x, codes, step, linear.bias, "int8")) == 0.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [5, 48, 333])  # under cuBLAS's 17-row minimum, aligned, and not
@pytest.mark.parametrize("mode", MODES)
def test_cuda_kernels_equal_the_reference(mode, rows):
    device = torch.device("cuda")
    if mode not in supported_modes(device):
        pytest.skip(f"{mode} needs a newer card than {torch.cuda.get_device_name(device)}")
    gen = torch.Generator(device).manual_seed(rows)
    x = torch.randn(rows, 4096, generator=gen, device=device, dtype=torch.bfloat16)
    w = torch.randn(1024, 4096, generator=gen, device=device) * 0.02
    stored = quantize_linear_weight(w, *STORED[mode])
    codes, step = stored["qweight"], row_step(stored, *STORED[mode])
    got = w8a8_linear(x, codes, step, None, mode)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 1024)
    assert relative(got, reference_linear(x, codes, step, mode)) < 1e-2  # the bf16 output's rounding
    assert relative(got, x.float() @ w.t()) < DENSE_BOUND[mode]
