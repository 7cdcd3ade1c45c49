"""SpotEdit for the SpatialEdit DiT: only edited tokens are recomputed after a few full steps.

Public surface: `SpotConfig` (the knobs), `spot_denoise` (the loop the pipeline runs),
`SpotSelector` (which tokens are edited), `SpotKVCache` / `estimate_cache_bytes` (per-block K/V
caches the offload plan places), `DiTSpotModel` (full / partial forwards through `block_runner`),
`replace_tokens` (the final paste with boundary smoothing).
"""

from lowmem.spotedit.attention import RecordHook, SpotHook, fusion_alpha, gather_rope
from lowmem.spotedit.cache import SpotKVCache, estimate_cache_bytes
from lowmem.spotedit.config import SpotConfig
from lowmem.spotedit.denoise import SpotOutcome, spot_denoise
from lowmem.spotedit.model import DiTSpotModel
from lowmem.spotedit.replace import replace_tokens
from lowmem.spotedit.selector import SpotSelector, dilate

__all__ = [
    "DiTSpotModel",
    "RecordHook",
    "SpotConfig",
    "SpotHook",
    "SpotKVCache",
    "SpotOutcome",
    "SpotSelector",
    "dilate",
    "estimate_cache_bytes",
    "fusion_alpha",
    "gather_rope",
    "replace_tokens",
    "spot_denoise",
]
