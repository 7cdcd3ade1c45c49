"""QuantizedLinear: a Linear whose weight is stored quantized, as plain tensors only.

State = registered buffers `qweight`, `scale` (and `shift` for quanto 4-bit, `scale_absmax` and
`scale_offset` for double-quantized nf4 scales) plus an optional `bias` parameter. Forward reads them from the module at call time, dequantizes through the
backend's functional API into the activation dtype and runs F.linear; nothing derived from the
weights is cached, so a streamer may re-point `module._buffers[name]` / `param.data` to views of
a device buffer between calls.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantize.schemes import check_scheme, dequantize, packed_layout, quantize_linear_weight


class QuantizedLinear(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, backend={self.backend}")
