"""tf.distribute choices without a cluster: scaling rule, TF_CONFIG checks, what optimize refuses (issue 14)."""

from __future__ import annotations

import pytest

from edgecls.config import OptimizeConfig
from edgecls.errors import ConfigError


def test_replicas_scale_the_global_batch_and_the_learning_rates():
    from edgecls.config import config_from_dict
    from edgecls.distribute import scale_for_replicas

    cfg = config_from_dict({"data": {"batch_size": 64}, "train": {"lr": 2e-3, "head_lr": 1e-2}})
    scaled = scale_for_replicas(cfg, 4)
    assert (scaled.data.batch_size, scaled.train.lr, scaled.train.head_lr) == (256, pytest.approx(8e-3), pytest.approx(4e-2))
    assert scale_for_replicas(cfg, 1) is cfg


@pytest.mark.parametrize(
    "text", ["not json", '{"cluster": {}}', '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}']
)
def test_a_malformed_tf_config_is_a_config_error(monkeypatch, text):
    from edgecls.distribute import make_placement

    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ConfigError, match="`TF_CONFIG` must be JSON"):
        make_placement("multi-worker")


def test_multi_worker_without_tf_config_and_none_on_one_device(monkeypatch):
    from edgecls.distribute import make_placement

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs `TF_CONFIG`"):
        make_placement("multi-worker")
    placement = make_placement("auto")  # no GPU, no cluster here
    assert (placement.kind, placement.replicas, placement.is_chief) == ("none", 1, True)


def test_optimize_refuses_multi_worker_with_the_reason(tmp_path):
    from edgecls.optimize import run_optimize

    with pytest.raises(ConfigError, match="edgecls optimize trains on one machine"):
        run_optimize(tmp_path, OptimizeConfig(qat=True, distribute="multi-worker"))
