"""The finetune stage: transfer strategies, phases, schedules and Keras callbacks.

Training runs in phases. `frozen` is one head-only phase. `partial` and `full`
start with a head warm-up (backbone frozen, `head_lr`), then unfreeze the top
`unfreeze` blocks (or everything) at the lower `lr`, with a short linear ramp
and a cosine or step decay. Each phase has its own `BackupAndRestore` folder,
so a run killed at any moment resumes from its last completed epoch with the
same schedule (the optimizer step, hence the learning rate, is restored too).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from edgecls.config import DEFAULT_EPOCHS, EdgeConfig, TrainConfig
from edgecls.distribute import Placement, make_placement, scale_for_replicas, shard_for_workers
from edgecls.errors import ConfigError, StageError
from edgecls.models.registry import HEAD_LAYERS, backbone_blocks, stem_layers
from edgecls.run import RunDir, atomic_write_json, atomic_write_text

CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = f"{CHECKPOINTS}/best.weights.h5"
MODEL_FILE = "model.keras"
HISTORY_CSV = "history.csv"


@dataclass(frozen=True)
class Phase:
    """A contiguous range of epochs trained with one set of trainable layers.

    Attributes:
        name: `head` (backbone frozen) or `finetune`.
        start, end: Global epoch range [start, end).
        lr: Peak learning rate.
        strategy: Which layers train: `frozen`, `partial` or `full`.
    """

    name: str
    start: int
    end: int
    lr: float
    strategy: str


MIN_SELECTION_IMAGES = 500  # `selection: auto` picks the best epoch on a validation split at least this large


def resolve_epochs(cfg: TrainConfig, steps_per_epoch: int | None = None) -> TrainConfig:
    """`cfg` with `epochs` and `warmup_epochs` made concrete for a data set of `steps_per_epoch` steps.

    Unset epochs are 10, or as many as `min_steps` optimizer steps need: 10 epochs of a
    900-image data set are 140 steps, far too few for a network to move from its ImageNet
    weights (docs/benchmarks.md, "Small data"). An unset warm-up is a tenth of the epochs
    (at least 1), so the head gets the same share of a longer run.
    """
    epochs = cfg.epochs
    if epochs is None:
        epochs = DEFAULT_EPOCHS
        if steps_per_epoch:
            epochs = max(epochs, -(-cfg.min_steps // steps_per_epoch))
    warmup = cfg.warmup_epochs
    if warmup is None:
        warmup = min(max(1, round(epochs / 10)), epochs - 1)
    return replace(cfg, epochs=epochs, warmup_epochs=warmup)


def resolve_selection(cfg: TrainConfig, val_images: int) -> str:
    """`best` or `last`: which epoch's weights a run keeps (`train.selection`, `auto` by the validation size)."""
    if val_images == 0:
        return "last"
    if cfg.selection != "auto":
        return cfg.selection
    return "best" if val_images >= MIN_SELECTION_IMAGES else "last"


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """The phases `cfg` trains, in order (unset epochs resolved without a step budget)."""
    cfg = resolve_epochs(cfg)
    if cfg.strategy == "frozen":
        return [Phase("head", 0, cfg.epochs, cfg.head_lr, "frozen")]
    phases = []
    if cfg.warmup_epochs:
        phases.append(Phase("head", 0, cfg.warmup_epochs, cfg.head_lr, "frozen"))
    phases.append(Phase("finetune", cfg.warmup_epochs, cfg.epochs, cfg.lr, cfg.strategy))
    return phases


