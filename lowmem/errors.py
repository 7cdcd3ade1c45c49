"""The errors lowmem raises for bad input: each message says what is wrong and what to do."""


class LowmemError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ModelFolderError(LowmemError, FileNotFoundError):
    """A model folder is missing a file or does not have the expected layout."""


class CorruptCheckpointError(LowmemError, ValueError):
    """A weight file is truncated, corrupt, or does not belong to this model."""


class InstructionError(LowmemError, ValueError):
    """A geometric edit the model was not trained for (an angle, a view, a box)."""


class InputImageError(LowmemError, ValueError):
    """An input image that cannot be read."""


class ResolutionError(LowmemError, ValueError):
    """A working resolution the model cannot use (sides must be multiples of 16)."""


class OutputPathError(LowmemError, OSError):
    """An output path whose folder is missing, or that exists and would be overwritten."""


class ManifestVersionError(LowmemError, ValueError):
    """A quantized folder whose manifest.json was written by an unknown (newer or older) format version."""


class ArgumentError(LowmemError, ValueError):
    """An argument out of its range, not finite, or of the wrong type (checked before any model is read)."""


class OutOfSpaceError(OutputPathError):
    """A disk without room for what lowmem writes: refused before the first byte when the size is
    known, or found full while writing (what was being written is removed, what was there is kept)."""


class DamagedOutputError(LowmemError, ValueError):
    """The model produced an image that is no image (not finite, or one flat colour): damaged weights."""
