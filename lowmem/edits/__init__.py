"""What an edit is, below every face that asks for one: `EditSpec` (the instruction and how to
sample it) and its fields, written as the flags of `lowmem edit`. The CLI, a jobs-file line and any
other face build the same spec through the same fields, so they accept and refuse the same edits."""

from lowmem.edits.fields import (
    COMPUTE_CHOICES,
    COMPUTE_HELP,
    add_edit_arguments,
    edit_spec,
    instruction_from_args,
)
from lowmem.edits.spec import EditSpec

__all__ = ["COMPUTE_CHOICES", "COMPUTE_HELP", "EditSpec", "add_edit_arguments", "edit_spec", "instruction_from_args"]