def set_trainable(model, backbone: str, strategy: str, *, unfreeze: int, batchnorm: str) -> dict[str, int]:
    """Mark which layers train under `strategy`; the head always trains.

    BatchNorm layers that do not train run in inference mode (tf-keras does this
    for `trainable=False`), so their statistics stay the ImageNet ones.

    Args:
        model: A classifier from `create_model` (modified in place).
        backbone: Its registry name (for the block layout).
        strategy: `frozen`, `partial` or `full`.
        unfreeze: Top blocks to unfreeze with `partial`.
        batchnorm: `frozen` or `train`.

    Returns:
        `trainable_layers` and `trainable_params` after the change.

    Raises:
        ConfigError: `unfreeze` exceeds the backbone's block count.
    """
    blocks = backbone_blocks(model, backbone)
    if strategy == "partial" and not 1 <= unfreeze <= len(blocks):
        raise ConfigError(f"`train.unfreeze` must be in [1, {len(blocks)}] for {backbone}; got {unfreeze}.")
    unfrozen: list[Any] = []
    if strategy == "partial":
        unfrozen = [layer for block in blocks[-unfreeze:] for layer in block]
    elif strategy == "full":
        unfrozen = stem_layers(model, backbone) + [layer for block in blocks for layer in block]
    chosen = {id(layer) for layer in unfrozen}
    for layer in model.layers:
        if layer.name in HEAD_LAYERS:
            layer.trainable = True
        elif isinstance(layer, tf_keras.layers.BatchNormalization) and batchnorm == "frozen":
            layer.trainable = False
        else:
            layer.trainable = id(layer) in chosen
    return {
        "trainable_layers": sum(1 for layer in model.layers if layer.trainable and layer.weights),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    }


def make_schedule(cfg: TrainConfig, phase: Phase, steps_per_epoch: int):
    """The learning-rate schedule of one phase, indexed by the optimizer's step."""
    schedules = tf_keras.optimizers.schedules
    steps = steps_per_epoch * (phase.end - phase.start)
    if cfg.schedule == "constant":
        return phase.lr
    if cfg.schedule == "step":
        return schedules.PiecewiseConstantDecay([int(steps * 0.5), int(steps * 0.75)], [phase.lr, phase.lr * 0.1, phase.lr * 0.01])
    ramp = steps // 20 if phase.name == "finetune" else 0  # 5 % linear ramp after unfreezing
    if ramp:
        return schedules.CosineDecay(0.0, steps - ramp, warmup_target=phase.lr, warmup_steps=ramp)
    return schedules.CosineDecay(phase.lr, steps)


def make_optimizer(cfg: TrainConfig, schedule, *, average: bool = False):
    """AdamW or Nesterov SGD with decoupled weight decay (biases and BatchNorm excluded).

    With `average` and `cfg.ema_momentum`, the optimizer also keeps an exponential moving
    average of the weights it trains (Keras' `use_ema`); `fit` ends by writing it into the model.
    """
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if average and cfg.ema_momentum else {}
    if cfg.optimizer == "sgd":
        optimizer = tf_keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None, **ema)
    else:
        optimizer = tf_keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model, cfg: TrainConfig, schedule, *, average: bool = False) -> None:
    """Compile with the phase's optimizer and label-smoothed cross-entropy."""
    model.compile(
        optimizer=make_optimizer(cfg, schedule, average=average),
        loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


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
    repeated=False,
    keep_best=None,
    teacher=None,
    select_best: bool = True,
):
    """Train every phase not yet done in `run`, resuming a half-done one.

    A finished phase leaves `checkpoints/<phase>.weights.h5`; a later call
    loads it instead of training the phase again. A `repeated` (endless) training
    dataset runs exactly `steps_per_epoch` steps an epoch: every worker of a cluster
    must take the same number of steps. With a `teacher`, each phase trains an
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
            steps_per_epoch=steps_per_epoch if repeated else None,
            validation_data=val_ds,
            initial_epoch=phase.start,
            epochs=phase.end,
            callbacks=phase_callbacks(run, phase, cfg, select_best and val_ds is not None, last, extra, keep_best),
            verbose=verbose,
        )
        model.save_weights(str(done))


def distiller(student, teacher, cfg: TrainConfig):
    """The Keras distillation model of one phase: `student` trained toward labels and `teacher`.

    Batches that carry the teacher's outputs (cached targets) are not scored by the teacher again.
    """
    from edgecls.distill import Distiller

    return Distiller(student, teacher, alpha=cfg.distill_alpha, temperature=cfg.temperature, label_smoothing=cfg.label_smoothing)


def cache_teacher_outputs(teacher, dataset, splits: tuple[str, ...], batch_size: int,
                          preprocessing: str) -> tuple[dict[str, np.ndarray], float]:  # fmt: skip
    """The teacher's outputs on the un-augmented images of `splits` ("train", "val"), and the seconds they took."""
    from edgecls.distill import teacher_outputs

    start = time.perf_counter()
    outputs = {name: teacher_outputs(teacher, split.images, batch_size=batch_size, mode=preprocessing)
               for name in splits if len(split := getattr(dataset, name)) > 0}  # fmt: skip
    return outputs, time.perf_counter() - start


