"""Where training runs: one device, every local accelerator (`MirroredStrategy`), or a cluster
(`MultiWorkerMirroredStrategy` from `TF_CONFIG`).

`train.distribute` chooses: `none`, `mirrored`, `multi-worker`, or `auto` (multi-worker
when `TF_CONFIG` names a cluster, mirrored when this machine has several GPUs, else none).
`mirrored` mirrors the model on all local GPUs, or on the logical CPU devices when there
is no GPU and the CPU was split (`tf.config.set_logical_device_configuration`, as the
tests do). The batch size in the config is per replica: the global batch and the
learning rates are scaled by the replica count (the linear scaling rule), and the run
records both. In a cluster every worker trains, and only the chief writes the run
folder; the others write to a temporary folder they remove.

A two-host example (run the same command on both hosts, each with its own index):

    export TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    edgecls finetune --data /shared/photos --distribute multi-worker --name photos
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any

from edgecls.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """The chosen strategy and this process's part in it.

    Attributes:
        kind: `none`, `mirrored` or `multi-worker`.
        strategy: The `tf.distribute.Strategy` (the default one for `none`).
        replicas: Replicas in sync (all workers' devices together).
        is_chief: Whether this process writes the run folder.
        task: `chief`, `worker 1`, ... for messages; `local` outside a cluster.
    """

    kind: str
    strategy: Any
    replicas: int
    is_chief: bool = True
    task: str = "local"

    def describe(self) -> dict[str, Any]:
        """What the run records about its placement."""
        return {"distribute": self.kind, "replicas": self.replicas, "task": self.task}


def _cluster() -> dict[str, Any] | None:
    """The parsed `TF_CONFIG`, or None when unset; ConfigError when it is not a cluster description."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        workers = config["cluster"].get("worker", []) + config["cluster"].get("chief", [])
        task = config["task"]
        if not workers or task["type"] not in ("worker", "chief") or not isinstance(task["index"], int):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            "`TF_CONFIG` must be JSON with `cluster` (a `worker` list of host:port) and `task` (`type` worker or chief,"
            " an integer `index`); see `edgecls.distribute`."
        ) from None
    return config


def _local_devices() -> list[str]:
    """All local GPUs, else the logical CPU devices (several only if the CPU was split)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def make_placement(choice: str) -> Placement:
    """The strategy `train.distribute` asks for, built now.

    Raises:
        ConfigError: `multi-worker` without a usable `TF_CONFIG`.
    """
    import tensorflow as tf

    cluster = _cluster()
    if choice == "auto":
        choice = "multi-worker" if cluster else ("mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none")
    if choice == "none":
        return Placement("none", tf.distribute.get_strategy(), 1)
    if choice == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_local_devices())
        return Placement("mirrored", strategy, strategy.num_replicas_in_sync)
    if cluster is None:
        raise ConfigError("`--distribute multi-worker` needs `TF_CONFIG` describing the cluster (see `edgecls.distribute`).")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = cluster["task"]
    has_chief = bool(cluster["cluster"].get("chief"))
    is_chief = task["type"] == "chief" or (not has_chief and task["index"] == 0)
    name = "chief" if is_chief else f"{task['type']} {task['index']}"
    return Placement("multi-worker", strategy, strategy.num_replicas_in_sync, is_chief, name)


def scale_for_replicas(cfg, replicas: int):
    """`cfg` with the global batch and the learning rates scaled by `replicas` (the per-replica batch stays).

    The linear scaling rule: `replicas` times the images per step, `replicas` times the step size.
    """
    if replicas == 1:
        return cfg
    data = replace(cfg.data, batch_size=cfg.data.batch_size * replicas)
    train = replace(cfg.train, lr=cfg.train.lr * replicas, head_lr=cfg.train.head_lr * replicas)
    return replace(cfg, data=data, train=train)


def shard_for_workers(dataset, *, by_data: bool):
    """How tf.distribute splits a pipeline between workers: by element (training: each worker its part of
    every global batch; the source is tensors, not files), or not at all (validation: every worker
    evaluates all of it, so every worker runs the same number of steps even on a tiny split)."""
    import tensorflow as tf

    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.DATA if by_data else policy.OFF
    return dataset.with_options(options)
