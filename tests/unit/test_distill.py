"""Distillation: the loss is the hand-computed mix, and a teacher changes what the student learns."""

from __future__ import annotations

import math

import numpy as np
import pytest


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_distillation_loss_equals_the_hand_computed_value():
    from edgecls.distill import distillation_loss

    labels = np.array([[1.0, 0, 0], [0, 0, 1.0]], np.float32)
    student_logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher_logits = np.array([[3.0, 1.0, 0.0], [-1.0, 0.0, 2.5]])
    student, teacher = softmax(student_logits), softmax(teacher_logits)
    alpha, t = 0.3, 4.0
    expected = []
    for i in range(2):
        hard = -math.log(student[i][labels[i].argmax()])
        p, q = softmax(teacher_logits[i] / t), softmax(student_logits[i] / t)
        kl = float(np.sum(p * np.log(p / q)))
        expected.append(alpha * hard + (1 - alpha) * t * t * kl)
    got = float(distillation_loss(labels, student.astype(np.float32), teacher.astype(np.float32), alpha=alpha, temperature=t))
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_alpha_one_is_plain_cross_entropy():
    import tf_keras

    from edgecls.distill import distillation_loss

    labels = np.eye(3, dtype=np.float32)[[0, 2]]
    student = softmax(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])).astype(np.float32)
    teacher = softmax(np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])).astype(np.float32)
    plain = float(np.mean(tf_keras.losses.categorical_crossentropy(labels, student)))
    assert float(distillation_loss(labels, student, teacher, alpha=1.0, temperature=3.0)) == pytest.approx(plain, rel=1e-6)


def _tiny_model(size: int, seed: int):
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((size, size, 3))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))


def _distilled_weights(student, teacher, batches) -> list[np.ndarray]:
    import tf_keras

    from edgecls.distill import Distiller

    distiller = Distiller(student, teacher, alpha=0.3, temperature=2.0)
    distiller.compile(optimizer=tf_keras.optimizers.SGD(0.5))
    distiller.fit(batches, epochs=2, verbose=0)
    return student.get_weights()


def test_cached_teacher_outputs_train_the_student_as_the_online_teacher_does():
    """Without augmentation both modes show the student the same targets: the same weights come out."""
    import tensorflow as tf
    import tf_keras

    from edgecls.data.pipeline import train_dataset
    from edgecls.distill import teacher_outputs
    from edgecls.preprocessing import normalize_tf

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 20)
    teacher = _tiny_model(12, seed=1)  # another input size: both modes resize the batch for it
    start = _tiny_model(8, seed=2).get_weights()

    cached = teacher_outputs(teacher, images, batch_size=8, mode="tf")
    by_hand = teacher(tf.image.resize(normalize_tf(tf.constant(images), "tf"), (12, 12))).numpy()
    np.testing.assert_allclose(cached, by_hand, atol=1e-6)

    def student():
        model = tf_keras.models.clone_model(_tiny_model(8, seed=2))
        model.set_weights(start)
        return model

    def batches(soft=None):
        return train_dataset(images, labels, num_classes=3, batch_size=8, mode="tf", augment=(), seed=3, soft_targets=soft)

    online = _distilled_weights(student(), teacher, batches())
    offline = _distilled_weights(student(), None, batches(cached))
    uniform = _distilled_weights(student(), None, batches(np.full_like(cached, 1 / 3)))
    assert max(np.abs(a - b).max() for a, b in zip(online, start, strict=True)) > 1e-2, "the student trained"
    for a, b in zip(online, offline, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(online, uniform, strict=True)) > 1e-3, "the cached targets are used"

    # evaluation: batches that bring the teacher's outputs score as the online teacher does
    from edgecls.data.pipeline import eval_dataset
    from edgecls.distill import Distiller

    distiller = Distiller(student(), teacher, alpha=0.3, temperature=2.0)
    distiller.compile(optimizer="sgd")
    scored = [distiller.evaluate(eval_dataset(images, labels, num_classes=3, batch_size=8, mode="tf", soft_targets=soft),
                                 verbose=0) for soft in (None, cached)]  # fmt: skip
    np.testing.assert_allclose(scored[0], scored[1], rtol=1e-5)
