"""The typed config: defaults, round trip, and one clear error per bad key or value."""

from __future__ import annotations

import pytest

from edgecls.config import EdgeConfig, load_config
from edgecls.errors import ConfigError


def test_defaults_are_the_edge_model():
    cfg = EdgeConfig()
    assert (cfg.model.name, cfg.model.alpha, cfg.model.input_size) == ("mobilenet", 0.25, 128)
    assert cfg.train.strategy == "full" and cfg.data.augment == ("crop", "flip")
    assert cfg.run_name == "mobilenet-full"


def test_yaml_round_trip(tmp_path):
    cfg = load_config(overrides={"train.strategy": "partial", "train.unfreeze": "4", "data.augment": "flip,color"})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert cfg.train.unfreeze == 4 and cfg.data.augment == ("flip", "color")


def test_family_default_alpha_resolved():
    assert load_config(overrides={"model.name": "resnet50"}).model.alpha == 1.0
    assert load_config(overrides={"model.name": "mobilenet_v2"}).model.alpha == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.name": "mobilenet_v9"}, "`model.name` must be one of"),
        ({"model.alpha": 0.1}, "`model.alpha` must be in [0.25, 1.0]"),
        ({"model.alpha": 0.3}, "with ImageNet weights"),
        ({"model.name": "resnet50", "model.alpha": 0.5}, "`model.alpha` must be 1.0"),
        ({"model.input_size": 16}, "`model.input_size` must be in [32, 224]"),
        ({"model.weights": "/no/such/file.h5"}, "`model.weights` must be"),
        ({"train.strategy": "half"}, "`train.strategy` must be one of frozen, partial, full"),
        ({"train.strategy": "partial", "train.unfreeze": 14}, "`train.unfreeze` must be in [1, 13]"),
        ({"train.epochs": 0}, "`train.epochs` must be a positive integer"),
        ({"train.epochs": "ten"}, "`train.epochs` must be an integer"),
        ({"train.warmup_epochs": 5, "train.epochs": 5}, "`train.warmup_epochs` must be in [0, train.epochs)"),
        ({"data.val_fraction": 0.7}, "`data.val_fraction` must be in [0, 0.5)"),
        ({"data.augment": "crop,rotate"}, "`data.augment` must be a subset"),
        ({"data.augment": "mixup", "data.mixup_alpha": 0}, "`data.mixup_alpha` must be a positive number"),
        ({"data.cutmix_alpha": "nan"}, "`data.cutmix_alpha` must be a positive number"),
        ({"validate.stage": "prune2"}, "`validate.stage` must be one of"),
        ({"bench.stage": "bogus"}, "`bench.stage` must be one of"),
        ({"train.epochz": 3}, "unknown config key `train.epochz`"),
        ({"trainer.epochs": 3}, "unknown config section `trainer`"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="must be an existing YAML file"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_config_loads_and_names_real_profiles():
    """The configs/ files the README points to are valid configs; their device profiles exist."""
    from pathlib import Path

    from edgecls.config import load_config
    from edgecls.devices import load_profile

    shipped = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert len(shipped) >= 4
    for path in shipped:
        cfg = load_config(path)
        for profile in (cfg.firmware.device, cfg.bench.profile, cfg.optimize.fit):
            if profile:
                load_profile(profile)


def test_each_optimize_step_has_its_own_default_schedule():
    """Unset, magnitude pruning and QAT train 4 epochs, channel recovery 10 at the fine-tune rate; a set value wins."""
    from edgecls.config import OptimizeConfig

    opt = OptimizeConfig()
    assert (opt.epochs_of("prune"), opt.lr_of("prune")) == (4, 5e-4)
    assert (opt.epochs_of("channels"), opt.lr_of("channels")) == (10, 2e-3)
    assert (opt.epochs_of("cqat"), opt.lr_of("cqat")) == (4, 1e-5)
    given = OptimizeConfig(epochs=2, lr=1e-3, qat_lr=3e-5)
    assert [given.epochs_of(s) for s in ("prune", "channels", "qat")] == [2, 2, 2]
    assert [given.lr_of(s) for s in ("prune", "channels", "pqat")] == [1e-3, 1e-3, 3e-5]
