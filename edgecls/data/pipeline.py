"""tf.data input pipelines: shuffle, gather, augment, preprocess, batch, prefetch.

Images in memory are already decoded and resized, so an epoch only shuffles
indices and gathers whole batches; a streamed split reads its on-disk cache
through a shuffle buffer instead. Augmentation is vectorised over the batch.
Backbone preprocessing is done here, not as layers in the model: pruning and
quantization-aware training cannot wrap Rescaling layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgecls.preprocessing import normalize_numpy as preprocess_numpy
from edgecls.preprocessing import normalize_tf as preprocess

__all__ = ["eval_dataset", "preprocess", "preprocess_numpy", "train_dataset", "training_dataset"]


def _random_crop_and_flip(images, pad: int, crop: bool, flip: bool, seed):
    """Random translation by up to `pad` pixels (edges replicated, as a padded crop
    would with reflect-free padding) and random horizontal flip, in two gathers."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    size = tf.shape(images)[1]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    span = tf.range(size)[None, :]
    if crop:
        offsets = tf.random.stateless_uniform([batch, 2], seeds[0], -pad, pad + 1, dtype=tf.int32)
        rows = tf.clip_by_value(offsets[:, :1] + span, 0, size - 1)
        cols = tf.clip_by_value(offsets[:, 1:] + span, 0, size - 1)
    else:
        rows = tf.tile(span, [batch, 1])
        cols = rows
    if flip:
        mirrored = tf.random.stateless_uniform([batch, 1], seeds[1]) < 0.5
        cols = tf.where(mirrored, tf.reverse(cols, axis=[1]), cols)
    if crop:
        images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def _random_color(images, seed):
    """Per-image brightness (±20 %) and contrast (0.8-1.2) jitter, in pixel units."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    factors = tf.random.stateless_uniform([batch, 2, 1, 1, 1], seed, 0.8, 1.2)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * factors[:, 0] + mean * factors[:, 1]
    return tf.clip_by_value(images, 0.0, 255.0)


def augment_batch(images, augment: Sequence[str], seed):
    """Apply the named augmentations to a batch of uint8 images, stateless in `seed`."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    if "crop" in augment or "flip" in augment:
        pad = max(1, images.shape[1] // 8)
        images = _random_crop_and_flip(images, pad, "crop" in augment, "flip" in augment, seeds[0])
    if "color" in augment:
        images = _random_color(images, seeds[1])
    return images


def _gather_batches(images: np.ndarray):
    """A tf function `index -> images[index]` that reads the NumPy array in place.

    `tf.convert_to_tensor(images)` would copy the whole decoded data set (GBs at
    128 px and above); gathering from NumPy copies one batch at a time.
    """
    import tensorflow as tf

    shape = images.shape[1:]

    def gather(index):
        batch = tf.numpy_function(lambda i: images[i], [index], tf.uint8, stateful=False)
        batch.set_shape([None, *shape])
        return batch

    return gather


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    mode: str,
    augment: Sequence[str],
    seed: int,
    soft_targets: np.ndarray | None = None,
):
    """Training pipeline: reshuffled every epoch, augmented, one-hot labels.

    Args:
        images: uint8 [N, H, W, 3], resized already.
        labels: int [N].
        num_classes: Width of the one-hot labels.
        batch_size: Images per batch; the last partial batch is kept.
        mode: Backbone preprocessing (see `preprocess`).
        augment: Names from `edgecls.config.AUGMENTATIONS`.
        seed: Seeds the shuffle and the augmentation stream.
        soft_targets: float [N, classes], e.g. a teacher's outputs: each batch's labels become
            `(one_hot, soft_targets[batch])` (`edgecls.distill`, cached targets).
    """
    import tensorflow as tf

    gather = _gather_batches(images)
    target = _targets(labels, num_classes, soft_targets)
    augment = tuple(augment)

    def load(batch_seed, index):
        batch = gather(index)
        if augment:
            batch = augment_batch(batch, augment, batch_seed)
        return preprocess(batch, mode), target(index)

    indices = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    # One stateless seed pair per batch, new every epoch and reproducible from `seed`.
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (
        tf.data.Dataset.zip((batch_seeds, indices))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _targets(labels: np.ndarray, num_classes: int, soft_targets: np.ndarray | None):
    """A tf function `index -> one-hot labels`, or `-> (one-hot labels, soft targets)` when given."""
    import tensorflow as tf

    labels_t = tf.convert_to_tensor(labels.astype(np.int32))
    soft_t = None if soft_targets is None else tf.convert_to_tensor(soft_targets.astype(np.float32))

    def target(index):
        one_hot = tf.one_hot(tf.gather(labels_t, index), num_classes)
        return one_hot if soft_t is None else (one_hot, tf.gather(soft_t, index))

    return target


def eval_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    num_classes: int,
    batch_size: int,
    mode: str,
    soft_targets: np.ndarray | None = None,
):
    """Evaluation pipeline: in order, no augmentation; one-hot labels when given (and soft targets, as in training)."""
    import tensorflow as tf

    gather = _gather_batches(images)
    target = None if labels is None else _targets(labels, num_classes, soft_targets)

    def load(index):
        batch = preprocess(gather(index), mode)
        return batch if target is None else (batch, target(index))

    return (
        tf.data.Dataset.range(len(images))
        .batch(batch_size)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def training_dataset(split, *, num_classes: int, batch_size: int, mode: str, augment: Sequence[str], seed: int, soft_targets=None):
    """The training pipeline of a split, in memory (`train_dataset`) or streamed from its cache (same batches' recipe).

    `soft_targets` (see `train_dataset`) needs a split in memory: a streamed one's order is its cache's.
    """
    from edgecls.data.stream import StreamedSplit

    if not isinstance(split, StreamedSplit):
        return train_dataset(split.images, split.labels, num_classes=num_classes, batch_size=batch_size, mode=mode,
                             augment=augment, seed=seed, soft_targets=soft_targets)  # fmt: skip
    if soft_targets is not None:
        raise ValueError("soft targets need the training images in memory, not streamed")
    import tensorflow as tf

    augment = tuple(augment)

    def load(batch_seed, batch):
        images, labels = batch
        if augment:
            images = augment_batch(images, augment, batch_seed)
        return preprocess(images, mode), tf.one_hot(labels, num_classes)

    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (
        tf.data.Dataset.zip((batch_seeds, split.batches(batch_size, seed)))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
