"""`python -m lowmem` (and `torchrun -m lowmem`) runs the `lowmem` command."""

import sys

from lowmem.cli import main

sys.exit(main())
