"""The bench stage: latency, throughput and memory of every exported file, on this host or a device.

`--device host` runs each file in a child process (the self-contained
`edgecls.worker`) at 1 thread and at all cores: load time, warm-up, then N
timed single-image runs (p50/p90/p99, mean, images/s) and peak resident memory.
The compute bound (model MACs / this CPU's measured fp32 GEMM rate) shows how
close a runtime gets to the hardware.

`--device ssh://user@host[:port]` copies the worker and the models to a Linux
device (Raspberry Pi class), runs the same benchmark there with whichever
runtime it has, scores a few test images there (on-device parity with the
host's Keras model), and pulls the JSON back.

`--profile NAME` checks the numbers against a device profile's budgets (model
bytes, RAM, p50 latency; flash and arena from `edgecls firmware` for MCUs).
Writes bench.json and bench.md in the run folder.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, EdgeclsError, RunError
from edgecls.export import exported_artifacts
from edgecls.firmware import load_profile
from edgecls.run import RunDir, atomic_write_json, atomic_write_text

WORKER = Path(__file__).with_name("worker.py")


class DeviceError(EdgeclsError):
    """A device that cannot be reached, refuses the key, or lacks a runtime."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """Where to benchmark: `host`, or an SSH device."""

    kind: str
    user: str | None = None
    host: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> Target:
        """`host` or `ssh://user@host[:port]`.

        Raises:
            ConfigError: anything else.
        """
        if text == "host":
            return cls("host")
        if text.startswith("ssh://"):
            rest = text.removeprefix("ssh://")
            user, at, address = rest.rpartition("@")
            host, colon, port = address.partition(":")
            if at and user and host and (not colon or port.isdigit()):
                return cls("ssh", user, host, int(port) if colon else 22)
        raise ConfigError(f"`--device` must be `host` or `ssh://user@host[:port]`; got {text!r}.")


def peak_gemm_macs_per_second(size: int = 512, repeats: int = 20) -> float:
    """Multiply-accumulates per second of a float32 matrix product on this CPU (NumPy's BLAS, all cores)."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return size**3 * repeats / (time.perf_counter() - start)


def _worker_json(done: subprocess.CompletedProcess, where: str) -> dict[str, Any]:
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    if result and "error" in result:
        raise DeviceError(f"{where}: {result['error']}")
    if done.returncode != 0 or result is None:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if "No module named 'numpy'" in tail:
            tail = "the device's Python lacks NumPy: pip install numpy"
        raise DeviceError(f"{where}: {tail[:300]}")
    return result


def host_run(model: Path, *, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Benchmark one file in a child process on this machine."""
    command = [sys.executable, str(WORKER), "bench", str(model), "--threads", str(threads)]
    command += ["--runs", str(runs), "--warmup", str(warmup)]
    return _worker_json(subprocess.run(command, capture_output=True, text=True, timeout=1800), model.name)


class SSHDevice:
    """A Linux device reached with the system `ssh`/`scp`, non-interactively, with bounded timeouts."""

    def __init__(self, target: Target, *, key: str | None, known_hosts: str | None, python: str, timeout: int = 15):
        self.target, self.python, self.timeout = target, python, timeout
        self.options = [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            "StrictHostKeyChecking=accept-new",
        ]
        if known_hosts:
            self.options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if key:
            self.options += ["-i", key, "-o", "IdentitiesOnly=yes"]
        self.address = f"{target.user}@{target.host}"
        self.where = f"{target.host}:{target.port}"

    def ssh(self, command: str, timeout: int = 1800) -> subprocess.CompletedProcess:
        args = ["ssh", *self.options, "-p", str(self.target.port), self.address, command]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.where} did not answer within {timeout} s.") from None
        if done.returncode == 255:
            reason = (done.stderr.strip().splitlines() or ["ssh failed"])[-1]
            raise DeviceError(f"cannot use {self.where} over SSH: {reason}")
        return done

    def copy(self, sources: list[Path], folder: str, *, download: bool = False) -> None:
        if download:
            args = [
                "scp",
                *self.options,
                "-P",
                str(self.target.port),
                *[f"{self.address}:{s}" for s in sources],
                folder,
            ]
        else:
            args = ["scp", *self.options, "-P", str(self.target.port), *map(str, sources), f"{self.address}:{folder}/"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise DeviceError(f"cannot copy files to/from {self.where}: {done.stderr.strip()[-200:]}")

    def prepare(self, files: list[Path]) -> str:
        """Make a work folder on the device and copy the worker and `files` there; returns its path."""
        done = self.ssh("mktemp -d /tmp/edgecls.XXXXXX", timeout=self.timeout + 15)
        folder = done.stdout.strip()
        if done.returncode != 0 or not folder:
            raise DeviceError(f"{self.where}: cannot create a work folder ({done.stderr.strip()[-200:]})")
        self.copy([WORKER, *files], folder)
        return folder

    def worker(self, folder: str, args: list[str], label: str) -> dict[str, Any]:
        command = " ".join(shlex.quote(a) for a in [self.python, f"{folder}/worker.py", *args])
        return _worker_json(self.ssh(f"cd {shlex.quote(folder)} && {command}"), f"{self.where} ({label})")

    def cleanup(self, folder: str) -> None:
        self.ssh(f"rm -rf {shlex.quote(folder)}", timeout=self.timeout + 15)


def _budget_checks(profile: dict[str, Any], rows: list[dict[str, Any]], run: RunDir) -> list[dict[str, Any]]:
    checks = []
    if profile.get("kind") == "mcu":
        for path in sorted(run.path.glob("firmware/*/firmware.json")):
            firmware = json.loads(path.read_text())
            checks.append(
                {
                    "what": f"flash {firmware['stage']}",
                    "value": firmware["flash_bytes"],
                    "budget": profile["flash_bytes"],
                    "ok": firmware["flash_bytes"] <= profile["flash_bytes"],
                }
            )
            checks.append({"what": f"arena {firmware['stage']}", "value": firmware["arena_bytes"],
                           "budget": profile["ram_bytes"], "ok": firmware["arena_bytes"] <= profile["ram_bytes"]})  # fmt: skip
        if not checks:
            raise RunError(f"profile {profile['name']} is a microcontroller: run `edgecls firmware {run.path}` first.")
        return checks
    for row in rows:
        label = f"{row['artifact']} @{row['threads']}t"
        for key, value, budget in (
            ("bytes", row["bytes"], profile.get("max_model_bytes")),
            ("p50_ms", row["p50_ms"], profile.get("max_p50_ms")),
            ("peak_rss_mib", row["peak_rss_mib"], profile.get("max_ram_mib")),
        ):
            if budget is not None:
                checks.append({"what": f"{key} {label}", "value": value, "budget": budget, "ok": value <= budget})
    return checks


def _recommend(run: RunDir, rows: list[dict[str, Any]]) -> str:
    validated = run.file("validate.json")
    if not validated.exists():
        return "run `edgecls validate` first: only files that pass the validation gate are recommended"
    passing = {(r["artifact"], r["stage"], r["runtime"]) for r in json.loads(validated.read_text())["rows"]
               if r["status"] == "pass"}  # fmt: skip
    candidates = [r for r in rows if (r["artifact"], r["stage"], r["runtime_kind"]) in passing]
    if not candidates:
        return "no benchmarked file passed the validation gate"
    best = min(candidates, key=lambda r: r["p50_ms"])
    return f"{best['stage']}/{best['artifact']} on {best['runtime']} with {best['threads']} thread(s): p50 {best['p50_ms']:.3f} ms"


def markdown(result: dict[str, Any]) -> str:
    """bench.md: the latency table, budgets and the recommendation."""
    lines = [
        f"# edgecls bench: {result['device']}",
        "",
        "| stage | file | runtime | precision | bytes | threads | load s | p50 ms | p90 ms | p99 ms | mean ms |"
        " images/s | peak RSS MiB | compute bound ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        bound = "" if r.get("compute_bound_ms") is None else f"{r['compute_bound_ms']:.3f}"
        lines.append(
            f"| {r['stage']} | {r['artifact']} | {r['runtime']} | {r['precision']} | {r['bytes']:,} | {r['threads']} |"
            f" {r['load_seconds']:.2f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |"
            f" {r['images_per_second']:.0f} | {r['peak_rss_mib']:.0f} | {bound} |"
        )
    if result.get("parity"):
        lines += ["", "On-device parity (test images scored on the device vs Keras on the host):", ""]
        lines += [f"- {p['artifact']}: top-1 agreement {p['agreement']:.3f} on {p['images']} images" for p in result["parity"]]
    if result.get("budgets"):
        lines += ["", f"Budgets of profile `{result['profile']}`:", ""]
        lines += [f"- {c['what']}: {c['value']} vs {c['budget']}: {'ok' if c['ok'] else 'OVER'}" for c in result["budgets"]]
    lines += ["", f"Recommendation: {result['recommendation']}", ""]
    return "\n".join(lines)


def run_bench(
    run_path: str | Path,
    *,
    device: str = "host",
    profile: str | None = None,
    runs: int = 100,
    warmup: int = 10,
    threads: list[int] | None = None,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
    remote_python: str = "python3",
    parity_images: int = 50,
) -> dict[str, Any]:
    """Benchmark every exported file of a run on `device` and check `profile` budgets.

    Raises:
        ConfigError: bad `runs`, `warmup`, `threads`, device or profile.
        DeviceError: the SSH device is unreachable, refuses the key, or lacks a runtime.
        RunError: nothing exported (or, for an MCU profile, no firmware).
    """
    if runs < 1:
        raise ConfigError(f"`--runs` must be a positive integer; got {runs}.")
    if warmup < 0:
        raise ConfigError(f"`--warmup` must be zero or more; got {warmup}.")
    target = Target.parse(device)
    budgets = load_profile(profile) if profile else None
    run = RunDir(run_path)
    artifacts = [(a["stage"], a, a["path"]) for a in exported_artifacts(run)]
    recorded = run.require_stage("finetune")["inputs"]
    cores = os.cpu_count() or 1
    thread_counts = sorted(set(threads or [1, cores]))
    if any(t < 1 for t in thread_counts):
        raise ConfigError(f"`--threads` must be positive integers; got {thread_counts}.")
    macs = run.require_stage("finetune")["metrics"].get("macs")
    rows, parity = [], []
    if target.kind == "host":
        peak = peak_gemm_macs_per_second()
        for stage, row, path in artifacts:
            for count in thread_counts:
                measured = host_run(path, threads=count, runs=runs, warmup=warmup)
                rows.append(_bench_row(stage, row, measured, count, macs, peak))
        where = f"host ({os.uname().machine}, {cores} cores)"
    else:
        ssh = SSHDevice(target, key=ssh_key, known_hosts=known_hosts, python=remote_python)
        images, reference = _parity_set(run, recorded, parity_images)
        with tempfile.TemporaryDirectory() as local:
            np.save(Path(local) / "images.npy", images)
            folder = ssh.prepare([path for _, _, path in artifacts] + [Path(local) / "images.npy"])
            try:
                for stage, row, path in artifacts:
                    for count in thread_counts:
                        args = [
                            "bench",
                            path.name,
                            "--threads",
                            str(count),
                            "--runs",
                            str(runs),
                            "--warmup",
                            str(warmup),
                        ]
                        measured = ssh.worker(folder, args + ["--mode", recorded["model"]["preprocessing"]], path.name)
                        rows.append(_bench_row(stage, row, measured, count, macs, None))
                    out = f"scores_{stage}_{path.stem}_{path.suffix[1:]}.npy"
                    args = ["scores", path.name, "images.npy", out, "--mode", recorded["model"]["preprocessing"]]
                    ssh.worker(folder, args, path.name)
                    ssh.copy([f"{folder}/{out}"], local, download=True)
                    scores = np.load(Path(local) / out)
                    agreement = float(np.mean(scores.argmax(1) == reference[row["source_stage"]].argmax(1)))
                    parity.append({"artifact": f"{stage}/{row['file']}", "agreement": agreement, "images": len(images)})
            finally:
                ssh.cleanup(folder)
        where = f"{target.host}:{target.port} over SSH"
    result = {"device": where, "profile": profile, "macs": macs, "rows": rows, "parity": parity}
    result["budgets"] = _budget_checks(budgets, rows, run) if budgets else []
    result["passed"] = all(c["ok"] for c in result["budgets"])
    result["recommendation"] = _recommend(run, rows)
    result["int8_vs_fp32"] = _speedups(rows)
    atomic_write_json(run.file("bench.json"), result)
    atomic_write_text(run.file("bench.md"), markdown(result))
    return result


def _bench_row(stage, row, measured, threads, macs, peak) -> dict[str, Any]:
    kind = "litert" if row["format"] == "tflite" else "onnxruntime"
    bound = None if not (macs and peak) else macs / peak * 1000
    return {"stage": stage, "artifact": row["file"], "precision": row["precision"], "bytes": row["bytes"],
            "runtime_kind": kind, **measured, "threads": threads, "compute_bound_ms": bound}  # fmt: skip


def _speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """int8 p50 / fp32 p50 per stage, runtime and thread count (a ratio > 1 means int8 is faster)."""
    index = {(r["stage"], r["runtime_kind"], r["threads"], r["precision"]): r["p50_ms"] for r in rows}
    out = []
    for (stage, kind, threads, precision), p50 in index.items():
        fp32 = index.get((stage, kind, threads, "fp32"))
        if precision == "int8" and fp32:
            out.append({"stage": stage, "runtime": kind, "threads": threads, "fp32_over_int8": fp32 / p50})
    return out


def _parity_set(run: RunDir, recorded: dict[str, Any], count: int):
    """uint8 test images and the host Keras scores of every source stage, for on-device parity."""
    from edgecls.config import DataConfig
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.optimize import load_stage_model

    per_class = -(-count // len(recorded["class_names"]))
    cfg = DataConfig(**{**recorded["data_config"], "test_limit_per_class": per_class})
    split, _ = load_split(cfg, recorded["model"]["input_size"], recorded["seed"], "test")
    images = split.images[:count]
    floats = preprocess_numpy(images, recorded["model"]["preprocessing"])
    stages = {artifact["source_stage"] for artifact in exported_artifacts(run)}
    reference = {s: load_stage_model(run, s)[0].predict(floats, verbose=0) for s in stages}
    return images, reference
