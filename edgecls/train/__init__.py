"""The finetune stage: `run_finetune` fine-tunes a backbone on a data set into a run folder.

The parts it is built from, each importable on its own:

- `edgecls.train.plan`: the phases (head warm-up, then the unfrozen network), the trainable
  layers of a strategy, the learning-rate schedule and the optimizer.
- `edgecls.train.phases`: the Keras callbacks of a phase and the resumable fit loop.
- `edgecls.train.average`: the weights' and BatchNorm statistics' moving average (`train.ema_momentum`).
- `edgecls.train.teacher`: a finished run as a distillation teacher, and its cached outputs.
- `edgecls.train.batchnorm`: BatchNorm statistics re-estimated after training.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from edgecls.config import EdgeConfig
from edgecls.distribute import Placement, make_placement, scale_for_replicas, shard_for_workers
from edgecls.errors import ConfigError, StageError
from edgecls.run import RunDir, atomic_write_json, atomic_write_text
from edgecls.train.average import AverageWeightsIn, AverageWeightsOut, WeightAverage
from edgecls.train.batchnorm import reestimate_batchnorm
from edgecls.train.phases import (
    BEST_WEIGHTS,
    CHECKPOINTS,
    HISTORY_CSV,
    EpochTimer,
    KeepBest,
    fit_phases,
    load_weights,
    phase_callbacks,
    read_history,
)
from edgecls.train.plan import (
    MIN_SELECTION_IMAGES,
    Phase,
    compile_model,
    make_optimizer,
    make_schedule,
    plan_phases,
    resolve_epochs,
    resolve_selection,
    set_trainable,
    with_default_recipe,
)
from edgecls.train.teacher import cache_teacher_outputs, distiller, load_teacher

__all__ = [
    "BEST_WEIGHTS",
    "CHECKPOINTS",
    "HISTORY_CSV",
    "MIN_SELECTION_IMAGES",
    "MODEL_FILE",
    "AverageWeightsIn",
    "AverageWeightsOut",
    "EpochTimer",
    "KeepBest",
    "Phase",
    "WeightAverage",
    "cache_teacher_outputs",
    "compile_model",
    "distiller",
    "fit_phases",
    "load_teacher",
    "load_weights",
    "make_optimizer",
    "make_schedule",
    "phase_callbacks",
    "plan_phases",
    "read_history",
    "reestimate_batchnorm",
    "resolve_epochs",
    "resolve_selection",
    "run_finetune",
    "set_trainable",
    "with_default_recipe",
]

MODEL_FILE = "model.keras"


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


def finish_training(model, run: RunDir, select_best: bool) -> None:
    """Load the best validation weights when the run selects on them (else the last epoch's stay)."""
    if select_best and run.file(BEST_WEIGHTS).exists():
        load_weights(model, run.file(BEST_WEIGHTS))


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
    resolved = with_default_recipe(cfg, len(dataset.train))  # config.yaml keeps what was asked; a resume resolves again
    if not resume:
        run.create(force=force)
        atomic_write_text(run.file("config.yaml"), cfg.to_yaml() + _placement_note(resolved, placement))
    try:
        scaled = scale_for_replicas(resolved, placement.replicas)
        model, plan = _train(model, scaled, run, dataset, preprocessing, placement, callbacks, teacher)
        return _finish_run(model, resolved, run, dataset, preprocessing, weights_info, placement, teacher_info, plan)
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
    from edgecls.data.pipeline import endless, eval_dataset, training_dataset

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
    train_ds, steps_per_epoch = endless(train_ds, len(dataset.train), batch)
    multi_worker = placement.kind == "multi-worker"
    cfg = replace(cfg, train=resolve_epochs(cfg.train, steps_per_epoch))
    selection = resolve_selection(cfg.train, len(dataset.val))
    select_best = selection == "best"
    plan = {"epochs_planned": cfg.train.epochs, "warmup_epochs": cfg.train.warmup_epochs,
            "steps_planned": cfg.train.epochs * steps_per_epoch, "selection": selection, "batch_size": batch,
            "lr": cfg.train.lr}  # fmt: skip
    if cache_seconds is not None:
        plan["teacher_outputs_seconds"] = round(cache_seconds, 1)
    if multi_worker:  # the same number of steps on every worker: whole global batches of an endless stream
        steps_per_epoch = max(1, len(dataset.train) // batch)
        train_ds = shard_for_workers(train_ds, by_data=True)
        val_ds = None if val_ds is None else shard_for_workers(val_ds, by_data=False)  # each worker: all of it
    keep_best = KeepBest() if multi_worker else None
    fit_phases(model, cfg, run, train_ds, val_ds, steps_per_epoch, callbacks, keep_best=keep_best, teacher=teacher,
               select_best=select_best)  # fmt: skip
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
