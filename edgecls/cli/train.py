"""`edgecls finetune` and `edgecls optimize`: the training stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgecls.cli.common import (
    ConfigOpt,
    DebugOpt,
    SetOpt,
    TrustOpt,
    command,
    flag_name,
    import_tensorflow,
    load_cli_config,
    print_metrics,
    stage_config,
    warn,
)
from edgecls.errors import StageInterruptedError


@command
def finetune(
    config: ConfigOpt = None,
    data: Annotated[str | None, typer.Option(help="`cifar10`, an image folder, or a .tar.gz/.zip of one.")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone name (see `edgecls models`).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Width multiplier.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Square input side in pixels.")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet | none | PATH to a .h5 file.")] = None,
    strategy: Annotated[str | None, typer.Option(help="frozen | partial | full.")] = None,
    unfreeze: Annotated[int | None, typer.Option(help="Top blocks to unfreeze with partial.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs, warm-up included (default: by data size).")] = None,
    warmup_epochs: Annotated[int | None, typer.Option(help="Head-only epochs first.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default: by data size).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw | sgd.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate after unfreezing (default: by data size).")] = None,
    head_lr: Annotated[float | None, typer.Option(help="Learning rate of the head phase.")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine | step | constant.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Decoupled weight decay.")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing.")] = None,
    ema_momentum: Annotated[
        float | None, typer.Option(help="Momentum of a moving average of the weights, kept instead of them (0: none).")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout before the classifier.")] = None,
    augment: Annotated[str | None, typer.Option(help="Comma list of crop,flip,color,mixup,cutmix, or none.")] = None,
    limit_per_class: Annotated[int | None, typer.Option(help="At most N training images per class.")] = None,
    test_limit_per_class: Annotated[int | None, typer.Option(help="At most N test images per class.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share of train.")] = None,
    on_bad_image: Annotated[str | None, typer.Option(help="skip | error.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    distribute: Annotated[
        str | None, typer.Option(help="auto | none | mirrored (all local GPUs) | multi-worker (TF_CONFIG).")
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="A finished run whose model teaches this one (distillation).")] = None,
    distill_alpha: Annotated[float | None, typer.Option(help="Weight of the hard labels (1 - alpha: the teacher).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Distillation temperature.")] = None,
    distill_targets: Annotated[
        str | None, typer.Option(help="online (teacher on every batch) | cached (teacher once, before training).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name (default <model>-<strategy>).")] = None,
    runs_dir: Annotated[str | None, typer.Option(help="Parent folder of runs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run.")] = False,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune an ImageNet-pretrained backbone into runs/<name>/.

    Unset, --batch-size, --lr and --epochs follow the training split's size:
    from 16,000 images: 128, 3e-3 and 12 epochs;
    below: 64, 2e-3 and 10 epochs, or more for at least 1,500 steps.
    """
    from edgecls.config import load_config

    flags = {
        "data.source": data,
        "model.name": model,
        "model.alpha": alpha,
        "model.input_size": input_size,
        "model.weights": weights,
        "model.dropout": dropout,
        "train.strategy": strategy,
        "train.unfreeze": unfreeze,
        "train.epochs": epochs,
        "train.warmup_epochs": warmup_epochs,
        "train.optimizer": optimizer,
        "train.lr": lr,
        "train.head_lr": head_lr,
        "train.schedule": schedule,
        "train.weight_decay": weight_decay,
        "train.label_smoothing": label_smoothing,
        "train.ema_momentum": ema_momentum,
        "data.batch_size": batch_size,
        "data.augment": augment,
        "data.limit_per_class": limit_per_class,
        "data.test_limit_per_class": test_limit_per_class,
        "data.val_fraction": val_fraction,
        "data.on_bad_image": on_bad_image,
        "run.seed": seed,
        "train.distribute": distribute,
        "train.teacher": teacher,
        "train.distill_alpha": distill_alpha,
        "train.temperature": temperature,
        "train.distill_targets": distill_targets,
        "run.name": name,
        "run.runs_dir": runs_dir,
    }
    cfg = load_cli_config(config, flags, set_)
    if resume:
        given = [flag_name(k) for k, v in flags.items() if v is not None and k not in ("run.name", "run.runs_dir")]
        if given or set_ or config is not None:
            drop = given[0] if given else ("--set" if set_ else "--config")
            raise typer.BadParameter(f"`--resume` continues the run's saved config; drop {drop}.")
        saved = cfg.run_path / "config.yaml"
        if saved.is_file():
            cfg = load_config(saved)
    import_tensorflow()
    from edgecls.train import run_finetune

    try:
        entry = run_finetune(cfg, force=force, resume=resume)
    except KeyboardInterrupt:
        raise StageInterruptedError(
            f"interrupted; continue with `edgecls finetune --name {cfg.run_name} --runs-dir {cfg.run.runs_dir} --resume`."
        ) from None
    for line in entry["warnings"]:
        warn(line)
    print_metrics(f"finetune: {cfg.run_path}", entry["metrics"])


