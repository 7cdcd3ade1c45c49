"""QuantizedLinear: a Linear whose weight is stored quantized, as plain tensors only.

State = registered buffers `qweight`, `scale` (and `shift` for quanto 4-bit, `scale_absmax` and
`scale_offset` for double-quantized nf4 scales) plus an optional `bias` parameter. Forward reads them from the module at call time, dequantizes through the
backend's functional API into the activation dtype and runs F.linear; nothing derived from the
weights is cached, so a streamer may re-point `module._buffers[name]` / `param.data` to views of
a device buffer between calls.

`compute` picks the GEMM (`quantize.compute`): "bf16" dequantizes as above; "int8" / "fp8" multiply
in W8A8, reading the stored codes directly when the scheme is the mode's own (int8 -> int8, fp8 ->
fp8: no second copy of the weight) and re-quantizing the dequantized weight per call otherwise.
`W8A8Linear` is the same for a Linear stored dense (an original folder): its weight is quantized
per output channel at each call.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantize.compute import check_mode, quantize_rows, w8a8_linear
from quantize.schemes import check_scheme, dequantize, packed_layout, quantize_linear_weight, row_step


class QuantizedLinear(nn.Module):
    compute = "bf16"  # the GEMM's mode (quantize.compute.COMPUTE_MODES); set per module by use_compute

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        scheme: str,
        backend: str | None = None,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.bfloat16,
        double_quant: Optional[bool] = None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme
        self.backend = check_scheme(scheme, backend)
        layout = packed_layout((out_features, in_features), scheme, self.backend, double_quant)
        self.stored_names = tuple(layout)
        for name, (shape, dtype) in layout.items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str, backend: str | None = None,
                    double_quant: Optional[bool] = None) -> "QuantizedLinear":
        """Quantize a real (non-meta) Linear."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, backend,
                     device="meta", bias_dtype=linear.weight.dtype, double_quant=double_quant)
        for name, tensor in quantize_linear_weight(linear.weight, scheme, module.backend, double_quant).items():
            module._buffers[name] = tensor.to(linear.weight.device)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return module

    def quantized_tensors(self) -> dict[str, torch.Tensor]:
        return {name: self._buffers[name] for name in self.stored_names}

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.quantized_tensors(), (self.out_features, self.in_features), self.scheme, self.backend, dtype)

    def weight_codes(self, mode: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (out, in), float32 step per output row) of the weight in W8A8 `mode`: the stored codes
        when the scheme is the mode's own, else the weight dequantized to `dtype` and quantized again."""
        if self.scheme == mode:
            return self._buffers["qweight"], row_step(self.quantized_tensors(), self.scheme, self.backend)
        return quantize_rows(self.dequantized_weight(dtype), mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute != "bf16":
            codes, step = self.weight_codes(self.compute, x.dtype)
            return w8a8_linear(x, codes, step, self.bias, self.compute)
        weight = self.dequantized_weight(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, backend={self.backend}, compute={self.compute}")


class W8A8Linear(nn.Linear):
    """An nn.Linear with the same parameters (and state dict) whose GEMM runs in `compute` mode, its
    dense weight quantized per output channel at each call (there are no stored codes to read)."""

    def __init__(self, linear: nn.Linear, compute: str):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.compute = check_mode(compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute == "bf16":
            return super().forward(x)
        codes, step = quantize_rows(self.weight, self.compute)
        return w8a8_linear(x, codes, step, self.bias, self.compute)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, compute={self.compute}"
