"""Shared fixtures: generated image folders, and the real data in ../shared when present."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as edgecls/__init__.py sets it, in case TF is imported first
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
V1_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
V2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_from_slim_npy.h5"
KERAS_NAMES = {
    V1_WEIGHTS: "mobilenet_2_5_224_tf_no_top.h5",
    V2_WEIGHTS: "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
COLORS = {"blue": (50, 60, 230), "green": (40, 200, 60), "red": (220, 40, 40)}


def write_image(path: Path, array: np.ndarray) -> None:
    """Encode `array` (H, W, C uint8) as PNG or JPEG by `path`'s suffix."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = tf.constant(array)
    data = tf.io.encode_png(tensor) if path.suffix == ".png" else tf.io.encode_jpeg(tensor)
    path.write_bytes(data.numpy())


def make_image_folder(root: Path, *, classes=("blue", "green", "red"), train=12, test=6, size=40, seed=0) -> Path:
    """train/<class>/*, test/<class>/*: noisy images whose colour tells the class.

    Mixed formats and modes on purpose: PNG and JPEG, some grayscale, some RGBA,
    some of another size.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for _label, name in enumerate(classes):
            for i in range(count):
                side = size if i % 4 else size + 8
                image = rng.normal(COLORS.get(name, (128, 128, 128)), 30, (side, side, 3)).clip(0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 else ".jpg"
                if i % 5 == 3:
                    image = image.mean(axis=2, keepdims=True).astype(np.uint8)
                elif i % 5 == 4 and suffix == ".png":
                    image = np.concatenate([image, np.full((side, side, 1), 255, np.uint8)], axis=2)
                write_image(root / split / name / f"{i:03d}{suffix}", image)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def shared_cifar() -> Path:
    if not CIFAR_JPEG.exists():
        pytest.skip(f"needs the real CIFAR-10 archive at {CIFAR_JPEG} (../shared is absent on a fresh clone)")
    return CIFAR_JPEG


@pytest.fixture(scope="session")
def keras_home(tmp_path_factory) -> Path:
    """A KERAS_HOME whose models/ holds the shared ImageNet weights under Keras' own names."""
    if not V1_WEIGHTS.exists():
        pytest.skip(f"needs the ImageNet weights in {V1_WEIGHTS.parent} (../shared is absent on a fresh clone)")
    home = tmp_path_factory.mktemp("keras_home")
    (home / "models").mkdir()
    for source, name in KERAS_NAMES.items():
        if source.exists():
            shutil.copy(source, home / "models" / name)
    previous = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("KERAS_HOME", None)
    else:
        os.environ["KERAS_HOME"] = previous


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: a test compares two to prove nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def assert_one_error(code: int, err: str, expected_code: int, message: str) -> None:
    """Exactly one `edgecls: error:` line holding `message`, the expected exit status, no traceback."""
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecls: error: "), err
    assert "Traceback" not in err
    assert message in err, err


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    from edgecls.cli import main

    capsys.readouterr()  # drop what the test itself printed before the command
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def finetune_tiny(root: Path, *, train: int = 12, test: int = 6, **overrides) -> Path:
    """Fine-tune MobileNet v1 0.25 at 32 px (random init, 2 epochs) on generated images into root/tiny."""
    from edgecls.config import load_config
    from edgecls.train import run_finetune

    images = make_image_folder(root / "images", train=train, test=test)
    values = {
        "data.source": str(images),
        "data.batch_size": 8,
        "model.weights": "none",
        "model.input_size": 32,
        "train.strategy": "full",
        "train.epochs": 2,
        "run.runs_dir": str(root),
        "run.name": "tiny",
        **overrides,
    }
    run_finetune(load_config(overrides=values))
    return root / "tiny"


@pytest.fixture(scope="session")
def tiny_exported_run(tmp_path_factory):
    """A tiny run exported to fp32 and int8 TFLite and ONNX. Session-wide and read-only: copy it to change it."""
    from edgecls.config import ExportConfig
    from edgecls.export import run_export

    run = finetune_tiny(tmp_path_factory.mktemp("tiny_exported"))
    run_export(run, ExportConfig(calibration_samples=12, check_per_class=6))
    return run


def cifar_folder(archive: Path, root: Path, train: int, test: int) -> Path:
    """A real image folder: the first `train`/`test` JPEGs of each CIFAR-10 class from the shared archive."""
    kept: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as source:
        for member in source:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            split, label = parts[-3], parts[-2]
            if kept.get((split, label), 0) >= (train if split == "train" else test):
                continue
            kept[split, label] = kept.get((split, label), 0) + 1
            target = root / split / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.extractfile(member).read())
    return root
