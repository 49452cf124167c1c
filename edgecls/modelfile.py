"""Load a Keras model file from a run folder without letting the file run code.

A run folder may come from someone else, so every model file is untrusted input.
tf-keras can execute code while it loads a model: a `Lambda` layer stores Python
bytecode (the legacy HDF5 loader runs it with no safe mode at all), and a `.keras`
config may name any Python `module`, which the loader imports. Before tf-keras
sees a file, `load_keras_model`:

1. checks its sha256 against the one the manifest recorded when edgecls wrote it;
2. checks that its bytes are the format its name says (`.keras` a zip, `.h5` HDF5);
3. reads the model config as data (JSON) and refuses `Lambda` layers, serialized
   lambdas, TensorFlow-op layers outside side-effect-free namespaces, and modules
   outside Keras/TFMOT, naming the layer;

and only then loads it (`safe_mode=True` for `.keras`). `trust=True` (the CLI's
`--trust-run`) skips step 3 for a folder the user vouches for; 1 and 2 always run.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from edgecls.errors import IntegrityError, RunError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
SAFE_MODULE_ROOTS = ("keras", "tf_keras", "builtins", "tensorflow_model_optimization")
UNSAFE_CLASSES = ("Lambda", "__lambda__")
# TFOpLambda layers call a TensorFlow function by name when the model runs (`tf.io.write_file` would do);
# the side-effect-free namespaces below cover what Keras' own graphs use (MobileNetV3's hard-swish).
OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
SAFE_OPS = ("__operators__.", "math.", "nn.", "image.resize", "reshape", "concat", "expand_dims", "squeeze", "cast",
            "clip_by_value", "identity", "transpose", "split", "stack")  # fmt: skip


def check_format(path: Path) -> None:
    """Raise `IntegrityError` unless the file's first bytes match its suffix (`.keras` zip, `.h5` HDF5)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    expected = {".keras": (ZIP_SIGNATURE, "a .keras (zip) file"), ".h5": (HDF5_SIGNATURE, "an HDF5 file")}
    if path.suffix not in expected:
        raise IntegrityError(f"{path} is not a Keras model file (.keras or .h5).")
    signature, what = expected[path.suffix]
    if not head.startswith(signature):
        raise IntegrityError(f"{path} is not {what} as its name says; refusing to load it.")


def read_model_config(path: Path) -> Any:
    """The model's architecture config as plain JSON data, read without deserializing anything."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
        if raw is None:
            raise RunError(f"{path} holds no model config (weights only?); cannot load it as a model.")
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise RunError(f"cannot read {path}: {str(exc).splitlines()[0][:160] or type(exc).__name__}.") from None


def unsafe_objects(config: Any, where: str = "model") -> list[str]:
    """Names of the objects in a Keras config whose loading could run code (Lambda, foreign modules)."""
    found: list[str] = []
    if isinstance(config, list):
        for item in config:
            found += unsafe_objects(item, where)
    elif isinstance(config, dict):
        inner = config.get("config")
        name = inner.get("name", where) if isinstance(inner, dict) else where
        class_name = config.get("class_name")
        module = config.get("module")
        if class_name in UNSAFE_CLASSES or config.get("function_type") == "lambda":
            found.append(f"layer `{name}` ({class_name or 'lambda'}: Python code)")
        elif class_name in OP_LAYERS and not str((inner or {}).get("function", "")).startswith(SAFE_OPS):
            found.append(f"layer `{name}` (calls tf.{(inner or {}).get('function')} when run)")
        elif isinstance(module, str) and module.split(".")[0] not in SAFE_MODULE_ROOTS:
            found.append(f"`{name}` (imports module {module!r})")
        for value in config.values():
            found += unsafe_objects(value, name if isinstance(name, str) else where)
    return found


def verify_file(path: Path, sha256: str | None) -> None:
    """Raise `IntegrityError` if `path` differs from the sha256 the manifest recorded."""
    from edgecls.run import sha256_file

    if not path.is_file():
        raise RunError(f"{path} is listed in the run's manifest but is missing.")
    if sha256 is None:
        raise IntegrityError(f"the manifest records no sha256 for {path}; refusing to load an unverified model file.")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(
            f"{path} does not match the sha256 in the run's manifest ({actual[:12]}… vs {sha256[:12]}…): "
            "it was changed after edgecls wrote it; refusing to load it."
        )


def load_keras_model(path: str | Path, *, sha256: str | None, trust: bool = False):
    """Load a tf-keras model from a run folder, uncompiled, after the checks in the module docstring.

    Args:
        path: A `.keras` or `.h5` file.
        sha256: The hash the manifest recorded for it.
        trust: Allow Lambda layers and foreign modules (`--trust-run`).

    Raises:
        IntegrityError: the hash or the format does not match, or the file would run code without `trust`.
        RunError: the file is missing, corrupt or truncated.
    """
    import tf_keras

    path = Path(path)
    verify_file(path, sha256)
    check_format(path)
    if not trust:
        unsafe = unsafe_objects(read_model_config(path))
        if unsafe:
            raise IntegrityError(
                f"{path} contains {unsafe[0]}, which would run code while loading; refusing it. "
                "Pass `--trust-run` only if you trust where this run folder came from."
            )
    import tensorflow_model_optimization as tfmot

    try:
        with tfmot.quantization.keras.quantize_scope():  # QAT stages hold TFMOT wrappers
            if path.suffix == ".keras":
                return _load_keras_archive(path, safe_mode=not trust)
            return tf_keras.models.load_model(str(path), compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise RunError(f"cannot load {path}: {str(exc).splitlines()[0][:200] or type(exc).__name__}.") from None


def _load_keras_archive(path: Path, *, safe_mode: bool):
    """tf-keras' `.keras` loading (`saving_lib.load_model`, uncompiled), with the weights read from an extracted file.

    tf-keras reads `model.weights.h5` through `zipfile` inside the archive, where every backward
    seek of h5py re-reads the entry from its start (keras-team/keras#19793): a fine-tuned
    MobileNetV2 1.0 file, which also holds the optimizer's state, took 10 s, ResNet50 @128 untrained
    10.5 s (docs/benchmarks.md, "Conversion and loading speed"). Keras 3 extracts the file first
    (keras-team/keras#19852); tf-keras 2.21 does not, so this does: the same deserialization (saving
    v3 on, shared objects, `safe_mode`) and the same state loader, on a real file (2 s and 2.6 s).
    An archive with assets or without `model.weights.h5` goes to `tf_keras.models.load_model`.
    """
    import tempfile

    import tf_keras
    from tf_keras.src.saving import saving_lib

    with zipfile.ZipFile(path) as archive:
        if sorted(archive.namelist()) != ["config.json", "metadata.json", "model.weights.h5"]:
            return tf_keras.models.load_model(str(path), compile=False, safe_mode=safe_mode)
        config = json.loads(archive.read("config.json")) | {"compile_config": None}
        with tempfile.TemporaryDirectory() as folder:
            weights = archive.extract("model.weights.h5", folder)
            previous = getattr(saving_lib._SAVING_V3_ENABLED, "value", False)
            saving_lib._SAVING_V3_ENABLED.value = True
            try:
                with saving_lib.ObjectSharingScope():
                    model = saving_lib.deserialize_keras_object(config, None, safe_mode=safe_mode)
                store = saving_lib.H5IOStore(weights, mode="r")
                try:
                    saving_lib._load_state(model, weights_store=store, assets_store=None, inner_path="", visited_trackables=set())
                finally:
                    store.close()
            finally:
                saving_lib._SAVING_V3_ENABLED.value = previous
    return model
