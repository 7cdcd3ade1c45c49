"""One edit over more than one process (torch.distributed)."""

from lowmem.parallel.cfg_parallel import CFGParallel, ParallelError, cfg_parallel

__all__ = ["CFGParallel", "ParallelError", "cfg_parallel"]
