"""`edgecls bench`: host latency table, profile budgets both ways, the SSH device path, bad input."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow
SSH = os.environ.get("EDGECLS_TEST_SSH")
SSH_2 = os.environ.get("EDGECLS_TEST_SSH_2")
SSH_KEY = os.environ.get("EDGECLS_TEST_SSH_KEY")
KNOWN_HOSTS = os.environ.get("EDGECLS_TEST_SSH_KNOWN_HOSTS")
QUICK = ["--windows", "1", "--window-seconds", "0", "--runs", "3"]  # the method's arithmetic is tested in test_host_bench
needs_sshd = pytest.mark.skipif(not SSH, reason="needs the loopback sshd that .ci/run starts (EDGECLS_TEST_SSH)")


@pytest.fixture
def run(tiny_exported_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(tiny_exported_run, target)
    return target


def test_host_bench(run, capsys):
    code, out, err = run_cli(["bench", run, "--windows", "3", "--window-seconds", "0.1", "--runs", "5", "--warmup", "1",
                              "--threads", "1,2", "--profile", "raspberry-pi-4"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads((run / "bench.json").read_text())
    assert len(result["rows"]) == 4 * 2
    for row in result["rows"]:
        windows = row["window_p50_ms"]
        assert len(windows) == 3 and row["runs"] >= 3 * 5
        assert row["p50_ms"] == pytest.approx(sorted(windows)[1])  # the median of the three windows
        assert row["window_spread_pct"] == pytest.approx((max(windows) - min(windows)) / sorted(windows)[1] * 100)
        assert row["p90_ms"] <= row["p99_ms"] and row["end_to_end_p50_ms"] > 0
        assert row["images_per_second"] == pytest.approx(1000 / row["p50_ms"], rel=0.01)
        assert row["peak_rss_mib"] > 10 and row["cpu_count"] == os.cpu_count() and "numpy" in row["versions"]
        assert row["compute_bound_ms"] is None or 0 < row["compute_bound_ms"] <= row["p50_ms"]  # a bound never exceeds
        if hasattr(os, "sched_setaffinity"):
            assert len(row["pinned_cores"]) == min(row["threads"], len(os.sched_getaffinity(0)))
    assert {r["threads"] for r in result["rows"]} == {1, 2}
    assert set(result["peak_gmacs"]) == {"fp32@1t", "fp32@2t", "int8@1t", "int8@2t"}
    assert result["budgets"] and all(check["ok"] for check in result["budgets"])
    assert {s["runtime"] for s in result["int8_vs_fp32"]} == {"litert", "onnxruntime"}
    assert "run `edgecls validate` first" in result["recommendation"]
    assert "| finetune | model_int8.tflite |" in (run / "bench.md").read_text()


def test_budget_exceeded_exits_1(run, tmp_path, capsys):
    profile = tmp_path / "tiny-device.yaml"
    profile.write_text("name: tiny-device\nkind: linux\nmax_p50_ms: 0.000001\nmax_model_bytes: 1000\n")
    code, out, err = run_cli(["bench", run, *QUICK, "--threads", "1", "--profile", profile], capsys)
    assert code == 1 and "over budget of profile" in err
    checks = json.loads((run / "bench.json").read_text())["budgets"]
    assert checks and not any(check["ok"] for check in checks)


def test_recommendation_after_validate(run, capsys):
    assert run_cli(["validate", run, "--max-int8-drop", "100", "--tflm-images", "0"], capsys)[0] == 0
    code, out, err = run_cli(["bench", run, *QUICK, "--threads", "1"], capsys)
    assert code == 0, err
    assert json.loads((run / "bench.json").read_text())["recommendation"].startswith("finetune/model_")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "phone"], "`--device` must be `host` or `ssh://user@host[:port]`"),
        (["--profile", "toaster"], "the device profile must be one of"),
        (["--runs", "0"], "`--runs` must be a positive integer; got 0."),
        (["--windows", "0"], "`--windows` must be a positive integer; got 0."),
        (["--device", "host", "--device", "host"], "`--device` names host twice"),
        (["--threads", "two"], "`--threads` must be an integer"),
        (["--device", "ssh://nobody@127.0.0.1:1"], "cannot use 127.0.0.1:1 over SSH"),
    ],
)
def test_bad_input(run, capsys, args, message):
    start = time.perf_counter()
    code, out, err = run_cli(["bench", run, *args], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - start < 60


@needs_sshd
def test_ssh_device_end_to_end(run, capsys):
    args = ["bench", run, "--device", SSH, "--ssh-key", SSH_KEY, "--known-hosts", KNOWN_HOSTS, "--remote-python",
            sys.executable, "--windows", "1", "--window-seconds", "0", "--runs", "3", "--threads", "1"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads((run / "bench.json").read_text())
    assert result["device"].endswith("over SSH") and len(result["rows"]) == 4
    assert all(row["p50_ms"] > 0 for row in result["rows"])
    parity = {p["artifact"]: p["agreement"] for p in result["parity"]}
    assert parity["finetune/model_fp32.tflite"] == 1.0 and parity["finetune/model_fp32.onnx"] == 1.0


@needs_sshd
def test_ssh_refused_key_and_missing_runtime(run, tmp_path, capsys):
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    base = ["bench", run, "--device", SSH, "--known-hosts", KNOWN_HOSTS, "--windows", "1", "--runs", "2", "--threads", "1"]
    code, out, err = run_cli([*base, "--ssh-key", other], capsys)
    assert code == 2 and "Permission denied" in err, err
    bare = tmp_path / "bare"  # a Python without NumPy or any runtime, as on a fresh device
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    code, out, err = run_cli([*base, "--ssh-key", SSH_KEY, "--remote-python", bare / "bin" / "python"], capsys)
    assert code == 2 and "lacks NumPy: pip install numpy" in err, err


@needs_sshd
@pytest.mark.skipif(not SSH_2, reason="needs the second loopback sshd port that .ci/sshd.sh opens (EDGECLS_TEST_SSH_2)")
def test_fleet_measures_in_parallel_and_one_unreachable_device_is_one_failed_row(run, tmp_path, capsys):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "devices:\n"
        f"  - url: {SSH}\n    python: {sys.executable}\n    key: {SSH_KEY}\n    known_hosts: {KNOWN_HOSTS}\n"
        f"  - url: {SSH_2}\n    python: {sys.executable}\n    key: {SSH_KEY}\n    known_hosts: {KNOWN_HOSTS}\n"
        "  - url: ssh://nobody@127.0.0.1:1\n"  # nothing listens on port 1
    )
    args = ["bench", run, "--fleet", fleet, "--windows", "1", "--window-seconds", "0", "--runs", "3", "--threads", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and "1 of 3 device(s) failed" in err and "ssh://nobody@127.0.0.1:1" in err, err
    result = json.loads((run / "bench.json").read_text())
    by_url = {s["url"]: s for s in result["summary"]}
    assert by_url[SSH]["passed"] and by_url[SSH_2]["passed"] and by_url[SSH]["best_p50_ms"] > 0
    unreachable = by_url["ssh://nobody@127.0.0.1:1"]
    assert unreachable["status"] == "fail" and "cannot use 127.0.0.1:1 over SSH" in unreachable["reason"]
    measured = [d for d in result["devices"] if d["status"] == "measured"]
    assert len(measured) == 2 and all(len(d["rows"]) == 4 and d["parity"] for d in measured)
    text = (run / "bench.md").read_text()
    assert text.startswith("# edgecls bench: a fleet of 3 devices") and text.count("## edgecls bench:") == 3
    manifest = json.loads((run / "manifest.json").read_text())["stages"]["bench"]["metrics"]
    assert {row["device"] for row in manifest["rows"]} == {SSH, SSH_2, "ssh://nobody@127.0.0.1:1"}
