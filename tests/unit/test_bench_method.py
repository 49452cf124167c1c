"""The latency method's arithmetic, the compute bound's guard, and fleet files (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.config import BenchConfig
from edgecls.errors import ConfigError
from edgecls.worker import read_answer


def test_latency_summary_is_the_median_of_window_medians():
    from edgecls.worker import latency_summary

    windows = [np.array([1.0, 1.0, 9.0]), np.array([2.0, 2.0, 2.0, 2.0]), np.array([3.0, 30.0, 3.0])]
    result = latency_summary(windows)
    assert result["p50_ms"] == 2.0  # medians 1, 2, 3
    assert result["window_p50_ms"] == [1.0, 2.0, 3.0]
    assert result["window_spread_pct"] == pytest.approx(100.0)  # (3 - 1) / 2
    assert result["runs"] == 10 and result["mean_ms"] == pytest.approx(55.0 / 10)
    assert result["p99_ms"] > result["p90_ms"] >= 9.0 and result["images_per_second"] == pytest.approx(500.0)


def test_timed_windows_last_at_least_their_time_and_runs():
    from edgecls.worker import timed_windows

    calls = []
    windows = timed_windows(lambda: calls.append(1), windows=3, seconds=0.01, min_runs=7)
    assert len(windows) == 3 and all(len(w) >= 7 for w in windows) and len(calls) == sum(len(w) for w in windows)


def test_a_compute_bound_never_exceeds_the_measurement():
    from edgecls.bench.peak import GEMM_MACS, compute_bound_ms, peak_macs_per_second

    peak = peak_macs_per_second({"window_p50_ms": [2.0, 1.0, 4.0]})  # the fastest window: 1 ms
    assert peak == pytest.approx(GEMM_MACS / 1e-3)
    assert compute_bound_ms(GEMM_MACS // 2, peak, p50_ms=0.9) == pytest.approx(0.5)
    assert compute_bound_ms(GEMM_MACS * 2, peak, p50_ms=1.5) is None  # 2 ms "bound" above a 1.5 ms measurement
    assert compute_bound_ms(None, peak, p50_ms=1.0) is None and compute_bound_ms(10, None, p50_ms=1.0) is None


def test_fleet_file_defaults_and_errors(tmp_path):
    from edgecls.bench.fleet import bench_devices

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("devices:\n  - url: ssh://pi@a\n    profile: raspberry-pi-4\n  - url: host\n    python: /opt/py\n")
    cfg = BenchConfig(fleet=str(fleet), ssh_key="~/k", remote_python="python3.11")
    first, second = bench_devices(cfg)
    assert (first.url, first.profile, first.python) == ("ssh://pi@a", "raspberry-pi-4", "python3.11")
    assert first.key.endswith("/k") and not first.key.startswith("~") and second.python == "/opt/py"
    for text, message in (
        ("devices: []\n", "needs one key, `devices`"),
        ("devices:\n  - url: ssh://pi@a\n    colour: red\n", "unknown config key `fleet file"),
        ("devices:\n  - url: ssh://-oProxyCommand=x@a\n", "`--device` must be"),
        ("devices:\n  - url: host\n  - url: host\n", "names host twice"),
        ("devices:\n  - profile: x\n", "device 1 needs a `url`"),
    ):
        fleet.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            bench_devices(BenchConfig(fleet=str(fleet)))


def test_method_keys_are_checked():
    for key, value in (("windows", 0), ("window_seconds", -1.0), ("runs", 0)):
        with pytest.raises(ConfigError, match=f"bench.{key}"):
            BenchConfig(**{key: value})


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ('{"p50_ms": 1.5}\n', {"p50_ms": 1.5}),
        ('INFO: Created TensorFlow Lite XNNPACK delegate\n{"error": "bad file"}\n', {"error": "bad file"}),
        ('{"p50_ms": 1.5}\nsegfault report\n', None),  # the answer must be the last line
        ("", None),
        ("{not json\n", None),
        ("[1, 2]\n", None),
    ],
)
def test_worker_answer_is_the_json_object_on_the_last_line(stdout, expected):
    assert read_answer(stdout) == expected
