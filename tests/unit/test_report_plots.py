"""The report's trade-off plot labels every exported file legibly: no two labels overlap, none leaves its axes."""

from __future__ import annotations

import itertools

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib import pyplot as plt  # noqa: E402

from edgecls.report import _annotate  # noqa: E402


def label_boxes(xs, ys, labels):
    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.scatter(xs, ys)
    _annotate(axis, xs, ys, labels)
    figure.tight_layout()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in axis.texts]
    bounds = axis.get_window_extent(renderer)
    plt.close(figure)
    return boxes, bounds


@pytest.mark.parametrize(
    "xs, ys",
    [
        ([4.52, 4.69, 4.55, 5.00], [0.9215, 0.9215, 0.9170, 0.9156]),  # fp32 TFLite and ONNX at one accuracy (a zoo run)
        ([8700.0, 8720.0, 2600.0, 2650.0], [0.9215, 0.9215, 0.9170, 0.9156]),  # and at nearly one size too
        ([0.41, 0.61, 0.57, 1.65], [0.8961, 0.8961, 0.8946, 0.8951]),
    ],
)
def test_tradeoff_labels_neither_overlap_nor_leave_the_axes(xs, ys):
    labels = ["finetune/model_fp32.tflite", "finetune/model_fp32.onnx", "finetune/model_int8.onnx", "finetune/model_int8.tflite"]
    boxes, bounds = label_boxes(xs, ys, labels)
    assert len(boxes) == 4
    for first, second in itertools.combinations(boxes, 2):
        assert not first.overlaps(second), (first, second)
    for box in boxes:
        assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and bounds.y0 <= box.y0 and box.y1 <= bounds.y1, box
