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


class ConversionError(StageError):
    """A converter (TFLite, tf2onnx, ONNX Runtime quantizer) rejected the model: the stage failed."""


class IntegrityError(EdgeclsError):
    """An untrusted file refused: its sha256 differs from the manifest's, its bytes are not the format
    its name says, it would run code when loaded, or a path it names leads outside its folder."""

    exit_code = 2


class DeviceError(EdgeclsError):
    """A device that cannot be reached, refuses the key, lacks a runtime, or answers nonsense."""

    exit_code = 2


class WorkerError(StageError):
    """A runtime (LiteRT, ONNX Runtime, TFLite Micro) that refused a model file or crashed on it,
    in the child process that ran it."""


class StageInterruptedError(EdgeclsError):
    """Ctrl-C or SIGTERM: the stage stopped; the message says how to continue."""

    exit_code = 130


class UnsavedResultsError(RunError):
    """A stage finished its work but could not write its results (disk full, read-only folder).

    Attributes:
        result: What was computed, so the CLI can still show it.
    """

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result
