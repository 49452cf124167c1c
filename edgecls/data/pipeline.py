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

__all__ = ["endless", "eval_dataset", "mix_batch", "preprocess", "preprocess_numpy", "train_dataset", "training_dataset"]


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
    """Apply the named per-image augmentations to a batch of uint8 images, stateless in `seed`.

    `mixup` and `cutmix` mix images and targets together: `mix_batch` applies them after preprocessing.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    if "crop" in augment or "flip" in augment:
        pad = max(1, images.shape[1] // 8)
        images = _random_crop_and_flip(images, pad, "crop" in augment, "flip" in augment, seeds[0])
    if "color" in augment:
        images = _random_color(images, seeds[1])
    return images


def _beta(shape, seed, alpha: float):
    """Stateless Beta(alpha, alpha) draws, as the ratio of two Gamma(alpha) draws."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    first = tf.random.stateless_gamma(shape, seeds[0], alpha)
    second = tf.random.stateless_gamma(shape, seeds[1], alpha)
    return first / tf.maximum(first + second, 1e-12)


def _cutmix_masks(batch, height, width, weights, seed):
    """One box per image for CutMix (Yun et al. 2019): its sides are `sqrt(1 - weight)` of the
    image's, its centre uniform over the image, clipped at the edges. Returns float masks
    [batch, H, W, 1] that are 1 inside the box, and the share of each image left outside it."""
    import tensorflow as tf

    side = tf.sqrt(1.0 - weights)[:, None]  # [batch, 1]
    centres = tf.random.stateless_uniform([batch, 2], seed)
    sizes = tf.cast(tf.stack([height, width]), tf.float32)
    low = tf.cast(tf.round(tf.clip_by_value((centres - side / 2) * sizes, 0.0, sizes)), tf.int32)
    high = tf.cast(tf.round(tf.clip_by_value((centres + side / 2) * sizes, 0.0, sizes)), tf.int32)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    inside_rows = tf.cast((rows >= low[:, :1]) & (rows < high[:, :1]), tf.float32)  # [batch, H]
    inside_cols = tf.cast((cols >= low[:, 1:]) & (cols < high[:, 1:]), tf.float32)  # [batch, W]
    masks = inside_rows[:, :, None, None] * inside_cols[:, None, :, None]
    kept = 1.0 - tf.reduce_mean(masks, axis=[1, 2, 3])
    return masks, kept


def mix_batch(images, targets, augment: Sequence[str], seed, *, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0):
    """Mixup (Zhang et al. 2018) and CutMix of a batch with itself reversed (timm's pairing).

    Each image `i` is mixed with image `B-1-i` at its own weight `w ~ Beta(alpha, alpha)`: mixup
    blends the pixels, `w x_i + (1 - w) x_partner`; CutMix pastes a box of the partner's pixels
    and `w` becomes the share of the image left outside the box. The targets (one-hot labels, or a
    tuple of them and a teacher's outputs) are blended with the same `w`. With both names, each
    image takes one of the two at even odds. Hand-written rather than Keras 3's `MixUp`/`CutMix`
    layers: those draw from a stateful seed generator, and this pipeline's augmentation is
    stateless in the batch's seed, so that one seed reproduces a run under tf.data's parallel map.

    Args:
        images: float [B, H, W, C].
        targets: float [B, classes], or a tuple of such tensors.
        augment: The run's augmentation names; only `mixup` and `cutmix` act here.
        seed: int64 [2], the batch's stateless seed.
    """
    import tensorflow as tf

    use_mixup, use_cutmix = "mixup" in augment, "cutmix" in augment
    if not (use_mixup or use_cutmix):
        return images, targets
    seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 7), 4)
    shape = tf.shape(images)
    batch = shape[0]
    partners = tf.reverse(images, axis=[0])
    if use_mixup:
        mix_weights = _beta([batch], seeds[0], mixup_alpha)
        weights = mix_weights
        mixed = images * mix_weights[:, None, None, None] + partners * (1.0 - mix_weights[:, None, None, None])
    if use_cutmix:
        masks, cut_weights = _cutmix_masks(batch, shape[1], shape[2], _beta([batch], seeds[1], cutmix_alpha), seeds[2])
        cut = images * (1.0 - masks) + partners * masks
        if use_mixup:
            choose_cut = tf.random.stateless_uniform([batch], seeds[3]) < 0.5
            weights = tf.where(choose_cut, cut_weights, mix_weights)
            mixed = tf.where(choose_cut[:, None, None, None], cut, mixed)
        else:
            weights, mixed = cut_weights, cut

    def blend(target):
        return target * weights[:, None] + tf.reverse(target, axis=[0]) * (1.0 - weights[:, None])

    return mixed, tf.nest.map_structure(blend, targets)


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
    mixup_alpha: float = 0.2,
    cutmix_alpha: float = 1.0,
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
        mixup_alpha, cutmix_alpha: The Beta distributions' parameter of `mix_batch`, when
            `augment` names `mixup` or `cutmix`.
    """
    import tensorflow as tf

    gather = _gather_batches(images)
    target = _targets(labels, num_classes, soft_targets)
    augment = tuple(augment)

    def load(batch_seed, index):
        batch = gather(index)
        if augment:
            batch = augment_batch(batch, augment, batch_seed)
        return mix_batch(preprocess(batch, mode), target(index), augment, batch_seed,
                         mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)  # fmt: skip

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


def training_dataset(
    split,
    *,
    num_classes: int,
    batch_size: int,
    mode: str,
    augment: Sequence[str],
    seed: int,
    soft_targets=None,
    mixup_alpha: float = 0.2,
    cutmix_alpha: float = 1.0,
):
    """The training pipeline of a split, in memory (`train_dataset`) or streamed from its cache (same batches' recipe).

    `soft_targets` (see `train_dataset`) needs a split in memory: a streamed one's order is its cache's.
    """
    from edgecls.data.stream import StreamedSplit

    if not isinstance(split, StreamedSplit):
        return train_dataset(split.images, split.labels, num_classes=num_classes, batch_size=batch_size, mode=mode,
                             augment=augment, seed=seed, soft_targets=soft_targets, mixup_alpha=mixup_alpha,
                             cutmix_alpha=cutmix_alpha)  # fmt: skip
    if soft_targets is not None:
        raise ValueError("soft targets need the training images in memory, not streamed")
    import tensorflow as tf

    augment = tuple(augment)

    def load(batch_seed, batch):
        images, labels = batch
        if augment:
            images = augment_batch(images, augment, batch_seed)
        return mix_batch(preprocess(images, mode), tf.one_hot(labels, num_classes), augment, batch_seed,
                         mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)  # fmt: skip

    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (
        tf.data.Dataset.zip((batch_seeds, split.batches(batch_size, seed)))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def endless(dataset, images: int, batch_size: int):
    """`(dataset.repeat(), steps_per_epoch)`: a training pipeline for Keras' `fit` that it iterates once, not once an epoch.

    From a finite dataset, `fit` makes a new iterator every epoch, and making one instantiates
    and graph-optimizes the pipeline's map function again, against the whole function library
    of the model being trained: between epochs that stalled for 10 to 57 s, one epoch in two
    (docs/benchmarks.md, "Stalls between epochs"). An endless dataset with `steps_per_epoch`
    keeps each epoch's batches, their order and their augmentation exactly as they were
    (`reshuffle_each_iteration` draws the next order at every pass), the last batch partial.
    """
    return dataset.repeat(), -(-images // batch_size)