@command
def optimize(
    run: Annotated[Path, typer.Argument(help="A run folder with a finished finetune stage.")],
    prune: Annotated[float | None, typer.Option(help="Target sparsity in (0, 1).")] = None,
    structured: Annotated[bool, typer.Option("--structured-2-4", help="2:4 structured sparsity.")] = False,
    prune_layers: Annotated[str | None, typer.Option(help="Comma list of conv, dense.")] = None,
    qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware training (prune-preserving).")] = False,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs of each step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate while pruning.")] = None,
    qat_lr: Annotated[float | None, typer.Option(help="Peak learning rate of QAT.")] = None,
    qat_from: Annotated[
        str | None, typer.Option(help="QAT of: auto | finetune | prune | channels (a stage an earlier call wrote).")
    ] = None,
    skip_unsupported: Annotated[
        bool, typer.Option("--skip-unsupported", help="Keep layers TFMOT cannot quantize in float.")
    ] = False,
    limit_per_class: Annotated[int | None, typer.Option(help="At most N training images per class.")] = None,
    granularity: Annotated[str | None, typer.Option(help="QAT weight scales: per-channel | per-tensor.")] = None,
    prune_channels: Annotated[
        float | None, typer.Option(help="Share of each convolution's output channels to remove (stage channels).")
    ] = None,
    channel_criterion: Annotated[str | None, typer.Option(help="Channel ranking: l1 | l2 | bn.")] = None,
    fit: Annotated[
        str | None,
        typer.Option(help="Device profile: channel share and input size that fit it (MCU: flash, arena; Linux: size, p50, RAM)."),
    ] = None,
    distribute: Annotated[str | None, typer.Option(help="auto | none | mirrored (all local GPUs).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo a finished stage.")] = False,
    trust_run: TrustOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Prune weights or channels and/or quantization-aware train a fine-tuned run (stages prune, channels, qat, pqat, cqat)."""
    flags = {
        "optimize.prune": prune,
        "optimize.structured": structured or None,
        "optimize.prune_layers": prune_layers,
        "optimize.qat": qat or None,
        "optimize.epochs": epochs,
        "optimize.lr": lr,
        "optimize.qat_lr": qat_lr,
        "optimize.qat_from": qat_from,
        "optimize.skip_unsupported": skip_unsupported or None,
        "optimize.limit_per_class": limit_per_class,
        "optimize.granularity": granularity,
        "optimize.prune_channels": prune_channels,
        "optimize.channel_criterion": channel_criterion,
        "optimize.fit": fit,
        "optimize.distribute": distribute,
    }
    opt = stage_config(run, config, flags, set_).optimize
    import_tensorflow()
    from edgecls.optimize import run_optimize

    for entry in run_optimize(run, opt, force=force, trust=trust_run):
        for line in entry["warnings"]:
            warn(line)
        print_metrics(f"optimize: {run}", entry["metrics"])
