"""Streaming input: the training split read through tf.data from an on-disk cache instead of memory.

Used when the decoded images would not fit the memory budget (or with
`data.mode: stream`). The first time a split is needed at an input size, its files
are listed in a seeded random order, decoded and resized in parallel by tf.data
(`map` with AUTOTUNE, unreadable files dropped by `ignore_errors`, as in memory),
grouped in chunks of `CHUNK` images and written once with `tf.data.Dataset.save`
into shards under the cache folder, keyed by the data set's fingerprint, the
selected images and the size. Every epoch after that (and every later run on the
same data) reads the shards back interleaved, shuffles the chunks through a buffer,
permutes the images inside each chunk, and re-batches: no JPEG decoding, and the
per-image work of a streamed epoch is a memory copy (per-image shuffling cost 13 %
of the training throughput on 2 cores, docs/benchmarks.md). Archives are read
as today (their encoded bytes in memory); nothing is unpacked to disk.

The cache is written to a temporary folder and renamed when complete, so a run
killed while writing it leaves no half cache that a later run would read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.data.decode import decode_tensor, resize_tensor
from edgecls.data.sources import RawSplit
from edgecls.errors import DataError

SHARDS = 16  # read back interleaved: with the shuffle buffer, each epoch sees a new order
CHUNK = 256  # images per cache element: one read and one shuffle step moves a chunk, not an image
SHUFFLE_BUFFER_BYTES = 512 << 20  # the shuffle buffer holds at most this many bytes of decoded images


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/edgecls` (default `~/.cache/edgecls`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecls"


@dataclass
class StreamedSplit:
    """The decoded images of one split, on disk (a `Dataset.save` folder), read as a stream.

    Attributes:
        labels: int32 [N] of the readable images, in cache order.
        ids: The source id of each readable image, in cache order.
        skipped: Ids of files that could not be decoded.
        cache: The complete cache folder.
        size: Side of the square images.
    """

    labels: np.ndarray
    ids: list[str]
    skipped: list[str]
    cache: Path
    size: int

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self, seed: int):
        """(uint8 images [n, size, size, 3], int32 labels [n]) chunks, shards interleaved in a new order every epoch."""
        import tensorflow as tf

        def reader(shards):
            shards = shards.shuffle(SHARDS, seed=seed, reshuffle_each_iteration=True)
            return shards.interleave(lambda shard: shard, cycle_length=SHARDS, num_parallel_calls=tf.data.AUTOTUNE)

        chunks = tf.data.Dataset.load(str(self.cache), reader_func=reader)
        return chunks.map(lambda chunk, example: (example[1], example[2]))

    def batches(self, batch_size: int, seed: int):
        """Shuffled (images, labels) batches of one epoch: chunks through a buffer, permuted inside, re-batched."""
        import tensorflow as tf

        buffer = int(max(1, SHUFFLE_BUFFER_BYTES // (CHUNK * self.size * self.size * 3)))
        chunks = self.chunks(seed).shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        chunk_seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)

        def permute(chunk_seed, chunk):
            images, labels = chunk
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(labels), chunk_seed))
            return tf.gather(images, order), tf.gather(labels, order)

        mixed = tf.data.Dataset.zip((chunk_seeds, chunks)).map(permute, num_parallel_calls=tf.data.AUTOTUNE)
        return mixed.rebatch(batch_size)


def cache_key(fingerprint: str | None, raw: RawSplit, size: int) -> str:
    """What the decoded cache depends on: the source, exactly which images (ids, labels), and the size."""
    digest = hashlib.sha256(f"{fingerprint}\n{size}\n".encode())
    for image_id, label in zip(raw.ids, raw.labels.tolist(), strict=True):
        digest.update(f"{image_id}\0{label}\n".encode())
    return digest.hexdigest()[:32]


def _write_cache(raw: RawSplit, size: int, target: Path, seed: int) -> None:
    """Decode `raw` in a seeded random order and save it as shards into `target`, atomically."""
    import tensorflow as tf

    order = np.random.default_rng(seed).permutation(len(raw))
    labels = tf.constant(raw.labels[order].astype(np.int32))
    if raw.kind == "pixels":  # Keras' CIFAR-10 arrays: only resized
        payload = tf.constant(raw.payload[order])
    else:
        payload = tf.constant([raw.payload[i] for i in order], dtype=tf.string)

    def decode(index, item, label):
        if raw.kind == "pixels":
            return index, resize_tensor(item, size), label
        data = tf.io.read_file(item) if raw.kind == "path" else item
        return index, decode_tensor(data, size), label

    chunks = (
        tf.data.Dataset.from_tensor_slices((tf.constant(order, tf.int64), payload, labels))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(CHUNK)
        .enumerate()
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    try:
        chunks.save(str(scratch / "data"), shard_func=lambda chunk, example: chunk % SHARDS)
        try:
            (scratch / "data").rename(target)
        except OSError:
            if not target.is_dir():  # another run finished the same cache first: use theirs
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cached_index(cache: Path) -> np.ndarray:
    """The source indices held by a cache, in its order (a read of the cache, no decoding)."""
    import tensorflow as tf

    indices = tf.data.Dataset.load(str(cache)).map(lambda chunk, example: example[0], num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate([np.zeros([0], np.int64), *indices.as_numpy_iterator()])


def stream_split(
    raw: RawSplit, size: int, *, fingerprint: str | None, cache_dir: Path, seed: int, on_bad_image: str = "skip"
) -> tuple[StreamedSplit, float]:
    """A streamed split of `raw` at `size` pixels, decoding it into the cache unless it is there already.

    Returns:
        The split, and the seconds spent writing the cache (the first epoch's extra cost; 0 when it was there).

    Raises:
        DataError: with `on_bad_image="error"`, naming the first unreadable file; or the cache
            folder cannot be written.
    """
    cache = cache_dir / "stream" / f"{cache_key(fingerprint, raw, size)}-{size}px"
    start, seconds = time.perf_counter(), 0.0
    if not cache.is_dir():
        import tensorflow as tf

        try:
            _write_cache(raw, size, cache, seed)
        except (OSError, tf.errors.OpError) as exc:
            raise DataError(f"cannot write the streaming cache in {cache_dir}: {exc}; set `data.cache_dir`.") from None
        seconds = time.perf_counter() - start
    index = _cached_index(cache)
    skipped = [raw.ids[i] for i in np.setdiff1d(np.arange(len(raw)), index)]
    if skipped and on_bad_image == "error":
        raise DataError(
            f"cannot decode {skipped[0]} as an image ({len(skipped)} unreadable file(s) in all); "
            "remove it or pass `--on-bad-image skip`."
        )
    return StreamedSplit(raw.labels[index].astype(np.int32), [raw.ids[i] for i in index], skipped, cache, size), seconds
