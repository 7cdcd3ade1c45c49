"""The edit pipeline: `SpatialEditPipeline` loads a model folder (whole, or under a plan made from a
memory budget) and runs encode -> denoise -> decode; `RunReport` is what one edit did."""

from lowmem.pipeline.report import RunReport
from lowmem.pipeline.spatial_edit import EditResult, SpatialEditPipeline, default_device, default_dtype

__all__ = ["EditResult", "RunReport", "SpatialEditPipeline", "default_device", "default_dtype"]
