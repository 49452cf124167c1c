"""The exceptions edgecls raises on purpose, and the exit status each maps to.

The CLI turns these into one line on stderr (`edgecls: error: ...`). Anything
else is a bug and is re-raised with its traceback.
"""


class EdgeclsError(Exception):
    """Base of every error edgecls reports to the user as one line."""

    exit_code = 1


class ConfigError(EdgeclsError, ValueError):
    """A bad option, config key or value, or an invalid combination of them."""

    exit_code = 2


class DataError(EdgeclsError):
    """A data source that is missing, empty or malformed."""

    exit_code = 2


class WeightsError(EdgeclsError):
    """Pretrained weights that cannot be found, downloaded or loaded."""

    exit_code = 2


class RunError(EdgeclsError):
    """A run folder that is missing, incomplete, or would be overwritten."""

    exit_code = 2


class StageError(EdgeclsError):
    """A stage that started on valid input and failed (a gate, a converter)."""

    exit_code = 1


class ConversionError(EdgeclsError):
    """A converter (TFLite, tf2onnx, ONNX Runtime quantizer) rejected the model."""

    exit_code = 2
