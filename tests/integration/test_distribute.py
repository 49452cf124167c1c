"""tf.distribute training (issue 14): MirroredStrategy on a CPU split in two, and two workers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import make_image_folder

pytestmark = pytest.mark.slow

# Mirrored replicas each see half of the global batch and all-reduce (mean) their gradients: with
# BatchNorm in inference mode (frozen strategy) and no dropout, that is the single-device step on the
# whole batch, up to float32 summation order.
LOSS_TOLERANCE = 1e-4  # relative, per epoch

MIRRORED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tf_keras

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from edgecls.config import load_config
    from edgecls.train import read_history, run_finetune

    folder, root = sys.argv[1], sys.argv[2]
    start = {}

    class SameStart(tf_keras.callbacks.Callback):
        # both runs start from the first run's initial weights (initializers draw differently under a strategy)
        def on_train_begin(self, logs=None):
            if "weights" in start:
                self.model.set_weights(start["weights"])
            else:
                start["weights"] = self.model.get_weights()

    losses = {}
    for name, distribute, batch, lr in (("mirrored", "mirrored", 8, 0.01), ("single", "none", 16, 0.02)):
        cfg = load_config(overrides={
            "data.source": folder, "data.batch_size": batch, "data.augment": [], "model.weights": "none",
            "model.input_size": 32, "model.dropout": 0.0, "train.strategy": "frozen", "train.epochs": 3,
            "train.head_lr": lr, "train.patience": 0, "train.distribute": distribute, "run.runs_dir": root,
            "run.name": name, "run.seed": 5,
        })
        entry = run_finetune(cfg, callbacks=[SameStart()])
        losses[name] = [row["loss"] for row in read_history(cfg.run_path / "history.csv")]
        losses[name + "_placement"] = entry["inputs"]["placement"]
    from edgecls.errors import ConfigError
    try:  # tf-keras' weight average cannot run under the strategy: refused before anything is written
        run_finetune(load_config(overrides={"data.source": folder, "train.distribute": "mirrored",
                                            "train.ema_momentum": 0.9, "run.runs_dir": root, "run.name": "ema"}))
    except ConfigError as error:
        losses["ema_error"] = str(error)
    print(json.dumps(losses))
    """
)

# TFMOT under the same strategy, in a process of its own as every edgecls command runs: prune, then
# prune-preserving QAT, mirrored on the two CPUs.
OPTIMIZE_MIRRORED = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from edgecls.config import OptimizeConfig
    from edgecls.optimize import run_optimize

    run_optimize(sys.argv[1], OptimizeConfig(prune=0.5, qat=True, epochs=1, distribute="mirrored"))
    """
)


def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path):
    folder = make_image_folder(tmp_path / "images", train=16, test=4)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert losses["mirrored_placement"] == {"distribute": "mirrored", "replicas": 2, "task": "local"}
    assert losses["ema_error"].startswith("train.ema_momentum needs one replica")
    assert not (tmp_path / "runs" / "ema").exists()
    assert losses["single_placement"]["replicas"] == 1
    assert len(losses["mirrored"]) == 3
    for mirrored, single in zip(losses["mirrored"], losses["single"], strict=True):
        assert mirrored == pytest.approx(single, rel=LOSS_TOLERANCE)
    assert losses["mirrored"][-1] < losses["mirrored"][0], "it trained"
    config = (tmp_path / "runs" / "mirrored" / "config.yaml").read_text()
    assert "# distributed (mirrored, 2 replicas): global batch 16 (8 per replica), lr" in config

    script.write_text(OPTIMIZE_MIRRORED)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "runs" / "mirrored")],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((tmp_path / "runs" / "mirrored" / "manifest.json").read_text())["stages"]
    assert stages["pqat"]["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.02), "QAT kept the 50 % sparsity"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_loopback_write_one_run_folder_from_the_chief(tmp_path):
    folder = make_image_folder(tmp_path / "images", train=12, test=4)
    runs = tmp_path / "runs"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    edgecls = str(Path(sys.executable).with_name("edgecls"))
    args = [edgecls, "finetune", "--data", str(folder), "--weights", "none", "--input-size", "32", "--epochs", "2",
            "--batch-size", "8", "--distribute", "multi-worker", "--name", "cluster", "--runs-dir", str(runs)]  # fmt: skip
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "TMPDIR": str(tmp_path / f"tmp{index}"), "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
        (tmp_path / f"tmp{index}").mkdir()
        workers.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [worker.communicate(timeout=900) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    assert [p.name for p in runs.iterdir()] == ["cluster"], "one run folder"
    entry = json.loads((runs / "cluster" / "manifest.json").read_text())["stages"]["finetune"]
    assert entry["inputs"]["placement"] == {"distribute": "multi-worker", "replicas": 2, "task": "chief"}
    assert "global batch 16 (8 per replica)" in (runs / "cluster" / "config.yaml").read_text()
    assert not [p for p in (runs / "cluster").rglob("*") if "workertemp" in p.name], "no worker wrote into it"
    assert not list((tmp_path / "tmp1").iterdir()), "worker 1 removed its scratch run"
