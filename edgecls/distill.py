"""Knowledge distillation (Hinton et al. 2015) in the Keras pattern: a model whose train step mixes two losses.

`Distiller` wraps a student and a frozen teacher; each step computes

    alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

on the same augmented batch (Keras' "Knowledge Distillation" example, with the T^2 factor that keeps
the soft-target gradients on the hard-target scale). edgecls heads end in a softmax, so the logits
are recovered as log-probabilities, which differ from the pre-softmax logits by a per-image constant
that the tempered softmax cancels. Only the student is trained and saved: a plain model that
optimize, export and firmware take unchanged.

Cached targets: with no teacher model, the batches carry the teacher's outputs themselves,
`(images, (labels, teacher_outputs))`. `teacher_outputs` computes them once on the un-augmented
images, so an epoch costs a student epoch and no teacher forward pass. The price: the student's
random crop and flip are taught the target of the whole, unflipped image, where the online teacher
sees the same augmented view (Beyer et al. 2022 find such "consistent" teaching matters over long
schedules).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

EPSILON = 1e-7


def tempered_log_softmax(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """log softmax(log(p) / T): a softmax head's output at temperature T."""
    logits = tf.math.log(tf.clip_by_value(probabilities, EPSILON, 1.0))
    return tf.nn.log_softmax(logits / temperature, axis=-1)


def distillation_loss(
    labels: tf.Tensor, student: tf.Tensor, teacher: tf.Tensor, *, alpha: float, temperature: float, label_smoothing: float = 0.0
) -> tf.Tensor:
    """The mean over the batch of the hard-label and soft-target mix (probabilities in, one-hot labels).

    Args:
        labels: One-hot labels [batch, classes].
        student: The student's softmax output.
        teacher: The teacher's softmax output.
        alpha: Weight of the hard-label cross-entropy; 1 - alpha weighs the distillation term.
        temperature: Softens both distributions (T > 1 shows the teacher's dark knowledge).
        label_smoothing: Of the hard-label term, as in plain fine-tuning.
    """
    hard = tf_keras.losses.categorical_crossentropy(labels, student, label_smoothing=label_smoothing)
    soft_teacher = tempered_log_softmax(teacher, temperature)
    soft_student = tempered_log_softmax(student, temperature)
    kl = tf.reduce_sum(tf.exp(soft_teacher) * (soft_teacher - soft_student), axis=-1)
    return tf.reduce_mean(alpha * hard + (1.0 - alpha) * temperature**2 * kl)


def teacher_outputs(teacher, images: np.ndarray, *, batch_size: int, mode: str) -> np.ndarray:
    """The teacher's softmax outputs [N, classes] on un-augmented uint8 `images`, for cached distillation.

    The batches are preprocessed like the student's (`mode`) and resized to the teacher's input
    size as `Distiller` does online, so both modes give the teacher the same pixels.
    """
    from edgecls.data.pipeline import eval_dataset

    batches = eval_dataset(images, None, num_classes=0, batch_size=batch_size, mode=mode)
    size = tuple(teacher.input_shape[1:3])
    if tuple(images.shape[1:3]) != size:
        batches = batches.map(lambda batch: tf.image.resize(batch, size))
    return np.asarray(teacher.predict(batches, verbose=0), dtype=np.float32)


class Distiller(tf_keras.Model):
    """Trains `student` toward labels and the teacher's tempered outputs; evaluation is the student's alone.

    A batch `(images, (labels, outputs))` brings the teacher's outputs with it; a batch `(images, labels)`
    has them computed by `teacher` (None when every batch brings them).
    """

    def __init__(self, student, teacher=None, *, alpha: float = 0.5, temperature: float = 4.0, label_smoothing: float = 0.0):
        super().__init__()
        self.student, self.teacher = student, teacher
        if teacher is not None:
            self.teacher.trainable = False
            self.teacher_size = tuple(teacher.input_shape[1:3])
        self.alpha, self.temperature, self.label_smoothing = alpha, temperature, label_smoothing
        self.loss_tracker = tf_keras.metrics.Mean(name="loss")
        self.accuracy = tf_keras.metrics.CategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def save_weights(self, *args, **kwargs):
        """The student's weights only (checkpoints restore into the plain student model)."""
        return self.student.save_weights(*args, **kwargs)

    def load_weights(self, *args, **kwargs):
        return self.student.load_weights(*args, **kwargs)

    def _teacher(self, images):
        """The teacher's output on the batch, resized to its own input size (bilinear, like the data pipeline)."""
        if tuple(images.shape[1:3]) != self.teacher_size:
            images = tf.image.resize(images, self.teacher_size)
        return self.teacher(images, training=False)

    def _unpack(self, data):
        """(images, labels, teacher outputs) of a batch: carried by the batch, or computed online."""
        images, targets = data
        if isinstance(targets, tuple):  # (labels, teacher outputs), cached
            labels, teacher = targets
            return images, labels, teacher
        return images, targets, self._teacher(images)

    def _loss(self, labels, student, teacher):
        return distillation_loss(
            labels, student, teacher, alpha=self.alpha, temperature=self.temperature, label_smoothing=self.label_smoothing
        )

    def train_step(self, data):
        images, labels, teacher = self._unpack(data)
        with tf.GradientTape() as tape:
            student = self.student(images, training=True)
            loss = self._loss(labels, student, teacher) + tf.add_n(self.student.losses or [tf.constant(0.0)])
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(labels, student)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        images, labels, teacher = self._unpack(data)
        student = self.student(images, training=False)
        self.loss_tracker.update_state(self._loss(labels, student, teacher))
        self.accuracy.update_state(labels, student)
        return {m.name: m.result() for m in self.metrics}
