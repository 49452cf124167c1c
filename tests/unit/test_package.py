"""Importing edgecls sets TensorFlow's switches before TensorFlow reads them, and keeps the user's own values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import edgecls, tensorflow as tf; print(tf.keras.layers.Dense.__module__)"


def _import_edgecls_then_tensorflow(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_USE_LEGACY_KERAS")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**clean, "TF_CPP_MIN_LOG_LEVEL": "0", **env},
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip


@pytest.mark.parametrize(("user_value", "onednn_on"), [(None, True), ("0", False)])
def test_onednn_kernels_are_on_unless_the_user_says_otherwise(user_value, onednn_on):
    """TensorFlow itself reports its oneDNN kernels (it enables them by default only on AVX512_VNNI/AMX CPUs)."""
    done = _import_edgecls_then_tensorflow(**({} if user_value is None else {"TF_ENABLE_ONEDNN_OPTS": user_value}))
    assert ("oneDNN custom operations are on" in done.stderr) is onednn_on
    assert done.stdout.strip().startswith("tf_keras."), "tf.keras must be tf-keras (Keras 2), which TFMOT needs"
