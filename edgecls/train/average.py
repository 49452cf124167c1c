"""A moving average of the weights and BatchNorm statistics (`train.ema_momentum`), as Keras callbacks."""

from __future__ import annotations

import tensorflow as tf
import tf_keras


class WeightAverage:
    """The exponential moving average of a model's weights that a run with `train.ema_momentum` keeps.

    The optimizer averages the trainable weights (Keras' `use_ema`). No optimizer touches the
    BatchNorm statistics, which keep tracking the trained weights; set against averaged weights,
    they are wrong while the weights still move (CIFAR-10, momentum 0.999: 0.24 and 0.26 validation
    accuracy after epochs 2 and 3, where the trained weights of the same recipe score 0.62-0.77,
    docs/benchmarks.md). This averages them too, with the same momentum, as
    timm's `ModelEmaV2` does. tf-keras has no `keras.callbacks.SwapEMAWeights` (Keras 3); `swap`
    is its exchange, through the optimizer attributes Keras' `finalize_variable_values` reads.
    """

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.statistics: list = []
        self.averages: list = []

    def start(self, model) -> None:
        """Begin averaging the statistics of the BatchNorm layers that train, from their values now."""
        layers = [m for m in model.submodules if isinstance(m, tf_keras.layers.BatchNormalization) and m.trainable]
        self.statistics = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
        self.averages = [tf.Variable(tf.identity(v), trainable=False) for v in self.statistics]

    @tf.function
    def update(self) -> None:
        """One step of the statistics' average (the optimizer updates the weights' own)."""
        for average, value in zip(self.averages, self.statistics, strict=True):
            average.assign(self.momentum * average + (1.0 - self.momentum) * value)

    def swap(self, model) -> None:
        """Exchange the model's weights and statistics with their averages; nothing before the first step."""
        optimizer = model.optimizer
        if not getattr(optimizer, "use_ema", False) or not getattr(optimizer, "_built", False):
            return
        pairs = list(zip(self.statistics, self.averages, strict=True))
        for var in model.trainable_variables:
            index = optimizer._index_dict.get(optimizer._var_key(var))
            if index is not None:  # a variable the optimizer never updated has no average
                pairs.append((var, optimizer._model_variables_moving_average[index]))
        for var, average in pairs:
            trained, averaged = tf.identity(var), tf.identity(average)
            var.assign(averaged)
            average.assign(trained)

    def finalize(self) -> None:
        """Keep the averaged statistics (`fit` itself writes the averaged weights into the model)."""
        for var, average in zip(self.statistics, self.averages, strict=True):
            var.assign(average)


class AverageWeightsIn(tf_keras.callbacks.Callback):
    """Validation, and the callbacks after this one at an epoch's end, see the weights' moving average.

    So the accuracy in the history, the best-epoch selection, early stopping and the best
    weights file all refer to the averaged weights a run keeps. `AverageWeightsOut` swaps the
    trained weights back before `BackupAndRestore` saves what a resumed run continues from.
    The statistics' average starts at the first step, after `BackupAndRestore` restored a
    resumed run's state (it is not saved: a resumed run restarts it from the restored values).
    """

    def __init__(self, average: WeightAverage):
        super().__init__()
        self.average = average
        self._started = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self._started:
            self.average.start(self.model)
            self._started = True

    def on_train_batch_end(self, batch, logs=None):
        self.average.update()

    def on_test_begin(self, logs=None):
        self.average.swap(self.model)

    def on_test_end(self, logs=None):
        self.average.swap(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.average.swap(self.model)

    def on_train_end(self, logs=None):
        if self._started:
            self.average.finalize()


class AverageWeightsOut(tf_keras.callbacks.Callback):
    """Puts the trained weights back in place of the average `AverageWeightsIn` swapped in."""

    def __init__(self, average: WeightAverage):
        super().__init__()
        self.average = average

    def on_epoch_end(self, epoch, logs=None):
        self.average.swap(self.model)
