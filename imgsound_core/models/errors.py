"""Why a model cannot be used: importable without torch, so the command line reports it cheaply."""


class ModelNotAvailableError(RuntimeError):
    """The weights are not on this machine (or not readable); the message says how to get them."""


class ModelMismatchError(ValueError):
    """The parts of a model, or the two models, do not fit together; the message names the mismatch."""
