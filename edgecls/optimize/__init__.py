"""The optimize stage: magnitude pruning, quantization-aware training, and both together.

The TFMOT pieces (pruning, QAT, pruning-preserving QAT) are small functions in
`tfmot.py`; this module trains them on a run's data and records each as a stage.
Per-tensor QAT (`granularity: per-tensor`) lives in `per_tensor.py`: BatchNorm
folding and a TFMOT scheme whose convolutions keep their weight quantizers.

A run folder gains one sub-folder per stage, each with `model.h5` (HDF5: tf-keras
cannot reload QAT models from `.keras`) and `metrics.json`:

    prune/   the pruned, stripped float model            (stage `prune`)
    qat/     QAT of the fine-tuned model                  (stage `qat`)
    pqat/    pruning-preserving QAT of the pruned model   (stage `pqat`)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from edgecls.config import MIXING, EdgeConfig, OptimizeConfig
from edgecls.errors import ConfigError, RunError
from edgecls.optimize.tfmot import (
    apply_pruning,
    apply_qat,
    freeze_batchnorm,
    gzip_bytes,
    kernel_sparsity,
    load_tfmot,
    strip,
    train_batchnorm,
    unsupported_for_qat,
)
from edgecls.run import RunDir, atomic_write_json

__all__ = [
    "apply_pruning",
    "apply_qat",
    "kernel_sparsity",
    "load_stage_model",
    "planned_stages",
    "qat_parent",
    "run_optimize",
    "strip",
    "unsupported_for_qat",
]

STAGE_DIRS = {"prune": "prune", "qat": "qat", "pqat": "pqat", "channels": "channels", "cqat": "cqat"}
QAT_STAGE = {"finetune": "qat", "prune": "pqat", "channels": "cqat"}  # the QAT stage of each parent
MODEL_FILE = "model.h5"


def load_stage_model(run: RunDir, stage: str, *, trust: bool = False):
    """The Keras model a finished stage saved, and its entry (`RunDir.load_model`: verified, no code run)."""
    return run.load_model(stage, trust=trust)


def _stage_dir(run: RunDir, stage: str, force: bool) -> Path:
    """An empty folder for `stage`, refusing to redo a finished stage without `force`."""
    import shutil

    if run.stage(stage) is not None and not force:
        what = "QAT asked for twice" if stage in ("qat", "pqat", "cqat") else "already pruned"
        raise RunError(f"run {run.path} already has a finished `{stage}` stage ({what}); pass `--force` to redo it.")
    folder = run.inside(STAGE_DIRS[stage])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _fit(model, cfg: EdgeConfig, data, *, epochs: int, lr: float, callbacks=(), teacher=None) -> float:
    """Fine-tune `model` for `epochs` at a cosine-decayed `lr` with the run's loss and augmentation.

    With a `teacher`, the loss is `edgecls.distill`'s mix of labels and the teacher's tempered outputs.

    Returns:
        The seconds training took (a stage's `train_seconds`, as fine-tuning records its own).
    """
    from edgecls.data.pipeline import endless, training_dataset
    from edgecls.models import get_spec
    from edgecls.train import compile_model, make_optimizer

    replicas = tf.distribute.get_strategy().num_replicas_in_sync  # under `optimize.distribute`'s scope
    batch, lr = cfg.data.batch_size * replicas, lr * replicas  # per-replica batch; the linear scaling rule
    dataset = training_dataset(
        data.train,
        num_classes=data.num_classes,
        batch_size=batch,
        mode=get_spec(cfg.model.name).preprocessing,
        augment=tuple(name for name in cfg.data.augment if name not in MIXING),  # a few epochs on real images
        seed=cfg.run.seed,
    )
    dataset, steps_per_epoch = endless(dataset, len(data.train), batch)
    schedule = tf_keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch)
    if teacher is not None:
        from edgecls.distill import Distiller

        opt = cfg.optimize
        model = Distiller(model, teacher, alpha=opt.distill_alpha, temperature=opt.temperature,
                          label_smoothing=cfg.train.label_smoothing)  # fmt: skip
        model.compile(optimizer=make_optimizer(cfg.train, schedule))
    else:
        compile_model(model, cfg.train, schedule)
    start = time.perf_counter()
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=list(callbacks), verbose=2)
    return round(time.perf_counter() - start, 1)


def _finish(run: RunDir, stage: str, model, cfg: EdgeConfig, data, extra: dict[str, Any], warnings: list[str]):
    """Evaluate, save model.h5 + metrics.json atomically, and record the stage."""
    from edgecls.metrics import evaluate_model
    from edgecls.models import get_spec

    folder = STAGE_DIRS[stage]
    mode = get_spec(cfg.model.name).preprocessing
    metrics = evaluate_model(model, data.test, data.class_names, mode=mode, batch_size=128)
    metrics.update(stage=stage, model_file=f"{folder}/{MODEL_FILE}", **extra)
    tmp = run.file(f"{folder}/.{MODEL_FILE}.tmp.h5")
    model.save(str(tmp), include_optimizer=False)
    tmp.replace(run.file(f"{folder}/{MODEL_FILE}"))
    atomic_write_json(run.file(f"{folder}/metrics.json"), metrics)
    headline = {k: metrics[k] for k in ("test_accuracy", "num_test_images") if k in metrics}
    headline.update({k: v for k, v in extra.items() if not isinstance(v, dict)})
    return run.record_stage(
        stage,
        seed=cfg.run.seed,
        inputs={
            "parent": extra["parent"],
            "parent_sha256": run.model_sha256(extra["parent"]),
            "optimize_config": cfg.to_dict()["optimize"],
        },  # fmt: skip
        outputs=[f"{folder}/{MODEL_FILE}", f"{folder}/metrics.json"],
        metrics=headline,
        warnings=warnings,
    )


def prunes_channels(opt: OptimizeConfig) -> bool:
    return opt.prune_channels is not None or bool(opt.channel_ratios)


def _evaluate(model, cfg: EdgeConfig, split) -> float:
    from edgecls.metrics import predict_scores
    from edgecls.models import get_spec

    scores = predict_scores(model, split.images, mode=get_spec(cfg.model.name).preprocessing, batch_size=128)
    return float(np.mean(scores.argmax(1) == split.labels))


def _fit_to_profile(run: RunDir, model, cfg: EdgeConfig, data_at, force: bool, callbacks) -> tuple[Any, dict[str, Any]]:
    """`--fit PROFILE`: measure every candidate, train the best fitting ones, keep the most accurate on validation.

    Args:
        data_at: The run's data decoded at an input size (`data_at(96)`), for candidates of another size.

    Returns:
        (model, channels-stage extra); at 0 % removed and the fine-tuned size, the model is the fine-tuned one.

    Raises:
        StageError: no candidate fits (before any training).
    """
    from edgecls.devices import load_profile
    from edgecls.errors import StageError
    from edgecls.models.resize import input_size_of
    from edgecls.models.stats import model_stats
    from edgecls.optimize import fit

    opt = cfg.optimize
    budget = fit.Budget.of(load_profile(opt.fit), flash_reserve=opt.fit_flash_reserve, ram_reserve=opt.fit_ram_reserve,
                           arena_margin=cfg.firmware.arena_margin)  # fmt: skip
    own = input_size_of(model)
    sizes = sorted(opt.fit_input_sizes or fit.default_sizes(own), reverse=True)
    smallest = fit.measure(model, fit.RATIOS[-1], opt.channel_criterion, budget, opt.channel_round_to, sizes[-1])
    # if that does not fit, nothing does
    if not smallest.fits:
        raise StageError(
            f"no model fits `{budget.profile}`: even with {smallest.ratio:.0%} of the channels removed at {smallest.input_size} px,"
            f" {smallest.why_not}; choose a smaller alpha, or a larger device."
        )
    grid = [(r, size) for size in sizes for r in fit.RATIOS if (r, size) != (fit.RATIOS[-1], sizes[-1])]
    candidates = fit.measure_all(model, grid, opt.channel_criterion, budget, opt.channel_round_to) + [smallest]
    other = fit.measure_widths(cfg.model.name, fit.other_widths(cfg.model.name, cfg.model.alpha), sizes,
                                model.output_shape[-1], budget)  # fmt: skip
    if data_at(own).val is None or len(data_at(own).val) == 0:
        raise StageError("`--fit` chooses by validation accuracy, and this run has no validation split (data.val_fraction 0).")
    best = None
    fitting = fit.to_train(candidates, len(candidates))  # most MACs first
    if (fitting[0].ratio, fitting[0].input_size) == (0, own):  # the fine-tuned model fits as it is
        fitting = fitting[:1]
    kept = 0
    for candidate in fitting:
        if kept >= opt.fit_trials:
            break
        data = data_at(candidate.input_size)
        thin, widths = fit.cut(model, candidate.ratio, candidate.input_size, opt.channel_criterion, opt.channel_round_to)
        if thin is not model:
            train_batchnorm(thin)
            teacher = model if opt.channel_teacher else None
            _fit(thin, cfg, data, epochs=opt.epochs_of("channels"), lr=opt.lr_of("channels"), callbacks=callbacks,
                 teacher=teacher)  # fmt: skip
            fit.remeasure(candidate, thin, budget)  # trained weights convert to a different size (measured: +6 %)
        candidate.trained = True
        if not candidate.fits:
            continue
        kept += 1
        candidate.val_accuracy = _evaluate(thin, cfg, data.val)
        if best is None or candidate.val_accuracy > best[0].val_accuracy:
            best = (candidate, thin, widths)
    if best is None:
        raise StageError(f"no trained candidate still fits `{budget.profile}`: " + "; ".join(
            f"{c.ratio:.0%} at {c.input_size} px: {c.why_not}" for c in candidates if c.trained))  # fmt: skip
    chosen, thin, widths = best
    chosen.chosen = True
    folder = run.inside(f"fit/{budget.profile}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "fit.json", fit.as_dict(candidates, budget, other))
    (folder / "fit.md").write_text(fit.table(candidates, budget, other, cfg.model.name))
    run.record_stage(f"fit/{budget.profile}", seed=cfg.run.seed, inputs={"profile": opt.fit},
                     outputs=[f"fit/{budget.profile}/fit.json", f"fit/{budget.profile}/fit.md"],
                     metrics=fit.as_dict(candidates, budget, other), warnings=[])  # fmt: skip
    _stage_dir(run, "channels", force)  # at 0 % and its own size it holds the fine-tuned model: it already fits
    before, after = model_stats(model), model_stats(thin)
    hint = fit.wider_hint(other, chosen, cfg.model.name)
    extra = {
        "parent": "finetune", "prune_channels": chosen.ratio, "input_size": chosen.input_size,
        "criterion": opt.channel_criterion, "teacher": "finetune" if opt.channel_teacher else None, "fit": budget.profile,
        "fit_table": f"fit/{budget.profile}/fit.md", "widths": widths,
        "macs": after["macs"], "macs_before": before["macs"], "params": after["params"], "params_before": before["params"],
    }  # fmt: skip
    return thin, extra | ({"wider_model_fits": hint} if hint else {})


def planned_stages(opt: OptimizeConfig) -> list[str]:
    """The stages `opt` writes, in order: `prune` or `channels`, then `qat`, `pqat` or `cqat`."""
    stages = [opt.pruning_stage] if opt.pruning_stage else []
    if opt.qat:
        stages.append(QAT_STAGE[qat_parent(opt)])
    return stages


def qat_parent(opt: OptimizeConfig) -> str:
    """The stage QAT trains: the one this call prunes, else `optimize.qat_from` (`auto`: `finetune`)."""
    return opt.pruning_stage or ("finetune" if opt.qat_from == "auto" else opt.qat_from)


def _prune_channels(run: RunDir, model, cfg: EdgeConfig, data, force: bool, callbacks) -> tuple[Any, dict[str, Any]]:
    """Stage `channels`: remove channels (`optimize.channels`), fine-tune to recover, record widths and MACs."""
    from edgecls.models.stats import model_stats
    from edgecls.optimize.channels import channel_groups, prune_channels

    opt = cfg.optimize
    _stage_dir(run, "channels", force)
    default = opt.prune_channels or 0.0
    ratios = {group.producer: default for group in channel_groups(model)} | dict(opt.channel_ratios or {})
    thin, widths = prune_channels(model, ratios, opt.channel_criterion, opt.channel_round_to)
    train_batchnorm(thin)  # each consumer now sees fewer input channels: its BatchNorm statistics must follow
    before, after = model_stats(model), model_stats(thin)
    teacher = model if opt.channel_teacher else None
    seconds = _fit(thin, cfg, data, epochs=opt.epochs_of("channels"), lr=opt.lr_of("channels"), callbacks=callbacks,
                   teacher=teacher)  # fmt: skip
    extra = {
        "parent": "finetune",
        "train_seconds": seconds,
        "prune_channels": opt.prune_channels,
        "criterion": opt.channel_criterion,
        "round_to": opt.channel_round_to,
        "teacher": "finetune" if opt.channel_teacher else None,
        "widths": widths,
        "macs": after["macs"],
        "macs_before": before["macs"],
        "params": after["params"],
        "params_before": before["params"],
    }
    return thin, extra


def run_optimize(
    run_path: str | Path, opt: OptimizeConfig, *, force: bool = False, callbacks=(), trust: bool = False
) -> list[dict]:
    """Prune and/or quantization-aware train a finished fine-tuning run.

    `prune` alone writes stage `prune`; `qat` alone writes `qat` (from the
    fine-tuned model); both write `prune` then `pqat` (prune-preserving QAT of
    the pruned model). Metrics are on the run's full test split.

    Args:
        run_path: A run folder with a finished `finetune` stage.
        opt: What to do (`OptimizeConfig`).
        force: Redo a stage that already finished.
        callbacks: Extra Keras callbacks for every training call (tests).
        trust: Load a model with Lambda layers (`--trust-run`); hashes are checked anyway.

    Returns:
        The manifest entries written, in order.

    Raises:
        RunError: no finished fine-tuning, or a stage asked for twice without `force`.
        ConfigError: nothing asked, a layer TFMOT cannot quantize, or `multi-worker` distribution.
    """
    if opt.prune is None and not opt.qat and not prunes_channels(opt) and not opt.fit:
        raise ConfigError("nothing to do: pass `--prune SPARSITY`, `--prune-channels SHARE`, `--fit PROFILE` and/or `--qat`.")
    if opt.distribute == "multi-worker":
        raise ConfigError(
            "`optimize.distribute` is `none`, `mirrored` or `auto`: edgecls optimize trains on one machine (its"
            " stages are short, and a TFMOT-wrapped model is saved by one process); fine-tune on the cluster instead."
        )
    from edgecls.distribute import make_placement

    placement = make_placement(opt.distribute)
    with placement.strategy.scope():  # TFMOT's wrappers, their variables and the optimizer are mirrored
        return _optimize(run_path, opt, force=force, callbacks=callbacks, trust=trust)


def _optimize(run_path: str | Path, opt: OptimizeConfig, *, force: bool, callbacks, trust: bool) -> list[dict]:
    import dataclasses

    from edgecls.config import DEFAULT_BATCH_SIZE, load_config
    from edgecls.data import load_dataset

    run = RunDir(run_path)
    run.finetune_record()  # a run whose finetune entry is not edgecls' is refused before any work
    model, entry = run.load_model("finetune", trust=trust)
    cfg = load_config(run.file("config.yaml"))
    data_cfg = dataclasses.replace(cfg.data, batch_size=cfg.data.batch_size or DEFAULT_BATCH_SIZE)  # as measured
    cfg = dataclasses.replace(cfg, data=data_cfg, optimize=opt)
    for stage in planned_stages(opt):
        if run.stage(stage) is not None and not force:
            _stage_dir(run, stage, force)  # raises the clear error before any work
    continued = qat_parent(opt) if opt.qat and opt.pruning_stage is None and qat_parent(opt) != "finetune" else None
    if continued:
        run.require_stage(continued)  # `qat_from`: the stage an earlier call wrote must exist before any work
    freeze_batchnorm(model)
    if opt.qat:
        apply_qat(model, skip_unsupported=opt.skip_unsupported)  # fail early on unsupported layers
    data_cfg = dataclasses.replace(cfg.data, limit_per_class=opt.limit_per_class or cfg.data.limit_per_class)
    decoded = {}

    def data_at(size: int):
        """The run's data at an input size, decoded once (`--fit` may choose another size than the fine-tuned one)."""
        if size not in decoded:
            decoded[size] = load_dataset(data_cfg, size, cfg.run.seed)
        return decoded[size]

    data = data_at(cfg.model.input_size)
    dense = kernel_sparsity(model, opt.prune_layers)
    dense_gzip = gzip_bytes(model)
    entries, parent, parent_name = [], model, "finetune"

    if opt.pruning_stage == "prune":
        _stage_dir(run, "prune", force)
        steps = opt.epochs_of("prune") * -(-len(data.train) // cfg.data.batch_size)
        pruning = apply_pruning(model, opt.prune, steps, kinds=opt.prune_layers, structured=opt.structured)
        update = load_tfmot().sparsity.keras.UpdatePruningStep()
        seconds = _fit(pruning, cfg, data, epochs=opt.epochs_of("prune"), lr=opt.lr_of("prune"), callbacks=[update, *callbacks])
        parent = strip(pruning)
        sparsity = kernel_sparsity(parent, opt.prune_layers)
        extra = {
            "parent": "finetune",
            "train_seconds": seconds,
            "target_sparsity": opt.prune,
            "structured": "2:4" if opt.structured else None,
            "sparsity": sparsity["overall"],
            "sparsity_per_layer": sparsity["per_layer"],
            "gzip_bytes": gzip_bytes(parent),
            "gzip_bytes_dense": dense_gzip,
            "dense_sparsity": dense["overall"],
        }
        entries.append(_finish(run, "prune", parent, cfg, data, extra, data.warnings))
        parent_name = "prune"

    if opt.pruning_stage == "channels":
        if opt.fit:
            parent, extra = _fit_to_profile(run, model, cfg, data_at, force, callbacks)
            data = data_at(extra["input_size"])  # the chosen model's size: its test metrics and QAT use it
            decoded.clear()  # the other sizes' images are no longer needed
            decoded[extra["input_size"]] = data
        else:
            parent, extra = _prune_channels(run, model, cfg, data, force, callbacks)
        entries.append(_finish(run, "channels", parent, cfg, data, extra, data.warnings))
        parent_name = "channels"

    if continued:
        from edgecls.models.resize import input_size_of

        parent, continued_entry = run.load_model(continued, trust=trust)
        parent_name, data = continued, data_at(input_size_of(parent))
    if opt.qat:
        stage = QAT_STAGE[parent_name]
        _stage_dir(run, stage, force)
        per_tensor = opt.granularity == "per-tensor"
        freeze_batchnorm(parent)  # a channel-pruned model recovered with BatchNorm training
        qat = apply_qat(parent, preserve_sparsity=stage == "pqat", per_tensor=per_tensor, skip_unsupported=opt.skip_unsupported)
        seconds = _fit(qat, cfg, data, epochs=opt.epochs_of(stage), lr=opt.lr_of(stage), callbacks=callbacks)
        sparsity = kernel_sparsity(qat, opt.prune_layers)
        warnings = [f"left in float: {name} ({kind})" for name, kind in unsupported_for_qat(parent)]
        extra = {
            "parent": parent_name,
            "train_seconds": seconds,
            "granularity": opt.granularity,
            "sparsity": sparsity["overall"],
            "sparsity_per_layer": sparsity["per_layer"],
            "gzip_bytes": gzip_bytes(qat),
            "gzip_bytes_dense": dense_gzip,
        }
        if stage == "pqat":
            pruned = (entries[-1] if entries else continued_entry)["metrics"]["sparsity"]
            extra["sparsity_preserved"] = abs(sparsity["overall"] - pruned) <= 0.01
            if not extra["sparsity_preserved"]:
                warnings.append(f"PQAT changed the sparsity from {pruned:.4f} to {sparsity['overall']:.4f}")
        entries.append(_finish(run, stage, qat, cfg, data, extra, warnings))
    return entries
