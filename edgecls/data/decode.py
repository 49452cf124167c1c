"""Decode the selected images once, in parallel, into an in-memory uint8 array.

Any format `tf.io.decode_image` reads (JPEG, PNG, GIF, BMP) is accepted;
grayscale and RGBA become RGB, and every image is resized to the model's square
input size. Unreadable files are found in the same pass (`ignore_errors` on an
indexed dataset), so there is no second scan. An image whose header declares more
than `MAX_PIXELS` pixels is skipped the same way, before it is decoded: a 1 MB PNG
can declare a 20,000 x 20,000 canvas (1.2 GB decoded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecls.data.sources import RawSplit
from edgecls.errors import DataError

DECODE_BATCH = 256
MAX_PIXELS = 1 << 26  # 67 M pixels (8192 x 8192); Pillow's decompression-bomb limit is 89 M


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


def resize_tensor(image, size: int):
    """Bilinear resize to `size` x `size` uint8; antialiased only when shrinking (it is slow)."""
    import tensorflow as tf

    shrinking = tf.reduce_any(tf.shape(image)[-3:-1] > size)
    image = tf.cond(
        shrinking,
        lambda: tf.image.resize(image, (size, size), method="bilinear", antialias=True),
        lambda: tf.image.resize(image, (size, size), method="bilinear"),
    )
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def header_pixels(data):
    """Width x height that a JPEG, PNG, GIF or BMP header declares, read without decoding (0 for other formats)."""
    import tensorflow as tf

    def product(values):
        return tf.reduce_prod(tf.abs(tf.cast(values, tf.int64)))

    def field(offset: int, dtype, little_endian: bool):
        return tf.io.decode_raw(tf.strings.substr(data, offset, 8 if dtype == tf.int32 else 4), dtype, little_endian=little_endian)

    magic = tf.strings.substr(data, 0, 4)
    return tf.case(
        [
            (tf.io.is_jpeg(data), lambda: product(tf.image.extract_jpeg_shape(data)[:2])),
            (tf.equal(magic, b"\x89PNG"), lambda: product(field(16, tf.int32, False))),
            (tf.equal(tf.strings.substr(data, 0, 3), b"GIF"), lambda: product(field(6, tf.uint16, True))),
            (tf.equal(tf.strings.substr(data, 0, 2), b"BM"), lambda: product(field(18, tf.int32, True))),
        ],
        default=lambda: tf.constant(0, tf.int64),
    )


def decode_tensor(data, size: int):
    """Encoded image bytes (a string tensor) to a `size` x `size` RGB uint8 tensor.

    Fails (an error `ignore_errors` drops) for unreadable data and for headers declaring
    more than `MAX_PIXELS` pixels, checked before decoding.
    """
    import tensorflow as tf

    too_large = tf.debugging.assert_less_equal(header_pixels(data), tf.constant(MAX_PIXELS, tf.int64))
    with tf.control_dependencies([too_large]):  # an error here skips the file like an unreadable one
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return resize_tensor(image, size)


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
        return index, decode_tensor(tf.io.read_file(item) if raw.kind == "path" else item, size)

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
        dataset = tf.data.Dataset.from_tensor_slices(pixels).batch(DECODE_BATCH).map(lambda x: resize_tensor(x, size))
        for start, batch in zip(range(0, len(pixels), DECODE_BATCH), dataset.as_numpy_iterator(), strict=False):
            resized[start : start + len(batch)] = batch
        pixels = resized
    return DecodedSplit(np.ascontiguousarray(pixels, dtype=np.uint8), raw.labels, list(raw.ids), [])
