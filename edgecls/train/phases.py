"""Training the phases of `edgecls.train.plan`: their Keras callbacks, and the resumable fit loop.

Each phase has its own `BackupAndRestore` folder, so a run killed at any moment
resumes from its last completed epoch with the same schedule (the optimizer
step, hence the learning rate, is restored too).
"""

from __future__ import annotations

import csv
import sys
import time

import tensorflow as tf
import tf_keras

from edgecls.config import EdgeConfig
from edgecls.run import RunDir
from edgecls.train.average import AverageWeightsIn, AverageWeightsOut, WeightAverage
from edgecls.train.plan import Phase, compile_model, make_optimizer, make_schedule, plan_phases, set_trainable
from edgecls.train.teacher import distiller

CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = f"{CHECKPOINTS}/best.weights.h5"
HISTORY_CSV = "history.csv"


def read_history(path) -> list[dict[str, float]]:
    """Epoch rows of a CSVLogger file, one per epoch (a re-run epoch keeps its last row)."""
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", "NA")}
    return [rows[k] for k in sorted(rows)]


class EpochTimer(tf_keras.callbacks.Callback):
    """Adds `epoch_seconds` (wall time of the epoch) to the logs, hence to the history."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class KeepBest(tf_keras.callbacks.Callback):
    """The weights of the epoch with the best validation accuracy, kept in memory.

    In a cluster every worker must run the same collective operations in the same
    order; a best-weights file exists on the chief only, so loading it would put the
    workers out of step. All workers keep the same best weights in memory instead.
    """

    def __init__(self):
        super().__init__()
        self.best, self.weights = float("-inf"), None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_accuracy")
        if value is not None and value > self.best:
            self.best, self.weights = value, self.model.get_weights()


def phase_callbacks(run: RunDir, phase: Phase, cfg: EdgeConfig, select_best: bool, last: bool, extra, keep_best=None):
    """The Keras callbacks of one phase, in the order they must run at epoch end.

    With `select_best`, the best validation epoch's weights are kept (a file, or `keep_best`
    in memory) and early stopping may end the last phase; otherwise the last epoch's stay.
    With a weight average (`train.ema_momentum`, last phase), all of them see the average.
    """
    cb = tf_keras.callbacks
    history = read_history(run.file(HISTORY_CSV))
    best = max((row.get("val_accuracy", float("-inf")) for row in history), default=None)
    average = WeightAverage(cfg.train.ema_momentum) if last and cfg.train.ema_momentum else None
    callbacks = [AverageWeightsIn(average)] if average else []
    callbacks += [EpochTimer(), cb.CSVLogger(str(run.file(HISTORY_CSV)), append=True)]
    if select_best and keep_best is not None:
        callbacks.append(keep_best)
    elif select_best:
        callbacks.append(
            cb.ModelCheckpoint(
                str(run.file(BEST_WEIGHTS)),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best,
            )
        )
        if last and cfg.train.patience:
            callbacks.append(cb.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.train.patience))
    callbacks += [
        cb.TensorBoard(str(run.file("logs")), write_graph=False, profile_batch=0),
        *(extra or []),
        *([AverageWeightsOut(average)] if average else []),
        # last, so an epoch is only marked done once everything above has recorded it
        cb.BackupAndRestore(str(run.file(f"{CHECKPOINTS}/{phase.name}")), delete_checkpoint=True),
    ]
    return callbacks


def fit_phases(
    model,
    cfg: EdgeConfig,
    run: RunDir,
    train_ds,
    val_ds,
    steps_per_epoch: int,
    extra=None,
    *,
    keep_best=None,
    teacher=None,
    select_best: bool = True,
):
    """Train every phase not yet done in `run`, resuming a half-done one.

    A finished phase leaves `checkpoints/<phase>.weights.h5`; a later call
    loads it instead of training the phase again. `train_ds` is endless
    (`edgecls.data.pipeline.endless`); every epoch runs exactly `steps_per_epoch` steps,
    the same number on every worker of a cluster. With a `teacher`, each phase trains an
    `edgecls.distill.Distiller` around `model` (checkpoints hold the student alone).
    """
    phases = plan_phases(cfg.train)
    verbose = 1 if sys.stdout.isatty() else 2
    for index, phase in enumerate(phases):
        done = run.file(f"{CHECKPOINTS}/{phase.name}.weights.h5")
        if done.exists():
            load_weights(model, done)
            continue
        set_trainable(
            model,
            cfg.model.name,
            phase.strategy,
            unfreeze=cfg.train.unfreeze,
            batchnorm=cfg.train.batchnorm,
        )
        schedule = make_schedule(cfg.train, phase, steps_per_epoch)
        trained = model if teacher is None else distiller(model, teacher, cfg.train)
        last = index == len(phases) - 1  # the phase whose weights the run keeps, averaged with `ema_momentum`
        if teacher is None:
            compile_model(model, cfg.train, schedule, average=last)
        else:
            trained.compile(optimizer=make_optimizer(cfg.train, schedule, average=last))
        trained.fit(
            train_ds,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_ds,
            initial_epoch=phase.start,
            epochs=phase.end,
            callbacks=phase_callbacks(run, phase, cfg, select_best and val_ds is not None, last, extra, keep_best),
            verbose=verbose,
        )
        model.save_weights(str(done))


def load_weights(model, path) -> None:
    """`model.load_weights(path)`, also for a model built under a `tf.distribute` strategy.

    tf-keras assigns the h5 file's datasets themselves to a mirrored model's BatchNorm
    statistics (sync-on-read variables), which fails; a plain clone reads the file and
    hands NumPy arrays over instead.
    """
    if model.distribute_strategy is tf.distribute.get_strategy():  # not distributed
        model.load_weights(str(path))
        return
    plain = tf_keras.models.clone_model(model)
    plain.load_weights(str(path))
    model.set_weights(plain.get_weights())