def load_teacher(path: str, class_names: list[str], preprocessing: str, *, trust: bool = False):
    """The teacher run's model and what the manifest records of it.

    Raises:
        RunError: not a finished run. IntegrityError: its model file changed or would run code.
        ConfigError: its classes or its preprocessing differ from the student's.
    """
    teacher_run = RunDir(path)
    record = teacher_run.finetune_record()
    if list(record.class_names) != list(class_names):
        raise ConfigError(
            f"the teacher {path} was trained on other classes ({', '.join(record.class_names[:4])}, ...) than this data"
            f" ({', '.join(class_names[:4])}, ...): a teacher must know the same classes, in the same order."
        )
    if record.preprocessing != preprocessing:
        raise ConfigError(
            f"the teacher {path} takes `{record.preprocessing}` preprocessing and this model `{preprocessing}`: both see the"
            " same batches, so choose a teacher of the same preprocessing family."
        )
    model, _ = teacher_run.load_model("finetune", trust=trust)
    info = {"run": str(teacher_run.path), "model_sha256": teacher_run.model_sha256("finetune"),
            "input_size": record.input_size}  # fmt: skip
    return model, info


def history_summary(rows: list[dict[str, float]], images_per_epoch: int) -> dict[str, Any]:
    """Epoch count, best validation accuracy and training throughput from the history."""
    seconds = [row["epoch_seconds"] for row in rows if "epoch_seconds" in row]
    steady = sorted(seconds[1:] or seconds)
    median = steady[len(steady) // 2] if steady else None
    return {
        "epochs_run": len(rows),
        "best_val_accuracy": max((row.get("val_accuracy", 0.0) for row in rows), default=None),
        "train_seconds": round(sum(seconds), 2),
        "train_images_per_second": round(images_per_epoch / median, 1) if median else None,
    }


def save_model_atomic(model, path) -> None:
    """Save a Keras model so that `path` is either absent or complete."""
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    model.save(str(tmp))
    tmp.replace(path)


def write_history_json(run: RunDir) -> list[dict[str, float]]:
    """history.json (one object per epoch) from history.csv; returns the rows."""
    rows = read_history(run.file(HISTORY_CSV))
    atomic_write_text(run.file("history.json"), json.dumps(rows, indent=1) + "\n")
    return rows


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


def finish_training(model, run: RunDir, select_best: bool) -> None:
    """Load the best validation weights when the run selects on them (else the last epoch's stay)."""
    if select_best and run.file(BEST_WEIGHTS).exists():
        load_weights(model, run.file(BEST_WEIGHTS))


def reestimate_batchnorm(model, images: np.ndarray, *, mode: str, batch_size: int = 64) -> int:
    """Replace every BatchNorm layer's moving mean and variance by the average of its batch statistics on `images`.

    The weights stay as trained; each batch runs in training mode with the momentum set so that the
    moving averages become the running mean over the batches seen ("precise BN"). A layer's momentum
    is restored afterwards. `images` must come in random order: batches of one class understate the
    variance (measured on MobileNetV2: 0.9066 test accuracy from class-sorted batches, 0.9160 shuffled).

    Returns:
        The number of images used (whole batches only).
    """
    from edgecls.data.pipeline import preprocess_numpy

    layers = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    batches = len(images) // batch_size
    for index in range(batches):
        for layer in layers:
            layer.momentum = index / (index + 1)  # 0 first: the first batch's statistics replace the old ones
        model(preprocess_numpy(images[index * batch_size : (index + 1) * batch_size], mode), training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return batches * batch_size


def clean_checkpoints(run: RunDir) -> None:
    """Remove resume state once the run is complete: model.keras holds the result."""
    shutil.rmtree(run.file(CHECKPOINTS), ignore_errors=True)


def save_metrics(run: RunDir, metrics: dict[str, Any]) -> None:
    """metrics.json, atomically."""
    atomic_write_json(run.file("metrics.json"), metrics)


def _stage_inputs(cfg: EdgeConfig, dataset, weights_info: dict[str, Any], preprocessing: str) -> dict[str, Any]:
    return {
        "data": dataset.info,
        "data_config": cfg.to_dict()["data"],
        "class_names": dataset.class_names,
        "model": {
            "name": cfg.model.name,
            "alpha": cfg.model.alpha,
            "input_size": cfg.model.input_size,
            "preprocessing": preprocessing,
        },
        "weights": weights_info,
        "seed": cfg.run.seed,
    }


def run_finetune(cfg: EdgeConfig, *, force: bool = False, resume: bool = False, callbacks=None) -> dict[str, Any]:
    """Fine-tune `cfg.model` on `cfg.data` into the run folder `cfg.run_path`.

    Nothing is written until the model is built and the data decoded, so bad
    input never leaves a folder behind. The manifest entry is written last: a
    folder without it is unfinished (and resumable with `resume=True`).

    Args:
        cfg: The resolved config (with `resume`, the one saved in the run folder).
        force: Overwrite an existing run folder.
        resume: Continue an unfinished run from its last completed epoch.
        callbacks: Extra Keras callbacks (tests use one to interrupt a run).

    Returns:
        The finetune manifest entry (metrics, outputs with sha256, warnings).

    Writes:
        config.yaml, model.keras, history.csv, history.json, metrics.json,
        logs/ (TensorBoard), manifest.json; checkpoints/ while running.
    """
    from edgecls.data import load_dataset
    from edgecls.models import create_model, get_spec

    placement = make_placement(cfg.train.distribute)
    if cfg.train.ema_momentum and placement.replicas > 1:  # tf-keras' average updates nest the strategy's scope
        raise ConfigError(
            f"train.ema_momentum needs one replica: tf-keras' weight average fails with {placement.replicas} "
            "(`Must not nest tf.distribute.Strategy scopes`); set train.distribute=none or ema_momentum=0."
        )
    scratch = None if placement.is_chief else tempfile.mkdtemp(prefix="edgecls-worker-")  # only the chief writes the run
    run = RunDir(cfg.run_path if scratch is None else Path(scratch) / cfg.run_name)
    run.check_target(force=force, resume=resume, stage="finetune")
    tf_keras.utils.set_random_seed(cfg.run.seed)
    preprocessing = get_spec(cfg.model.name).preprocessing
    dataset = load_dataset(cfg.data, cfg.model.input_size, cfg.run.seed)
    with placement.strategy.scope():
        model, weights_info = create_model(
            cfg.model.name,
            num_classes=dataset.num_classes,
            input_size=cfg.model.input_size,
            alpha=cfg.model.alpha,
            weights=cfg.model.weights,
            dropout=cfg.model.dropout,
        )
        teacher, teacher_info = (None, None)
        if cfg.train.teacher:
            teacher, teacher_info = load_teacher(cfg.train.teacher, dataset.class_names, preprocessing)
            teacher_info.update(alpha=cfg.train.distill_alpha, temperature=cfg.train.temperature,
                                targets=cfg.train.distill_targets)  # fmt: skip
            if cfg.train.distill_targets == "cached" and not hasattr(dataset.train, "images"):
                raise ConfigError("train.distill_targets=cached needs the training images in memory; this data set is"
                                  " streamed (data.mode): use `online`, or `--set data.mode=memory`.")  # fmt: skip
    if not resume:
        run.create(force=force)
        atomic_write_text(run.file("config.yaml"), cfg.to_yaml() + _placement_note(cfg, placement))
    try:
        scaled = scale_for_replicas(cfg, placement.replicas)
        model, plan = _train(model, scaled, run, dataset, preprocessing, placement, callbacks, teacher)
        return _finish_run(model, cfg, run, dataset, preprocessing, weights_info, placement, teacher_info, plan)
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError) as exc:
        if placement.kind != "multi-worker":
            raise
        reason = str(exc).strip().splitlines()[0][:200]
        raise StageError(f"the cluster lost a worker ({reason}); start every worker again with `--resume`.") from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _placement_note(cfg: EdgeConfig, placement: Placement) -> str:
    """YAML comment lines saying how a distributed run scaled the batch and learning rates."""
    if placement.replicas == 1:
        return ""
    scaled = scale_for_replicas(cfg, placement.replicas)
    return (f"# distributed ({placement.kind}, {placement.replicas} replicas): global batch {scaled.data.batch_size}"
            f" ({cfg.data.batch_size} per replica), lr {scaled.train.lr:g}, head_lr {scaled.train.head_lr:g}"
            f" (scaled by the replica count)\n")  # fmt: skip


def _train(model, cfg: EdgeConfig, run: RunDir, dataset, preprocessing: str, placement: Placement, callbacks, teacher=None):
    """Fit every phase on the placement's devices.

    Returns:
        The trained model (a plain copy when distributed) and the plan it followed
        (`epochs_planned`, `warmup_epochs`, `steps_planned`, `selection`).
    """
    from edgecls.data.pipeline import eval_dataset, training_dataset

    batch = cfg.data.batch_size  # global: per replica x replicas
    cached, cache_seconds = {}, None
    if teacher is not None:  # validation images are never augmented: the teacher scores them once in either mode
        splits = ("train", "val") if cfg.train.distill_targets == "cached" else ("val",)
        cached, cache_seconds = cache_teacher_outputs(teacher, dataset, splits, batch, preprocessing)
    train_ds = training_dataset(
        dataset.train,
        num_classes=dataset.num_classes,
        batch_size=batch,
        mode=preprocessing,
        augment=cfg.data.augment,
        seed=cfg.run.seed,
        soft_targets=cached.get("train"),
        mixup_alpha=cfg.data.mixup_alpha,
        cutmix_alpha=cfg.data.cutmix_alpha,
    )
    has_val = len(dataset.val) > 0
    val_ds = None
    if has_val:
        val_ds = eval_dataset(
            dataset.val.images,
            dataset.val.labels,
            num_classes=dataset.num_classes,
            batch_size=batch,
            mode=preprocessing,
            soft_targets=cached.get("val"),
        )
    steps_per_epoch = -(-len(dataset.train) // batch)
    multi_worker = placement.kind == "multi-worker"
    cfg = replace(cfg, train=resolve_epochs(cfg.train, steps_per_epoch))
    selection = resolve_selection(cfg.train, len(dataset.val))
    select_best = selection == "best"
    plan = {"epochs_planned": cfg.train.epochs, "warmup_epochs": cfg.train.warmup_epochs,
            "steps_planned": cfg.train.epochs * steps_per_epoch, "selection": selection}  # fmt: skip
    if cache_seconds is not None:
        plan["teacher_outputs_seconds"] = round(cache_seconds, 1)
    if multi_worker:  # the same number of steps on every worker: whole global batches of an endless stream
        steps_per_epoch = max(1, len(dataset.train) // batch)
        train_ds = shard_for_workers(train_ds.repeat(), by_data=True)
        val_ds = None if val_ds is None else shard_for_workers(val_ds, by_data=False)  # each worker: all of it
    keep_best = KeepBest() if multi_worker else None
    fit_phases(model, cfg, run, train_ds, val_ds, steps_per_epoch, callbacks, repeated=multi_worker, keep_best=keep_best,
               teacher=teacher, select_best=select_best)  # fmt: skip
    if keep_best is None:
        finish_training(model, run, select_best)
    elif keep_best.weights is not None:
        model.set_weights(keep_best.weights)
    if placement.kind != "none":
        plain = tf_keras.models.clone_model(model)  # outside the strategy: evaluated and saved by each worker alone
        plain.set_weights(model.get_weights())  # every worker reads in step (mirrored BatchNorm statistics)
        model = plain
    if cfg.train.batchnorm_reestimate and hasattr(dataset.train, "images"):  # a streamed split has none in memory
        # a random order: a folder's images come grouped by class, and one-class batches understate the variance
        chosen = np.random.default_rng(cfg.run.seed).permutation(len(dataset.train))[: cfg.train.batchnorm_reestimate]
        plan["batchnorm_reestimated_on"] = reestimate_batchnorm(model, dataset.train.images[chosen], mode=preprocessing,
                                                              batch_size=cfg.data.batch_size)  # fmt: skip
    return model, plan


def _finish_run(model, cfg: EdgeConfig, run: RunDir, dataset, preprocessing: str, weights_info, placement: Placement,
                teacher_info, plan):  # fmt: skip
    """Evaluate on the test split against the raw-pixel baseline, save the model and metrics, record the stage."""
    from edgecls.baseline import baseline_warning, raw_pixel_baseline
    from edgecls.metrics import evaluate_model
    from edgecls.models.stats import model_stats

    for layer in model.layers:  # saved fully trainable: later stages choose their own
        layer.trainable = True
    metrics = evaluate_model(model, dataset.test, dataset.class_names, mode=preprocessing, batch_size=128)
    baseline = raw_pixel_baseline(dataset.train, dataset.test, dataset.num_classes, seed=cfg.run.seed)
    warning = baseline_warning(metrics["test_accuracy"], baseline)
    rows = write_history_json(run)
    metrics.update(
        stage="finetune",
        strategy=cfg.train.strategy,
        **plan,
        baseline=baseline,
        baseline_test_accuracy=baseline.get("test_accuracy"),
        **placement.describe(),
        data_source=dataset.info["source"],
        weights=weights_info["source"],
        model_file=MODEL_FILE,
        **history_summary(rows, len(dataset.train)),
        **model_stats(model),
    )
    save_model_atomic(model, run.file(MODEL_FILE))
    save_metrics(run, metrics)
    clean_checkpoints(run)
    outputs = ["config.yaml", MODEL_FILE, HISTORY_CSV, "history.json", "metrics.json"]
    outputs += sorted(str(p.relative_to(run.path)) for p in run.file("logs").rglob("*") if p.is_file())
    return run.record_stage(
        "finetune",
        seed=cfg.run.seed,
        inputs={
            **_stage_inputs(cfg, dataset, weights_info, preprocessing),
            "placement": placement.describe(),
            "teacher": teacher_info,
        },  # fmt: skip
        outputs=outputs,
        metrics={
            k: metrics[k]
            for k in (
                "test_accuracy",
                "baseline_test_accuracy",
                "num_test_images",
                "epochs_run",
                "selection",
                "best_val_accuracy",
                "train_images_per_second",
                "params",
                "macs",
            )
        },
        warnings=dataset.warnings + weights_info.get("warnings", []) + ([warning] if warning else []),
    )
