"""Decode the selected images once, in parallel, into an in-memory uint8 array.

Any format `tf.io.decode_image` reads (JPEG, PNG, GIF, BMP) is accepted;
grayscale and RGBA become RGB, and every image is resized to the model's square
input size. Unreadable files are found in the same pass (`ignore_errors` on an
indexed dataset), so there is no second scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecls.data.sources import RawSplit
from edgecls.errors import DataError

DECODE_BATCH = 256


@dataclass
class DecodedSplit:
    """Decoded images of one split.

    Attributes:
        images: uint8 [N, size, size, 3].
        labels: int32 [N].
        ids: The source id of each image.
        skipped: Ids of files that could not be decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> DecodedSplit:
        """The images at `index`, in that order (no skipped list)."""
        return DecodedSplit(self.images[index], self.labels[index], [self.ids[i] for i in index], [])


def _resize(image, size: int):
    """Bilinear resize to `size` x `size` uint8; antialiased only when shrinking (it is slow)."""
    import tensorflow as tf

    shrinking = tf.reduce_any(tf.shape(image)[-3:-1] > size)
    image = tf.cond(
        shrinking,
        lambda: tf.image.resize(image, (size, size), method="bilinear", antialias=True),
        lambda: tf.image.resize(image, (size, size), method="bilinear"),
    )
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def decode_split(raw: RawSplit, size: int, *, on_bad_image: str = "skip") -> DecodedSplit:
    """Decode and resize every image of `raw` to `size` x `size` RGB.

    Args:
        raw: The listed split.
        size: Output side in pixels.
        on_bad_image: `skip` drops unreadable files (returned in `skipped`);
            `error` raises at the first one.

    Raises:
        DataError: with `on_bad_image="error"`, naming the first unreadable file.
    """
    import tensorflow as tf

    if raw.kind == "pixels":
        return _resize_pixels(raw, size)

    def decode(index, item):
        data = tf.io.read_file(item) if raw.kind == "path" else item
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return index, _resize(image, size)

    payload = tf.constant(raw.payload, dtype=tf.string)
    dataset = (
        tf.data.Dataset.from_tensor_slices((tf.range(len(raw), dtype=tf.int64), payload))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(DECODE_BATCH)
    )
    images = np.empty([len(raw), size, size, 3], np.uint8)
    kept = np.empty([len(raw)], np.int64)
    count = 0
    for index, batch in dataset.as_numpy_iterator():  # small batches: large ones cost copies
        images[count : count + len(batch)] = batch
        kept[count : count + len(batch)] = index
        count += len(batch)
    images, kept = images[:count], kept[:count]
    bad = np.setdiff1d(np.arange(len(raw)), kept)
    skipped = [raw.ids[i] for i in bad]
    if not images.flags.c_contiguous:
        images = np.ascontiguousarray(images)
    if skipped and on_bad_image == "error":
        raise DataError(
            f"cannot decode {skipped[0]} as an image ({len(skipped)} unreadable file(s) in all); "
            "remove it or pass `--on-bad-image skip`."
        )
    return DecodedSplit(images, raw.labels[kept], [raw.ids[i] for i in kept], skipped)


def _resize_pixels(raw: RawSplit, size: int) -> DecodedSplit:
    import tensorflow as tf

    pixels = raw.payload
    if pixels.shape[1:3] != (size, size):
        resized = np.empty([len(pixels), size, size, 3], np.uint8)
        dataset = tf.data.Dataset.from_tensor_slices(pixels).batch(DECODE_BATCH).map(lambda x: _resize(x, size))
        for start, batch in zip(range(0, len(pixels), DECODE_BATCH), dataset.as_numpy_iterator(), strict=False):
            resized[start : start + len(batch)] = batch
        pixels = resized
    return DecodedSplit(np.ascontiguousarray(pixels, dtype=np.uint8), raw.labels, list(raw.ids), [])
