"""Every bad input: one line on stderr, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import shutil

import pytest

from conftest import run_cli


def finetune_args(tmp_path, data, *extra):
    return ["finetune", "--data", data, "--runs-dir", tmp_path / "runs", "--weights", "none",
            "--input-size", "32", "--epochs", "1", *extra]  # fmt: skip


def assert_usage_error(code, out, err, tmp_path, message):
    assert code == 2, err
    assert err.startswith("edgecls: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert message in err, err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a half-written run folder"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "mobilenet_v9"], "`--model` must be one of mobilenet, mobilenet_v2"),
        (["--alpha", "0.1"], "`--alpha` must be in [0.25, 1.0] for mobilenet; got 0.1."),
        (["--model", "resnet50", "--alpha", "0.5"], "`--alpha` must be 1.0 for resnet50"),
        (["--input-size", "500"], "`--input-size` must be in [32, 224] for mobilenet; got 500."),
        (["--strategy", "partial", "--unfreeze", "40"], "`--unfreeze` must be in [1, 13] for mobilenet"),
        (["--strategy", "everything"], "`--strategy` must be one of frozen, partial, full"),
        (["--epochs", "0"], "`--epochs` must be a positive integer; got 0."),
        (["--ema-momentum", "1.0"], "`--ema-momentum` must be in [0, 1); got 1.0."),
        (["--set", "train.epochz=3"], "unknown config key `train.epochz`"),
        (["--set", "nonsense"], "`--set` takes section.key=value"),
        (["--epochs", "many"], "Invalid value for '--epochs'"),
        (["--weights", "/no/such.h5"], "`--weights` must be `imagenet`, `none` or an existing .h5 file"),
    ],
)
def test_bad_options(tmp_path, image_folder, capsys, extra, message):
    args = finetune_args(tmp_path, image_folder, *extra)
    code, out, err = run_cli(args, capsys)
    assert_usage_error(code, out, err, tmp_path, message)


def test_bad_config_file_key(tmp_path, image_folder, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  learning_rate: 0.1\n")
    code, out, err = run_cli(finetune_args(tmp_path, image_folder, "--config", config), capsys)
    assert_usage_error(code, out, err, tmp_path, "unknown config key `train.learning_rate`")


def test_missing_and_empty_data(tmp_path, capsys):
    code, out, err = run_cli(finetune_args(tmp_path, tmp_path / "nowhere"), capsys)
    assert_usage_error(code, out, err, tmp_path, "does not exist")
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(finetune_args(tmp_path, tmp_path / "empty"), capsys)
    assert_usage_error(code, out, err, tmp_path, "no images found in")


def test_test_class_missing(tmp_path, image_folder, capsys):
    shutil.rmtree(image_folder / "test" / "red")
    code, out, err = run_cli(finetune_args(tmp_path, image_folder), capsys)
    assert_usage_error(code, out, err, tmp_path, "class folder `test/red` is missing")


def test_corrupt_image_with_on_bad_image_error(tmp_path, image_folder, capsys):
    (image_folder / "train" / "red" / "broken.png").write_bytes(b"\x89PNG broken")
    code, out, err = run_cli(finetune_args(tmp_path, image_folder, "--on-bad-image", "error"), capsys)
    assert_usage_error(code, out, err, tmp_path, "cannot decode train/red/broken.png as an image")


def test_weights_for_another_architecture(tmp_path, image_folder, capsys):
    from edgecls.models import create_model

    model, _ = create_model("mobilenet_v2", input_size=32, weights="none")
    path = tmp_path / "v2.h5"
    model.save_weights(str(path))
    code, out, err = run_cli(finetune_args(tmp_path, image_folder, "--weights", path), capsys)
    assert_usage_error(code, out, err, tmp_path, "does not fit mobilenet (alpha 0.25)")


def test_unwritable_runs_dir(tmp_path, image_folder, capsys):
    args = finetune_args(tmp_path, image_folder)
    args[args.index("--runs-dir") + 1] = "/proc/edgecls-runs"
    code, out, err = run_cli(args, capsys)
    assert_usage_error(code, out, err, tmp_path, "cannot write to /proc")


def test_evaluate_needs_a_finished_run(tmp_path, capsys):
    code, out, err = run_cli(["evaluate", tmp_path / "nothing"], capsys)
    assert_usage_error(code, out, err, tmp_path, "does not exist")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("{}")
    code, out, err = run_cli(["evaluate", tmp_path / "half"], capsys)
    assert_usage_error(code, out, err, tmp_path, "has no finished `finetune` stage")


def test_resume_refuses_new_options(tmp_path, image_folder, capsys):
    code, out, err = run_cli(finetune_args(tmp_path, image_folder, "--resume"), capsys)
    assert_usage_error(code, out, err, tmp_path, "`--resume` continues the run's saved config")
