"""Known-harmless library messages, silenced in one place; `--debug` shows every one of them again.

Each entry says why it is harmless. Anything not listed here still reaches the console.
"""

from __future__ import annotations

import logging
import re
import warnings

HARMLESS_WARNINGS = (
    # tf-keras: QAT models reload only from HDF5 (TFMOT), so edgecls saves stage models as .h5 on purpose.
    r"You are saving your model as an HDF5 file",
    # TFLite converter: the int8 input/output scales come from the calibration set, as intended.
    r"Statistics for quantized inputs were expected",
    # tf2onnx reads QAT TFLite files with tf.lite.Interpreter; edgecls itself runs models on LiteRT.
    r"\s*Warning: tf\.lite\.Interpreter is deprecated",
    # TFMOT's import-time version check.
    r"distutils Version classes are deprecated",
)
HARMLESS_LOGS = (
    # best-epoch weights restored into a model compiled for the next phase: the optimizer state is not needed
    "Skipping variable loading for optimizer",
    # a model loaded for inference only
    "Compiled the loaded model, but the compiled metrics have yet to be built",
    # ONNX Runtime's quantizer, asked for per-channel weights, meets 1-D BatchNorm vectors: it keeps them per tensor
    "is out-of-range for weight",
)


_STATE = {"debug": False}


def set_debug(debug: bool) -> None:
    """`--debug`: show the native libraries' chatter and every harmless message again."""
    _STATE["debug"] = debug


def is_debug() -> bool:
    """Whether `--debug` is on (the one place that state lives)."""
    return _STATE["debug"]


def quiet_native():
    """Silence native (C++) chatter on stderr around a library call, unless `--debug`.

    LiteRT announces its XNNPACK delegate and the TFLite converter prints its quantization settings
    straight to file descriptor 2; errors still come back as Python exceptions.
    """
    from edgecls.run import quiet_native_stderr

    return quiet_native_stderr(enabled=not _STATE["debug"])


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in HARMLESS_LOGS)


def silence_known_noise() -> None:
    """Install the warning filters and log filters above (idempotent)."""
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    drop = _DropHarmless()
    for name in ("", "absl", "tensorflow", "root"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmless) for f in logger.filters):
            logger.addFilter(drop)
        for handler in logger.handlers:
            if not any(isinstance(f, _DropHarmless) for f in handler.filters):
                handler.addFilter(drop)


def is_harmless(message: str) -> bool:
    """True for a message `silence_known_noise` hides (tests use it to check the console)."""
    return any(re.match(p, message) for p in HARMLESS_WARNINGS) or any(t in message for t in HARMLESS_LOGS)
