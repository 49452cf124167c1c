"""Streaming input (issue 14): a training split too large for the memory budget is read from an on-disk cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cifar_folder, run_cli

pytestmark = pytest.mark.slow


def test_streaming_trains_like_memory_and_reuses_its_cache(tmp_path, shared_cifar, keras_home, capsys):
    from edgecls.config import load_config
    from edgecls.data import load_dataset

    folder = cifar_folder(shared_cifar, tmp_path / "cifar", train=60, test=20)
    cache = tmp_path / "cache"
    base = ["finetune", "--data", folder, "--runs-dir", tmp_path, "--input-size", "64", "--strategy", "frozen",
            "--epochs", "3", "--batch-size", "32", "--seed", "3", "--set", f"data.cache_dir={cache}"]  # fmt: skip
    accuracy = {}
    for name, budget in (("memory", []), ("stream", ["--set", "data.memory_gib=0.004"])):  # 4 MiB < 600 images at 64 px
        code, out, err = run_cli([*base, "--name", name, *budget], capsys)
        assert code == 0, err
        entry = json.loads((tmp_path / name / "manifest.json").read_text())["stages"]["finetune"]
        assert entry["inputs"]["data"]["mode"] == name
        accuracy[name] = entry["metrics"]["test_accuracy"]
    assert accuracy["memory"] > 0.3, "frozen ImageNet features learn 10 CIFAR classes well above chance (0.1)"
    # Same images, seed and recipe; only the batch order differs (global shuffle vs shards + buffer).
    assert abs(accuracy["stream"] - accuracy["memory"]) <= 0.06, accuracy
    written = json.loads((tmp_path / "stream" / "manifest.json").read_text())["stages"]["finetune"]["inputs"]["data"]
    assert written["cache_written"] and Path(written["cache"]).is_dir() and Path(written["cache"]).parent.parent == cache
    assert not list((cache / "stream").glob(".writing-*")), "the temporary folder is gone once the cache is complete"

    cfg = load_config(tmp_path / "stream" / "config.yaml")
    again = load_dataset(cfg.data, 64, cfg.run.seed)  # a later run on the same data and size: no decoding
    assert again.info["mode"] == "stream" and not again.info["cache_written"] and again.info["cache"] == written["cache"]
    assert sorted(again.train.ids) == sorted(load_dataset(load_config(tmp_path / "memory" / "config.yaml").data, 64, 3).train.ids)


def test_forced_memory_over_budget_is_one_clear_error(tmp_path, image_folder, capsys):
    from conftest import assert_one_error

    args = ["finetune", "--data", image_folder, "--runs-dir", tmp_path, "--weights", "none", "--input-size", "32",
            "--epochs", "1", "--set", "data.mode=memory", "--set", "data.memory_gib=0.00001"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, "stream them (`--set data.mode=stream`)")
    assert [p.name for p in tmp_path.iterdir()] == ["images"], "nothing written"
