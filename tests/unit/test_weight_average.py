"""Weight averaging (`train.ema_momentum`): validation, selection and the kept model use the
average of every weight and BatchNorm statistic, computed here by hand from their values after every
step; resume state keeps the trained weights."""

from __future__ import annotations

import numpy as np
import pytest

MOMENTUM = 0.8


def _data(seed: int, n: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[(x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)]
    return x, y


def _model():
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    inputs = tf_keras.Input((6,))
    hidden = tf_keras.layers.Dense(5)(inputs)
    hidden = tf_keras.layers.BatchNormalization(momentum=0.5)(hidden)  # statistics that move a lot each step
    hidden = tf_keras.layers.ReLU()(hidden)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(hidden))


class _Record:
    """Weights seen after every training step, and at epoch end where the callback sits."""

    def __init__(self):
        import tf_keras

        record = self

        class Steps(tf_keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                record.steps.append(self.model.get_weights())

        class EpochEnd(tf_keras.callbacks.Callback):
            def __init__(self, into):
                super().__init__()
                self.into = into

            def on_epoch_end(self, epoch, logs=None):
                self.into.append(self.model.get_weights())

        self.steps: list[list[np.ndarray]] = []
        self.between: list[list[np.ndarray]] = []
        self.after: list[list[np.ndarray]] = []
        self.step_callback, self.between_callback, self.after_callback = Steps(), EpochEnd(self.between), EpochEnd(self.after)


def _hand_average(start: list[np.ndarray], steps: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """avg_0 = the weights before training; avg_t = m avg_(t-1) + (1 - m) w_t after step t."""
    average, history = [w.astype(np.float64) for w in start], []
    for weights in steps:
        average = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(average, weights, strict=True)]
        history.append(average)
    return history


def _assert_close(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


def test_validation_selection_and_the_kept_model_use_the_hand_computed_average(tmp_path):
    from edgecls.config import EdgeConfig, TrainConfig
    from edgecls.run import RunDir
    from edgecls.train import BEST_WEIGHTS, Phase, compile_model, phase_callbacks

    cfg = EdgeConfig(train=TrainConfig(ema_momentum=MOMENTUM, weight_decay=0.0, label_smoothing=0.0, patience=0))
    model = _model()
    start = model.get_weights()
    compile_model(model, cfg.train, 0.05, average=True)
    run = RunDir(tmp_path)
    record = _Record()
    callbacks = phase_callbacks(run, Phase("finetune", 0, 3, 0.05, "full"), cfg, True, True, [record.between_callback])
    callbacks.insert(-1, record.after_callback)  # after the swap back, just before BackupAndRestore saves the epoch
    (x, y), (vx, vy) = _data(0, 64), _data(1, 32)
    callbacks = [record.step_callback, *callbacks]
    history = model.fit(x, y, batch_size=16, epochs=3, validation_data=(vx, vy), callbacks=callbacks, verbose=0)

    averages = _hand_average(start, record.steps)
    steps_per_epoch = 4
    for epoch in range(3):
        end = averages[(epoch + 1) * steps_per_epoch - 1]
        _assert_close(record.between[epoch], end)  # the best-weights checkpoint and the rest see the average
        _assert_close(record.after[epoch], record.steps[(epoch + 1) * steps_per_epoch - 1])  # resume state: trained
        probe = _model()
        probe.set_weights([a.astype(np.float32) for a in end])
        probe.compile(loss="categorical_crossentropy", metrics=["accuracy"])
        loss, _ = probe.evaluate(vx, vy, verbose=0)
        assert history.history["val_loss"][epoch] == pytest.approx(loss, rel=1e-4)  # validation scored the average
    _assert_close(model.get_weights(), averages[-1])  # fit ends by keeping the average

    best_epoch = int(np.argmax(history.history["val_accuracy"]))
    saved = _model()
    saved.load_weights(str(run.file(BEST_WEIGHTS)))
    _assert_close(saved.get_weights(), averages[(best_epoch + 1) * steps_per_epoch - 1])
    for index in (0, 4, 5):  # a kernel, the moving mean and the moving variance: the average really differs
        assert not np.allclose(averages[-1][index], record.steps[-1][index])


def test_no_momentum_means_no_average_and_no_swap(tmp_path):
    from edgecls.config import EdgeConfig, TrainConfig
    from edgecls.run import RunDir
    from edgecls.train import AverageWeightsIn, Phase, make_optimizer, phase_callbacks

    cfg = EdgeConfig(train=TrainConfig())
    assert not make_optimizer(cfg.train, 1e-3, average=True).use_ema
    callbacks = phase_callbacks(RunDir(tmp_path), Phase("finetune", 0, 2, 1e-3, "full"), cfg, True, True, None)
    assert not any(isinstance(c, AverageWeightsIn) for c in callbacks)
    averaged = EdgeConfig(train=TrainConfig(ema_momentum=0.99))
    assert make_optimizer(averaged.train, 1e-3, average=True).ema_momentum == pytest.approx(0.99)
    assert not make_optimizer(averaged.train, 1e-3, average=False).use_ema  # the head warm-up is never averaged


def test_an_interrupted_run_resumes_with_its_average(tmp_path):
    """BackupAndRestore saves the optimizer's averages with the trained weights; a resumed run continues both."""
    import tf_keras

    from edgecls.config import EdgeConfig, TrainConfig
    from edgecls.run import RunDir
    from edgecls.train import Phase, compile_model, phase_callbacks

    cfg = EdgeConfig(train=TrainConfig(ema_momentum=MOMENTUM, patience=0))
    phase = Phase("finetune", 0, 3, 0.05, "full")
    (x, y), (vx, vy) = _data(0, 64), _data(1, 32)

    class Averages(tf_keras.callbacks.Callback):  # at a step's end nothing is swapped: the optimizer holds the average
        def __init__(self):
            super().__init__()
            self.after_step: list[list[np.ndarray]] = []
            self.weights: list[list[np.ndarray]] = []

        def on_train_batch_end(self, batch, logs=None):
            self.after_step.append([a.numpy() for a in self.model.optimizer._model_variables_moving_average])
            self.weights.append([v.numpy() for v in self.model.trainable_variables])  # the optimizer's order

    class StopAfterSecondEpoch(tf_keras.callbacks.Callback):  # before BackupAndRestore: epoch 1 is never saved
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    first, second = Averages(), Averages()
    model = _model()
    compile_model(model, cfg.train, 0.05, average=True)
    interrupted = [first, *phase_callbacks(RunDir(tmp_path), phase, cfg, True, True, [StopAfterSecondEpoch()])]
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=16, epochs=3, validation_data=(vx, vy), shuffle=False, verbose=0, callbacks=interrupted)
    resumed = _model()
    compile_model(resumed, cfg.train, 0.05, average=True)
    again = [second, *phase_callbacks(RunDir(tmp_path), phase, cfg, True, True, None)]
    resumed.fit(x, y, batch_size=16, epochs=3, validation_data=(vx, vy), shuffle=False, verbose=0, callbacks=again)

    assert int(resumed.optimizer.iterations) == 12  # epoch 0 restored (4 steps), epochs 1 and 2 trained again
    saved = first.after_step[3]  # the average at the end of epoch 0, the last epoch saved
    before_first_step = [(a - (1 - MOMENTUM) * w) / MOMENTUM for a, w in zip(second.after_step[0], second.weights[0], strict=True)]
    _assert_close(before_first_step, saved)
