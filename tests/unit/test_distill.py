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
