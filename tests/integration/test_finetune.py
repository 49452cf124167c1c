"""End to end: `edgecls finetune` on generated images, resume, and the real CIFAR-10 check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from edgecls.config import load_config
from edgecls.run import RunDir, sha256_file

pytestmark = pytest.mark.slow


def test_finetune_cli_writes_a_complete_run(tmp_path, image_folder, capsys):
    args = ["finetune", "--data", image_folder, "--runs-dir", tmp_path, "--name", "tiny", "--weights", "none",
            "--input-size", "32", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "8",
            "--val-fraction", "0.25", "--strategy", "partial", "--unfreeze", "2"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    run = RunDir(tmp_path / "tiny")
    entry = run.require_stage("finetune")
    for name, recorded in entry["outputs"].items():
        assert sha256_file(run.file(name)) == recorded["sha256"], name
    assert {"config.yaml", "model.keras", "history.csv", "history.json", "metrics.json"} <= set(entry["outputs"])
    assert any(name.startswith("logs/") for name in entry["outputs"]), "TensorBoard logs"
    assert not run.file("checkpoints").exists()
    metrics = json.loads(run.file("metrics.json").read_text())
    assert metrics["num_test_images"] == 18 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert np.array(metrics["confusion_matrix"]).sum() == 18
    assert set(metrics["per_class_accuracy"]) == {"blue", "green", "red"}
    assert metrics["epochs_run"] == 3 and metrics["weights"] == "none"
    history = json.loads(run.file("history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2]
    cfg = load_config(run.file("config.yaml"))
    assert (cfg.train.strategy, cfg.train.unfreeze, cfg.model.input_size) == ("partial", 2, 32)
    assert entry["inputs"]["class_names"] == ["blue", "green", "red"]
    assert "test_accuracy" in out

    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already exists: pass `--force`" in err

    code, out, err = run_cli(["evaluate", tmp_path / "tiny"], capsys)
    assert code == 0, err
    assert f"{metrics['test_accuracy']:.4f}" in out  # same model, same test split, same number


class StopAt:
    """A Keras callback that interrupts training when `epoch` begins, as Ctrl-C would."""

    def __new__(cls, epoch):
        import tf_keras

        class _Stop(tf_keras.callbacks.Callback):
            def on_epoch_begin(self, current, logs=None):
                if current == epoch:
                    raise KeyboardInterrupt

        return _Stop()


def test_resume_after_interrupt(tmp_path, image_folder):
    from edgecls.train import HISTORY_CSV, read_history, run_finetune

    cfg = load_config(overrides={
        "data.source": str(image_folder), "data.batch_size": 8, "model.weights": "none",
        "model.input_size": 32, "train.strategy": "full", "train.epochs": 4, "train.warmup_epochs": 1,
        "train.patience": 0, "train.ema_momentum": 0.9, "run.runs_dir": str(tmp_path), "run.name": "killed",
    })  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_finetune(cfg, callbacks=[StopAt(2)])
    run = RunDir(cfg.run_path)
    assert run.stage("finetune") is None, "an interrupted run must not look complete"
    before = read_history(run.file(HISTORY_CSV))
    assert [row["epoch"] for row in before] == [0, 1]
    assert run.file("checkpoints/head.weights.h5").exists()

    entry = run_finetune(load_config(run.file("config.yaml")), resume=True)
    after = read_history(run.file(HISTORY_CSV))
    assert [row["epoch"] for row in after] == [0, 1, 2, 3]
    assert after[:2] == before, "finished epochs are not trained again"
    assert entry["metrics"]["epochs_run"] == 4
    assert not run.file("checkpoints").exists()


def test_same_seed_same_result(tmp_path, image_folder):
    """Two runs with one seed train alike, mixup and CutMix included: every random draw is stateless in the seed."""
    from edgecls.train import run_finetune

    results = []
    for name in ("a", "b"):
        cfg = load_config(overrides={
            "data.source": str(image_folder), "data.batch_size": 8, "model.weights": "none",
            "model.input_size": 32, "train.strategy": "full", "train.epochs": 2, "train.warmup_epochs": 1,
            "data.augment": "crop,flip,mixup,cutmix", "run.runs_dir": str(tmp_path), "run.name": name,
        })  # fmt: skip
        run_finetune(cfg)
        results.append(json.loads((tmp_path / name / "history.json").read_text()))
    for first, second in zip(*results, strict=False):
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-3)


@pytest.mark.shared
def test_imagenet_weights_beat_random_init_on_real_cifar(tmp_path, shared_cifar, keras_home):
    """Frozen backbone, 200 images per class, 1 epoch, full 10,000-image test set."""
    from edgecls.train import run_finetune

    accuracy = {}
    for weights in ("imagenet", "none"):
        cfg = load_config(overrides={
            "data.source": str(shared_cifar), "data.limit_per_class": 200, "model.weights": weights,
            "train.strategy": "frozen", "train.epochs": 1, "run.runs_dir": str(tmp_path), "run.name": weights,
        })  # fmt: skip
        entry = run_finetune(cfg)
        assert entry["metrics"]["num_test_images"] == 10000
        accuracy[weights] = entry["metrics"]["test_accuracy"]
    print(f"frozen 1 epoch, 2000 images: imagenet {accuracy['imagenet']:.4f}, random {accuracy['none']:.4f}")
    assert accuracy["imagenet"] >= 0.45
    assert accuracy["none"] <= 0.2
    assert accuracy["imagenet"] - accuracy["none"] >= 0.3


def test_default_epochs_follow_the_step_budget_and_the_baseline_is_recorded(tmp_path, image_folder, capsys):
    """No --epochs: a small data set trains ceil(min_steps / steps per epoch) epochs and keeps the last one."""
    args = ["finetune", "--data", image_folder, "--runs-dir", tmp_path, "--name", "budget", "--weights", "none",
            "--input-size", "32", "--batch-size", "8", "--set", "train.min_steps=130",
            "--set", "train.batchnorm_reestimate=20"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    run = RunDir(tmp_path / "budget")
    metrics = json.loads(run.file("metrics.json").read_text())
    train_images = run.require_stage("finetune")["inputs"]["data"]["sizes"]["train"]
    steps_per_epoch = -(-train_images // 8)
    expected = max(10, -(-130 // steps_per_epoch))
    assert expected > 10, "the fixture must be small enough for the budget to matter"
    assert metrics["epochs_run"] == metrics["epochs_planned"] == expected
    assert metrics["warmup_epochs"] == round(expected / 10)
    assert metrics["selection"] == "last"  # a handful of validation images: no selection on them
    assert not run.file("checkpoints").exists()
    baseline = metrics["baseline"]
    assert baseline["kind"] == "softmax regression on raw pixels" and baseline["train_images"] == train_images
    assert 0.0 <= baseline["test_accuracy"] <= 1.0 and metrics["baseline_test_accuracy"] == baseline["test_accuracy"]
    assert load_config(run.file("config.yaml")).train.epochs is None  # the saved config stays the user's
    assert metrics["batchnorm_reestimated_on"] == 16  # 20 images asked, whole batches of 8 used
