"""Resolve backbone weights in one place: `imagenet`, `none`, or a local .h5 file.

`imagenet` goes through Keras' own download-and-cache function
(`keras.utils.get_file`) with the file names, addresses and hashes that
`keras.applications` uses, in `$KERAS_HOME/models` (default `~/.keras/models`;
tf-keras itself ignores KERAS_HOME, Keras 3 and edgecls honour it). A cached
file works offline. The backbone is built at the wanted size with no weights and
the file is loaded into it, so the choice of file is explicit: Keras publishes
separate ImageNet trainings for some sizes (MobileNet v1 at 128/160/192/224 px);
when the one for this size is neither cached nor downloadable, the 224 px file
initialises the network instead (no-top weights do not depend on the input
size), and the manifest says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls.errors import WeightsError
from edgecls.models.specs import get_spec

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_MOBILENET_V1_ALPHA = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}
_V3_HASHES = {  # keras.applications.mobilenet_v3.WEIGHTS_HASHES, no-top column
    "large_224_0.75_float": "40af19a13ebea4e2ee0c676887f69a2e",
    "large_224_1.0_float": "07fb09a5933dd0c8eaafa16978110389",
    "small_224_0.75_float": "ebdb5cc8e0b497cd13a7c275d475c819",
    "small_224_1.0_float": "d3e8ec802a04aa4fc771ee12a9a9b836",
}


@dataclass(frozen=True)
class WeightsFile:
    """One Keras ImageNet no-top weights file: cache name, download address, md5 (if Keras checks one)."""

    fname: str
    origin: str
    file_hash: str | None = None


def imagenet_file(name: str, alpha: float, size: int) -> WeightsFile:
    """The file `keras.applications` would load for backbone `name` at input `size`."""
    if name == "mobilenet":
        fname = f"mobilenet_{_MOBILENET_V1_ALPHA[alpha]}_{size}_tf_no_top.h5"
        return WeightsFile(fname, _KERAS_APPS + "mobilenet/" + fname)
    if name == "mobilenet_v2":
        fname = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}_no_top.h5"
        return WeightsFile(fname, _KERAS_APPS + "mobilenet_v2/" + fname)
    if name.startswith("mobilenet_v3_"):
        key = f"{name.removeprefix('mobilenet_v3_')}_224_{float(alpha)}_float"
        fname = f"weights_mobilenet_v3_{key}_no_top_v2.h5"
        return WeightsFile(fname, _KERAS_APPS + "mobilenet_v3/" + fname, _V3_HASHES[key])
    if name == "resnet50":
        fname = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return WeightsFile(fname, _KERAS_APPS + "resnet/" + fname, "4d473c1dd8becc155b73f8504c6f6626")
    raise WeightsError(f"no ImageNet weights are known for {name}.")


def keras_home() -> Path:
    """Keras' cache root: `$KERAS_HOME`, or `~/.keras`."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def keras_cache_dir() -> Path:
    """Where ImageNet weights are cached: `<keras_home>/models`."""
    return keras_home() / "models"


def fetch(weights: WeightsFile) -> Path | None:
    """Path of `weights` from Keras' cache, downloading it when online; None if unavailable."""
    import tf_keras

    try:
        path = tf_keras.utils.get_file(
            weights.fname,
            weights.origin,
            cache_subdir="models",
            cache_dir=str(keras_home()),
            file_hash=weights.file_hash,
        )
    except Exception:  # Keras raises a bare Exception when the download fails
        return None
    return Path(path)


def _imagenet(builder: Callable, cfg: BackboneArgs) -> tuple[Any, dict[str, Any], list[str]]:
    from edgecls.run import sha256_file

    spec = get_spec(cfg.name)
    wanted = cfg.input_size if cfg.input_size in spec.imagenet_sizes else 224
    candidates = [imagenet_file(cfg.name, cfg.alpha, wanted)]
    if wanted != 224:
        candidates.append(imagenet_file(cfg.name, cfg.alpha, 224))
    for weights in candidates:
        path = fetch(weights)
        if path is not None:
            break
    else:
        names = " or ".join(w.fname for w in candidates)
        raise WeightsError(
            f"ImageNet weights for {cfg.name} (alpha {cfg.alpha}) are not cached and could not be "
            f"downloaded: put {names} in {keras_cache_dir()} or pass `--weights PATH`."
        )
    backbone = builder(cfg.input_size, cfg.alpha, None)
    backbone.load_weights(str(path))
    warnings = []
    if weights is not candidates[0]:
        warnings.append(
            f"ImageNet weights: {candidates[0].fname} (trained at {wanted} px) is not cached and "
            f"could not be downloaded; initialised from {weights.fname} instead"
        )
    info = {"source": "imagenet", "file": weights.fname, "sha256": sha256_file(path)}
    return backbone, info, warnings


def _from_file(builder: Callable, cfg: BackboneArgs) -> tuple[Any, dict[str, Any], list[str]]:
    from edgecls.run import sha256_file

    backbone = builder(cfg.input_size, cfg.alpha, None)
    try:
        backbone.load_weights(cfg.weights)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise WeightsError(f"weights file {cfg.weights} does not fit {cfg.name} (alpha {cfg.alpha}): {reason}") from None
    return backbone, {"source": "file", "path": str(cfg.weights), "sha256": sha256_file(cfg.weights)}, []


@dataclass(frozen=True)
class BackboneArgs:
    """The checked arguments of one backbone (see `create_model`)."""

    name: str
    alpha: float
    input_size: int
    weights: str


def build_backbone(builder: Callable, name: str, *, alpha: float, input_size: int, weights: str) -> tuple[Any, dict[str, Any]]:
    """Build the no-top backbone `name` with its weights (`imagenet`, `none` or a .h5 path) resolved.

    Returns:
        (backbone, info): `info` records the source, how it was loaded and any
        warning (`info["warnings"]`), for the manifest.

    Raises:
        WeightsError: ImageNet weights unavailable, or a file that does not fit.
    """
    cfg = BackboneArgs(name, alpha, input_size, weights)
    if cfg.weights == "none":
        backbone, info, warnings = builder(cfg.input_size, cfg.alpha, None), {"source": "none"}, []
    elif cfg.weights == "imagenet":
        backbone, info, warnings = _imagenet(builder, cfg)
    else:
        backbone, info, warnings = _from_file(builder, cfg)
    info.update(model=cfg.name, alpha=cfg.alpha, input_size=cfg.input_size, warnings=warnings)
    return backbone, info
