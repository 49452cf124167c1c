"""The data stage: list a source, split it, decode the selection, build tf.data pipelines.

`load_dataset(cfg.data, input_size, seed)` is the entry point; its result holds
decoded train/val/test splits and a description of exactly what was used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.config import DataConfig
from edgecls.data.decode import DecodedSplit, decode_split
from edgecls.data.sources import RawSplit, Source, list_source
from edgecls.data.stream import StreamedSplit, default_cache_dir, stream_split
from edgecls.errors import DataError

__all__ = ["Dataset", "DecodedSplit", "StreamedSplit", "list_source", "load_dataset", "load_split", "stratified_split"]

MEMORY_SHARE = 0.6  # at most this share of the machine's RAM for decoded images


@dataclass
class Dataset:
    """Decoded splits plus what they came from.

    Attributes:
        class_names: Index = label.
        train: The training split: decoded in memory, or streamed from the on-disk cache.
        val, test: Decoded splits (val may be empty).
        info: Source, fingerprint, split sizes and skipped files, for metrics/manifests.
        warnings: One line each, for the user and the manifest.
    """

    class_names: list[str]
    train: DecodedSplit | StreamedSplit
    val: DecodedSplit
    test: DecodedSplit
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class: `fraction` of each class (at least one) goes to the second part.

    Returns:
        (kept, held_out) index arrays, each sorted.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(fraction * len(index)))
        count = min(max(count, 1 if fraction > 0 else 0), len(index) - 1)
        held.append(index[:count])
        kept.append(index[count:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def limit_per_class(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` images per class, a seeded random choice, sorted."""
    if limit is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def memory_budget(cfg: DataConfig) -> int:
    """Bytes of decoded images allowed in memory: `data.memory_gib`, else a share of the RAM available."""
    return int(cfg.memory_gib * 2**30) if cfg.memory_gib else int(_available_memory() * MEMORY_SHARE)


def _check_memory(count: int, size: int, budget: int, what: str, fix: str) -> None:
    needed = count * size * size * 3
    if needed > budget:
        raise DataError(
            f"{count} {what} at {size}x{size} need {needed / 2**30:.1f} GiB in memory, more than the "
            f"{budget / 2**30:.1f} GiB budget: {fix}"
        )


def choose_mode(cfg: DataConfig, count: int, size: int) -> str:
    """`memory` or `stream`: what `data.mode` asks, `auto` streaming only when the decoded images exceed the budget."""
    if cfg.mode != "auto":
        return cfg.mode
    return "memory" if count * size * size * 3 <= memory_budget(cfg) else "stream"


def _select(source: Source, cfg: DataConfig, seed: int) -> tuple[RawSplit, RawSplit, RawSplit]:
    train = source.train
    if source.test is None:
        kept, held = stratified_split(train.labels, cfg.test_fraction, seed)
        train, test = train.subset(kept), train.subset(held)
    else:
        test = source.test
    if cfg.val_fraction > 0:
        kept, held = stratified_split(train.labels, cfg.val_fraction, seed + 1)
        train, val = train.subset(kept), train.subset(held)
    else:
        val = train.subset(np.zeros([0], np.int64))
    train = train.subset(limit_per_class(train.labels, cfg.limit_per_class, seed + 2))
    test = test.subset(limit_per_class(test.labels, cfg.test_limit_per_class, seed + 3))
    return train, val, test


def load_split(cfg: DataConfig, input_size: int, seed: int, split: str = "test") -> tuple[DecodedSplit, list[str]]:
    """Decode one split only (the same selection `load_dataset` makes), with the class names.

    Export and validation need the test images without decoding the training set.
    """
    source = list_source(cfg.source)
    chosen = dict(zip(("train", "val", "test"), _select(source, cfg, seed), strict=True))[split]
    return decode_split(chosen, input_size, on_bad_image=cfg.on_bad_image), source.class_names


def load_dataset(cfg: DataConfig, input_size: int, seed: int) -> Dataset:
    """List, split and decode a data source for a model of `input_size` pixels.

    Args:
        cfg: The data section of the config.
        input_size: Side of the square images the model takes.
        seed: Seeds the test/val carving and the per-class limits.

    Raises:
        DataError: the source is missing, empty, malformed, too large for memory,
            or (with `on_bad_image="error"`) holds an unreadable file.
    """
    source = list_source(cfg.source)
    train_raw, val_raw, test_raw = _select(source, cfg, seed)
    budget = memory_budget(cfg)
    mode = choose_mode(cfg, len(train_raw) + len(val_raw) + len(test_raw), input_size)
    held = (val_raw, test_raw) if mode == "stream" else (train_raw, val_raw, test_raw)
    what = "validation and test images" if mode == "stream" else "images"
    fix = "pass `--test-limit-per-class` or lower `--val-fraction`." if mode == "stream" else (
        "stream them (`--set data.mode=stream`), lower `--input-size` or pass `--limit-per-class`.")  # fmt: skip
    _check_memory(sum(len(raw) for raw in held), input_size, budget, what, fix)
    splits = {
        name: decode_split(raw, input_size, on_bad_image=cfg.on_bad_image)
        for name, raw in (("train", train_raw), ("val", val_raw), ("test", test_raw))
        if not (mode == "stream" and name == "train")
    }
    stream_info = {}
    if mode == "stream":
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        splits["train"], seconds = stream_split(train_raw, input_size, fingerprint=source.fingerprint, cache_dir=cache_dir,
                                              seed=seed, on_bad_image=cfg.on_bad_image)  # fmt: skip
        stream_info = {"cache": str(splits["train"].cache), "cache_written": seconds > 0, "cache_seconds": round(seconds, 1)}
    skipped = [image_id for split in splits.values() for image_id in split.skipped]
    warnings = list(source.notes)
    if skipped:
        warnings.append(f"skipped {len(skipped)} unreadable or oversized file(s), first: {skipped[0]}")
    for name, split in splits.items():
        if name != "val" and len(split) == 0:
            raise DataError(f"no readable images left in the {name} split of {cfg.source}.")
    info = {
        "source": source.description,
        "fingerprint": source.fingerprint,
        "test_split": "given" if source.test is not None else f"carved ({cfg.test_fraction:g})",
        "sizes": {name: len(split) for name, split in splits.items()},
        "skipped_files": skipped,
        "input_size": input_size,
        "mode": mode,
        **stream_info,
    }
    return Dataset(source.class_names, splits["train"], splits["val"], splits["test"], info, warnings)
