"""Distillation's teacher: loading a finished run as one, and scoring images with it once (cached targets)."""

from __future__ import annotations

import time

import numpy as np

from edgecls.config import TrainConfig
from edgecls.errors import ConfigError
from edgecls.run import RunDir


def distiller(student, teacher, cfg: TrainConfig):
    """The Keras distillation model of one phase: `student` trained toward labels and `teacher`.

    Batches that carry the teacher's outputs (cached targets) are not scored by the teacher again.
    """
    from edgecls.distill import Distiller

    return Distiller(student, teacher, alpha=cfg.distill_alpha, temperature=cfg.temperature, label_smoothing=cfg.label_smoothing)


def cache_teacher_outputs(teacher, dataset, splits: tuple[str, ...], batch_size: int,
                          preprocessing: str) -> tuple[dict[str, np.ndarray], float]:  # fmt: skip
    """The teacher's outputs on the un-augmented images of `splits` ("train", "val"), and the seconds they took."""
    from edgecls.distill import teacher_outputs

    start = time.perf_counter()
    outputs = {name: teacher_outputs(teacher, split.images, batch_size=batch_size, mode=preprocessing)
               for name in splits if len(split := getattr(dataset, name)) > 0}  # fmt: skip
    return outputs, time.perf_counter() - start


def load_teacher(path: str, class_names: list[str], preprocessing: str, *, trust: bool = False):
    """The teacher run's model and what the manifest records of it.

    Raises:
        RunError: not a finished run. IntegrityError: its model file changed or would run code.
        ConfigError: its classes or its preprocessing differ from the student's.
    """
    teacher_run = RunDir(path)
    record = teacher_run.finetune_record()
    if list(record.class_names) != list(class_names):
        raise ConfigError(
            f"the teacher {path} was trained on other classes ({', '.join(record.class_names[:4])}, ...) than this data"
            f" ({', '.join(class_names[:4])}, ...): a teacher must know the same classes, in the same order."
        )
    if record.preprocessing != preprocessing:
        raise ConfigError(
            f"the teacher {path} takes `{record.preprocessing}` preprocessing and this model `{preprocessing}`: both see the"
            " same batches, so choose a teacher of the same preprocessing family."
        )
    model, _ = teacher_run.load_model("finetune", trust=trust)
    info = {"run": str(teacher_run.path), "model_sha256": teacher_run.model_sha256("finetune"),
            "input_size": record.input_size}  # fmt: skip
    return model, info
