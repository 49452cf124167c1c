"""`edgecls finetune --teacher RUN` (issue 10): knowledge distillation from a finished run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_error, cifar_folder, run_cli
from edgecls.run import sha256_file

pytestmark = pytest.mark.slow


def _weights(run) -> list[np.ndarray]:
    import tf_keras

    return tf_keras.models.load_model(run / "model.keras", compile=False).get_weights()


def test_student_with_a_teacher_records_it_and_learns_differently(tmp_path, shared_cifar, keras_home, capsys):
    folder = cifar_folder(shared_cifar, tmp_path / "cifar", train=20, test=5)
    base = [
        "finetune",
        "--data",
        folder,
        "--runs-dir",
        tmp_path,
        "--strategy",
        "frozen",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--seed",
        "1",
    ]  # fmt: skip  (ImageNet features: the head really learns)
    # the teacher has another input size (48 px): the distiller resizes the batch for it
    assert run_cli([*base, "--name", "teacher", "--input-size", "48"], capsys)[0] == 0
    distil = ["--teacher", tmp_path / "teacher", "--distill-alpha", "0.3"]
    runs = (("plain", []), ("student", distil), ("cached", [*distil, "--distill-targets", "cached"]))
    for name, extra in runs:
        code, out, err = run_cli([*base, "--name", name, "--input-size", "32", *extra], capsys)
        assert code == 0, err
    entry = json.loads((tmp_path / "student" / "manifest.json").read_text())["stages"]["finetune"]
    teacher = entry["inputs"]["teacher"]
    assert teacher["model_sha256"] == sha256_file(tmp_path / "teacher" / "model.keras")
    assert (teacher["alpha"], teacher["temperature"], teacher["input_size"]) == (0.3, 4.0, 48)
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["stages"]["finetune"]["inputs"]["teacher"] is None
    plain, student = _weights(tmp_path / "plain"), _weights(tmp_path / "student")
    assert [w.shape for w in plain] == [w.shape for w in student], "the student is a plain model of the same shape"
    head = -2  # the Dense kernel, the one layer a frozen run trains
    assert plain[head].ndim == 2 and all(np.array_equal(a, b) for a, b in zip(plain[:head], student[:head], strict=True))
    assert np.abs(plain[head] - student[head]).max() > 1e-3, "the same start, seed and batches: only the teacher differs"
    # cached targets: the teacher ran once before training (on un-augmented images), and it still teaches
    cached = json.loads((tmp_path / "cached" / "manifest.json").read_text())["stages"]["finetune"]
    assert (cached["inputs"]["teacher"]["targets"], teacher["targets"]) == ("cached", "online")
    # ... and both modes scored the (never augmented) validation images once, before training
    for name in ("cached", "student"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["teacher_outputs_seconds"] > 0
    assert np.abs(plain[head] - _weights(tmp_path / "cached")[head]).max() > 1e-3

    # a teacher that is not a finished run is refused before anything is written
    code, out, err = run_cli([*base, "--data", tmp_path / "cifar", "--name", "mismatch", "--input-size", "32",
                              "--teacher", tmp_path / "nothing-here"], capsys)  # fmt: skip
    assert_one_error(code, err, 2, "nothing-here")
    assert not (tmp_path / "mismatch").exists()
    # cached targets need the images in memory: a streamed data set is refused before anything is read or written
    code, out, err = run_cli([*base, "--name", "streamed", "--input-size", "32", *distil, "--distill-targets", "cached",
                              "--set", "data.mode=stream"], capsys)  # fmt: skip
    assert_one_error(code, err, 2, "`--distill-targets` must be `online` with a streamed data set")
    assert not (tmp_path / "streamed").exists()


def test_a_teacher_of_other_classes_is_one_clear_error(tmp_path, image_folder, shared_cifar, capsys):
    teacher = ["finetune", "--data", image_folder, "--runs-dir", tmp_path, "--weights", "none", "--input-size", "32",
               "--epochs", "1", "--name", "colors"]  # fmt: skip
    assert run_cli(teacher, capsys)[0] == 0
    folder = cifar_folder(shared_cifar, tmp_path / "cifar", train=5, test=2)
    student = ["finetune", "--data", folder, "--runs-dir", tmp_path, "--weights", "none", "--input-size", "32",
               "--epochs", "1", "--name", "student", "--teacher", tmp_path / "colors"]  # fmt: skip
    code, out, err = run_cli(student, capsys)
    assert_one_error(code, err, 2, "was trained on other classes (blue, green, red, ...)")
    assert not (tmp_path / "student").exists()
