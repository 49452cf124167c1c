"""The raw-pixel baseline every fine-tune records (edgecls.baseline)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.baseline import baseline_warning, pixel_features, raw_pixel_baseline
from edgecls.data import DecodedSplit


def _split(images: np.ndarray, labels: np.ndarray) -> DecodedSplit:
    return DecodedSplit(images, labels.astype(np.int32), [str(i) for i in range(len(labels))], [])


def _bright_dark(count: int, seed: int) -> DecodedSplit:
    """Class 1 images are brighter than class 0 ones by 60 levels, under noise: linearly separable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    images = rng.integers(0, 100, (count, 48, 48, 3)) + 60 * labels[:, None, None, None]
    return _split(images.astype(np.uint8), labels)


def test_pixel_features_area_average_to_32_pixels():
    images = np.zeros((2, 64, 64, 3), np.uint8)
    images[1, :32] = 255  # top half white: every 2x2 block is all white or all black
    rows = pixel_features(images, 32)
    assert rows.shape == (2, 32 * 32 * 3) and rows.dtype == np.float32
    assert rows[0].max() == 0.0
    assert rows[1].reshape(32, 32, 3)[:16].min() == 1.0 and rows[1].reshape(32, 32, 3)[16:].max() == 0.0
    np.testing.assert_array_equal(pixel_features(images, 32, chunk=1), rows)  # shrunk in chunks: the same rows


def test_baseline_separates_a_linearly_separable_set():
    result = raw_pixel_baseline(_bright_dark(200, 0), _bright_dark(100, 1), 2, seed=0)
    assert result["test_accuracy"] == 1.0
    assert result["pixels"] == "32x32x3" and result["train_images"] == 200


def test_baseline_is_at_chance_on_random_labels():
    rng = np.random.default_rng(0)
    train = _split(rng.integers(0, 256, (300, 16, 16, 3)).astype(np.uint8), rng.integers(0, 4, 300))
    test = _split(rng.integers(0, 256, (400, 16, 16, 3)).astype(np.uint8), rng.integers(0, 4, 400))
    result = raw_pixel_baseline(train, test, 4, seed=0)
    assert result["pixels"] == "16x16x3"  # never upsampled
    assert 0.15 <= result["test_accuracy"] <= 0.35  # chance is 0.25: 400 images, 4 standard errors


def test_baseline_skips_a_streamed_split():
    assert "streamed" in raw_pixel_baseline(object(), None, 2, seed=0)["skipped"]


@pytest.mark.parametrize(("accuracy", "warns"), [(0.93, True), (0.995, True), (0.996, False)])
def test_warning_when_fine_tuning_does_not_beat_the_baseline(accuracy, warns):
    line = baseline_warning(accuracy, {"kind": "softmax regression on raw pixels", "test_accuracy": 0.995})
    assert (line is not None) == warns
    if warns:
        assert f"{accuracy:.4f}" in line and "0.9950" in line
