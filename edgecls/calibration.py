"""Reproducible calibration sets for int8 post-training quantization.

A calibration set is a small JSON manifest, never images: the data source (and
its fingerprint), a stratified, seeded selection of TRAINING image ids (test
images are never used), per-class counts, the decode settings, and a sha256 per
selected image and over all of them, of the decoded uint8 pixels at the input
size. `load_calibration` rebuilds the pixels from the source and checks every
hash, so the TFLite and ONNX int8 exporters calibrate on bit-identical data on
any machine, or fail loudly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.data.decode import decode_split
from edgecls.data.sources import list_source
from edgecls.errors import ConfigError, DataError

SCHEMA = "edgecls.calibration/1"
DECODE = "tf.io.decode_image, RGB, bilinear resize (antialiased when shrinking), rounded to uint8"


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def select_calibration_ids(labels: np.ndarray, samples: int, seed: int, flag: str = "--samples") -> np.ndarray:
    """Indices of `samples` images spread evenly over the classes (seeded, sorted).

    The remainder of `samples / classes` goes to the first classes.
    """
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    base, extra = divmod(samples, len(classes))
    chosen = []
    for rank, label in enumerate(classes):
        pool = np.flatnonzero(labels == label)
        want = base + (1 if rank < extra else 0)
        if want > len(pool):
            raise ConfigError(f"`{flag}` {samples} asks {want} images of class {label}; it has {len(pool)}.")
        chosen.append(rng.choice(pool, size=want, replace=False))
    return np.sort(np.concatenate(chosen))


def build_calibration(source: str, *, samples: int, seed: int, input_size: int, flag: str = "--samples") -> dict[str, Any]:
    """Select, decode and hash a calibration set; returns the manifest (nothing written).

    Args:
        source: An image folder or archive (`cifar10`: Keras' canonical copy).
        samples: Number of training images, split evenly over the classes.
        seed: Seeds the selection.
        input_size: Side the pixels are decoded and hashed at (the model's input size).

    Raises:
        ConfigError: `samples` out of range. DataError: an unreadable selected image.
    """
    if samples < 1:
        raise ConfigError(f"`{flag}` must be a positive integer; got {samples}.")
    if not 32 <= input_size <= 1024:
        raise ConfigError(f"`--input-size` must be in [32, 1024] pixels; got {input_size}.")
    listed = list_source(source)
    index = select_calibration_ids(listed.train.labels, samples, seed, flag)
    decoded = decode_split(listed.train.subset(index), input_size, on_bad_image="error")
    counts = np.bincount(decoded.labels, minlength=len(listed.class_names))
    return {
        "schema": SCHEMA,
        "source": str(source),
        "source_fingerprint": listed.fingerprint,
        "split": "train",
        "seed": seed,
        "samples": int(len(decoded)),
        "input_size": input_size,
        "decode": DECODE,
        "class_names": listed.class_names,
        "per_class": {name: int(c) for name, c in zip(listed.class_names, counts, strict=True)},
        "pixels_sha256": _digest(decoded.images),
        "images": [
            {"id": image_id, "label": int(label), "sha256": _digest(image)}
            for image_id, label, image in zip(decoded.ids, decoded.labels, decoded.images, strict=True)
        ],
    }


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse a calibration manifest, checking its schema."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"`--calibration` must be an existing calibration manifest; got {str(path)!r}.")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"calibration manifest {path} is not valid JSON ({getattr(exc, 'msg', 'not UTF-8')}).") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA or not _well_formed(manifest):
        raise DataError(f"{path} is not an edgecls calibration manifest (schema {SCHEMA}).")
    return manifest


def _well_formed(manifest: dict[str, Any]) -> bool:
    """The fields `load_calibration` reads, with their types."""
    images = manifest.get("images")
    return (
        isinstance(manifest.get("source"), str)
        and isinstance(manifest.get("input_size"), int)
        and isinstance(manifest.get("pixels_sha256"), str)
        and isinstance(images, list)
        and bool(images)
        and all(isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("sha256"), str) for e in images)
    )


def load_calibration(manifest: dict[str, Any], *, source: str | None = None, input_size: int | None = None) -> np.ndarray:
    """Rebuild the calibration pixels (uint8 [N, S, S, 3]) and verify every hash.

    Args:
        manifest: From `read_manifest` or `build_calibration`.
        source: Where the source data is now, if not at the recorded path.
        input_size: The model's input side; must equal the manifest's.

    Raises:
        DataError: the input size differs, the source is not the recorded one,
            or a rebuilt image no longer matches its hash.
    """
    if input_size is not None and input_size != manifest["input_size"]:
        raise DataError(
            f"the calibration set holds {manifest['input_size']} px images; the model takes {input_size} px: "
            f"build one with `edgecls calibrate --input-size {input_size}`."
        )
    listed = list_source(source or manifest["source"])
    if manifest.get("source_fingerprint") and listed.fingerprint != manifest["source_fingerprint"]:
        raise DataError(f"{source or manifest['source']} is not the data source the calibration set was built from.")
    position = {image_id: i for i, image_id in enumerate(listed.train.ids)}
    wanted = [entry["id"] for entry in manifest["images"]]
    missing = [image_id for image_id in wanted if image_id not in position]
    if missing:
        raise DataError(f"calibration image {missing[0]} is not in {manifest['source']}.")
    decoded = decode_split(
        listed.train.subset(np.array([position[i] for i in wanted])), manifest["input_size"], on_bad_image="error"
    )
    for entry, image in zip(manifest["images"], decoded.images, strict=True):
        if _digest(image) != entry["sha256"]:
            raise DataError(f"calibration image {entry['id']} no longer matches its sha256 in the manifest.")
    if _digest(decoded.images) != manifest["pixels_sha256"]:
        raise DataError("the calibration pixels no longer match `pixels_sha256` in the manifest.")
    return decoded.images
