"""Classification metrics, and `edgecls evaluate`: re-compute them for a saved model.

Every stage reports the same `metrics.json` shape: `test_accuracy` (0-1, on the
test split), `per_class_accuracy`, `confusion_matrix` (rows = true class),
`num_test_images`, plus what data and weights produced them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecls.config import DataConfig
from edgecls.errors import DataError


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of integer predictions.

    Args:
        y_true: True class per image.
        y_pred: Predicted class per image.
        class_names: Index = class.
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    n = len(class_names)
    confusion = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    support = confusion.sum(axis=1)
    per_class = {name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)}
    return {
        "test_accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "num_test_images": int(len(y_true)),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }


def predict_scores(model, images: np.ndarray, *, mode: str, batch_size: int) -> np.ndarray:
    """Class scores of a Keras model for uint8 images (preprocessing applied here)."""
    from edgecls.data.pipeline import eval_dataset

    dataset = eval_dataset(images, None, num_classes=0, batch_size=batch_size, mode=mode)
    return model.predict(dataset, verbose=0)


def evaluate_model(model, split, class_names: list[str], *, mode: str, batch_size: int) -> dict[str, Any]:
    """`classification_metrics` of `model` on a decoded split."""
    scores = predict_scores(model, split.images, mode=mode, batch_size=batch_size)
    return classification_metrics(split.labels, scores.argmax(axis=1), class_names)


def run_evaluate(
    run_path: str | Path, data: DataConfig | None = None, *, batch_size: int = 128, trust: bool = False
) -> dict[str, Any]:
    """Re-compute the test metrics of a finished run's model.

    Args:
        run_path: The run folder.
        data: The data to evaluate on (its test split; same classes); None for the run's own.
        batch_size: Images per inference batch.
        trust: Load a model with Lambda layers (`--trust-run`).

    Returns:
        The metrics dict (same shape as metrics.json). Nothing is written.

    Raises:
        RunError: no finished finetune stage. DataError: the classes differ.
        IntegrityError: the model file was changed or would run code.
    """
    from edgecls.data import load_dataset
    from edgecls.run import RunDir

    run = RunDir(run_path)
    record = run.finetune_record()
    model, _ = run.load_model("finetune", trust=trust)
    data_cfg = record.data() if data is None else data
    dataset = load_dataset(data_cfg, record.input_size, record.seed)
    if tuple(dataset.class_names) != record.class_names:
        raise DataError(
            f"the classes of {data_cfg.source} ({', '.join(dataset.class_names)}) differ from the "
            f"run's ({', '.join(record.class_names)})."
        )
    metrics = evaluate_model(model, dataset.test, dataset.class_names, mode=record.preprocessing, batch_size=batch_size)
    metrics["data_source"] = dataset.info["source"]
    return metrics
