"""Weight quantization for lowmem: schemes, the streaming converter, the manifest, the error report.

    from quantize import convert, QuantizedLinear
    convert("SpatialEdit-16B", "SpatialEdit-16B-nf4", scheme="nf4")      # lowmem quantize ...

Loading a quantized folder is the runtime's job (`lowmem.loading`); this package only knows the format.
"""

from quantize.convert import convert
from quantize.linear import QuantizedLinear
from quantize.manifest import FORMAT_VERSION, format_error_table, is_quantized_folder, read_manifest
from quantize.plan import DIT_DEFAULT_SKIP, VLM_DEFAULT_SKIP, quantizable_linears, swap_linears
from quantize.schemes import (
    BACKENDS,
    DEFAULT_BACKEND,
    SCHEMES,
    check_scheme,
    dequantize,
    packed_layout,
    quantize_linear_weight,
    stored_bytes,
    weight_error,
)

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "DIT_DEFAULT_SKIP", "FORMAT_VERSION", "QuantizedLinear", "SCHEMES",
    "VLM_DEFAULT_SKIP", "check_scheme", "convert", "dequantize", "format_error_table", "is_quantized_folder",
    "packed_layout", "quantizable_linears", "quantize_linear_weight", "read_manifest", "stored_bytes", "swap_linears",
    "weight_error",
]
