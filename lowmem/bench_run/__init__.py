"""`lowmem bench-run`: SpatialEdit-Bench's meta file through the batch engines into the official output tree."""
