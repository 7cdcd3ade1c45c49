"""SpotEdit for the SpatialEdit DiT: only edited tokens are recomputed after a few full steps.

Public surface: `SpotConfig` (the knobs), `spot_denoise` (the loop the pipeline runs),
`SpotSelector` (which tokens are edited; it scores with `ScoreStages`, the VAE decoder stages cut to
one frame in the compute dtype), `SpotKVCache` (per-block K/V caches, on the device or in a
pinned host arena moved through a ring of device slots; `lowmem.planning` sizes them),
`DiTSpotModel` (full / partial forwards through `block_runner`), `replace_tokens` (the final paste
with boundary smoothing). It runs on the slots and streams of `lowmem.offload`, below it.
"""

from lowmem.spotedit.attention import RecordHook, SpotHook, fusion_alpha, gather_rope
from lowmem.spotedit.cache import SpotKVCache
from lowmem.spotedit.config import SpotConfig
from lowmem.spotedit.denoise import SpotOutcome, spot_denoise
from lowmem.spotedit.model import DiTSpotModel
from lowmem.spotedit.replace import replace_tokens
from lowmem.spotedit.score_stages import ScoreStages
from lowmem.spotedit.selector import SpotSelector, dilate

__all__ = [
    "DiTSpotModel",
    "RecordHook",
    "ScoreStages",
    "SpotConfig",
    "SpotHook",
    "SpotKVCache",
    "SpotOutcome",
    "SpotSelector",
    "dilate",
    "fusion_alpha",
    "gather_rope",
    "replace_tokens",
    "spot_denoise",
]
