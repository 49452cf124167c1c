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

from edgecls.config import BenchConfig
from edgecls.devices import DeviceProfile, load_profile
from edgecls.errors import ConfigError, DeviceError, RunError, UnsavedResultsError
from edgecls.escape import escape_markdown
from edgecls.records import ExportedFile, exported_files, firmware_records, validation_record
from edgecls.run import FinetuneRecord, RunDir, atomic_write_json, atomic_write_text, check_writable

WORKER = Path(__file__).with_name("worker.py")
PREPROCESSING = Path(__file__).with_name("preprocessing.py")  # the worker's one import from edgecls, copied beside it


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
            if at and _safe_name(user) and _safe_name(host) and (not colon or (port.isdigit() and 0 < int(port) < 65536)):
                return cls("ssh", user, host, int(port) if colon else 22)
        raise ConfigError(
            f"`--device` must be `host` or `ssh://user@host[:port]` (user and host of letters, digits, `.`, `_`, `-`,"
            f" not starting with `-`); got {text!r}."
        )


def _safe_name(name: str) -> bool:
    """A user or host name that `ssh` cannot mistake for an option: [A-Za-z0-9._-], not starting with `-`."""
    return bool(name) and not name.startswith("-") and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


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
    try:
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        result = None
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
            # with a pinned known_hosts file an unknown key is refused, never added to it
            "StrictHostKeyChecking=" + ("yes" if known_hosts else "accept-new"),
        ]
        if known_hosts:
            self.options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if key:
            self.options += ["-i", key, "-o", "IdentitiesOnly=yes"]
        self.address = f"{target.user}@{target.host}"
        self.where = f"{target.host}:{target.port}"

    def ssh(self, command: str, timeout: int = 1800) -> subprocess.CompletedProcess:
        args = ["ssh", *self.options, "-p", str(self.target.port), "--", self.address, command]
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
                "--",
                *[f"{self.address}:{s}" for s in sources],
                folder,
            ]
        else:
            args = ["scp", *self.options, "-P", str(self.target.port), "--", *map(str, sources), f"{self.address}:{folder}/"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise DeviceError(f"cannot copy files to/from {self.where}: {done.stderr.strip()[-200:]}")

    def prepare(self, files: list[Path]) -> str:
        """Make a work folder on the device and copy the worker and `files` there; returns its path."""
        done = self.ssh("mktemp -d /tmp/edgecls.XXXXXX", timeout=self.timeout + 15)
        folder = done.stdout.strip()
        if done.returncode != 0 or not folder:
            raise DeviceError(f"{self.where}: cannot create a work folder ({done.stderr.strip()[-200:]})")
        self.copy([WORKER, PREPROCESSING, *files], folder)
        return folder

    def worker(self, folder: str, args: list[str], label: str) -> dict[str, Any]:
        command = " ".join(shlex.quote(a) for a in [self.python, f"{folder}/worker.py", *args])
        return _worker_json(self.ssh(f"cd {shlex.quote(folder)} && {command}"), f"{self.where} ({label})")

    def cleanup(self, folder: str) -> None:
        self.ssh(f"rm -rf {shlex.quote(folder)}", timeout=self.timeout + 15)


def _budget_checks(profile: DeviceProfile, rows: list[dict[str, Any]], run: RunDir) -> list[dict[str, Any]]:
    checks = []
    if profile.kind == "mcu":
        for firmware in firmware_records(run):
            measured = (("flash", firmware.flash_bytes, profile.flash_bytes), ("arena", firmware.arena_bytes, profile.ram_bytes))
            for what, value, budget in measured:
                checks.append({"what": f"{what} {firmware.stage}", "value": value, "budget": budget, "ok": value <= budget})
        if not checks:
            raise RunError(f"profile {profile.name} is a microcontroller: run `edgecls firmware {run.path}` first.")
        return checks
    for row in rows:
        if "p50_ms" not in row:
            continue  # a failed row has no measurements
        label = f"{row['artifact']} @{row['threads']}t"
        for key, value, budget in (
            ("bytes", row["bytes"], profile.max_model_bytes),
            ("p50_ms", row["p50_ms"], profile.max_p50_ms),
            ("peak_rss_mib", row["peak_rss_mib"], profile.max_ram_mib),
        ):
            if budget is not None:
                checks.append({"what": f"{key} {label}", "value": value, "budget": budget, "ok": value <= budget})
    return checks


def _recommend(run: RunDir, rows: list[dict[str, Any]]) -> str:
    validated = validation_record(run)
    if validated is None:
        return "run `edgecls validate` first: only files that pass the validation gate are recommended"
    passing = {(r.artifact, r.stage, r.runtime) for r in validated.rows if r.status == "pass"}
    candidates = [r for r in rows if r["status"] == "pass" and (r["artifact"], r["stage"], r["runtime_kind"]) in passing]
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
        if r.get("status") == "fail":
            threads = "" if r["threads"] is None else r["threads"]
            lines.append(f"| {r['stage']} | {r['artifact']} | | {r['precision']} | {r['bytes']:,} | {threads} |"
                         f" **FAIL**: {escape_markdown(r['reason'])} | | | | | | | |")  # fmt: skip
            continue
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
    run_path: str | Path, cfg: BenchConfig | None = None, *, parity_images: int = 50, trust: bool = False
) -> dict[str, Any]:
    """Benchmark every exported file of a run on `cfg.device` and check `cfg.profile`'s budgets.

    Args:
        run_path: A run folder with exports.
        cfg: The `bench` config section; None for the defaults (this host, no profile).
        parity_images: Test images scored on an SSH device against the host's Keras model.
        trust: Load Keras models with Lambda layers (`--trust-run`; SSH parity only).

    Raises:
        ConfigError: bad `runs`, `warmup`, `threads`, device or profile.
        DeviceError: the SSH device is unreachable, refuses the key, or lacks a runtime.
        RunError: nothing exported (or, for an MCU profile, no firmware).
    """
    cfg = cfg or BenchConfig()
    runs, warmup, profile = cfg.runs, cfg.warmup, cfg.profile
    target = Target.parse(cfg.device)
    budgets = load_profile(profile) if profile else None
    cores = os.cpu_count() or 1
    thread_counts = sorted(set(cfg.threads or (1, cores)))
    run = RunDir(run_path)
    record = run.finetune_record()
    check_writable(run.path, "fix the run folder's permissions or free some space")  # before the measurements
    artifacts, rows = [], []
    for artifact in exported_files(run):
        problem = artifact.problem()
        if problem:  # never measured, never recommended
            rows.append(_failed_row(artifact, problem))
        else:
            artifacts.append((artifact.stage, artifact, artifact.path))
    macs = record.macs
    parity = []
    if target.kind == "host":
        peak = peak_gemm_macs_per_second()
        for stage, row, path in artifacts:
            for count in thread_counts:
                try:
                    measured = host_run(path, threads=count, runs=runs, warmup=warmup)
                except DeviceError as exc:  # the runtime refused or crashed on this file: a failed row
                    rows.append(_failed_row(row, str(exc), count))
                    continue
                rows.append(_bench_row(stage, row, measured, count, macs, peak))
        where = f"host ({os.uname().machine}, {cores} cores)"
    else:
        ssh = SSHDevice(target, key=cfg.ssh_key, known_hosts=cfg.known_hosts, python=cfg.remote_python)
        images, reference = _parity_set(run, record, parity_images, trust)
        mode = record.preprocessing
        with tempfile.TemporaryDirectory() as local:
            np.save(Path(local) / "images.npy", images)
            folder = ssh.prepare([path for _, _, path in artifacts] + [Path(local) / "images.npy"])
            try:
                for stage, row, path in artifacts:
                    for count in thread_counts:
                        args = ["bench", path.name, "--threads", str(count), "--runs", str(runs), "--warmup", str(warmup)]
                        measured = ssh.worker(folder, args + ["--mode", mode], path.name)
                        rows.append(_bench_row(stage, row, measured, count, macs, None))
                    out = f"scores_{stage}_{path.stem}_{path.suffix[1:]}.npy"
                    ssh.worker(folder, ["scores", path.name, "images.npy", out, "--mode", mode], path.name)
                    ssh.copy([f"{folder}/{out}"], local, download=True)
                    scores = np.load(Path(local) / out)
                    agreement = float(np.mean(scores.argmax(1) == reference[row.source_stage].argmax(1)))
                    parity.append({"artifact": f"{stage}/{row.file}", "agreement": agreement, "images": len(images)})
            finally:
                ssh.cleanup(folder)
        where = f"{target.host}:{target.port} over SSH"
    result = {"device": where, "profile": profile, "macs": macs, "rows": rows, "parity": parity}
    result["budgets"] = _budget_checks(budgets, rows, run) if budgets else []
    result["passed"] = all(c["ok"] for c in result["budgets"]) and all(r["status"] == "pass" for r in rows)
    result["recommendation"] = _recommend(run, rows)
    result["int8_vs_fp32"] = _speedups(rows)
    headline = {k: result[k] for k in ("device", "profile", "passed", "recommendation")}
    keys = ("artifact", "stage", "runtime_kind", "precision", "bytes", "threads", "p50_ms", "status", "reason")
    headline["rows"] = [{k: r.get(k) for k in keys} for r in rows]
    headline["budgets"] = result["budgets"]
    try:
        atomic_write_json(run.file("bench.json"), result)
        atomic_write_text(run.file("bench.md"), markdown(result))
        run.record_stage("bench", seed=record.seed, inputs={"artifacts": _inputs(rows)},
                         outputs=["bench.json", "bench.md"], metrics=headline, warnings=[])  # fmt: skip
    except RunError as exc:
        raise UnsavedResultsError(f"the benchmark finished, but its results were not saved: {exc}", result) from None
    return result


def _inputs(rows: list[dict[str, Any]]) -> dict[str, str]:
    """stage/file -> sha256 of the exported files a bench or validate result is about."""
    return {f"{r['stage']}/{r['artifact']}": r.get("sha256", "") for r in rows}


def _failed_row(artifact: ExportedFile, reason: str, threads: int | None = None) -> dict[str, Any]:
    """A bench row for a file that was not measured (changed since export, or its runtime failed)."""
    return {"stage": artifact.stage, "artifact": artifact.file, "precision": artifact.precision, "bytes": artifact.bytes,
            "sha256": artifact.sha256, "threads": threads, "status": "fail", "reason": reason}  # fmt: skip


def _bench_row(stage, row: ExportedFile, measured, threads, macs, peak) -> dict[str, Any]:
    kind = "litert" if row.format == "tflite" else "onnxruntime"
    bound = None if not (macs and peak) else macs / peak * 1000
    return {"stage": stage, "artifact": row.file, "precision": row.precision, "bytes": row.bytes,
            "sha256": row.sha256, "runtime_kind": kind, **measured, "threads": threads, "compute_bound_ms": bound,
            "status": "pass"}  # fmt: skip


def _speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """int8 p50 / fp32 p50 per stage, runtime and thread count (a ratio > 1 means int8 is faster)."""
    index = {(r["stage"], r["runtime_kind"], r["threads"], r["precision"]): r["p50_ms"] for r in rows if r["status"] == "pass"}
    out = []
    for (stage, kind, threads, precision), p50 in index.items():
        fp32 = index.get((stage, kind, threads, "fp32"))
        if precision == "int8" and fp32:
            out.append({"stage": stage, "runtime": kind, "threads": threads, "fp32_over_int8": fp32 / p50})
    return out


def _parity_set(run: RunDir, record: FinetuneRecord, count: int, trust: bool):
    """uint8 test images and the host Keras scores of every source stage, for on-device parity."""
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy

    per_class = -(-count // len(record.class_names))
    split, _ = load_split(record.data(test_limit_per_class=per_class), record.input_size, record.seed, "test")
    images = split.images[:count]
    floats = preprocess_numpy(images, record.preprocessing)
    stages = {artifact.source_stage for artifact in exported_files(run)}
    reference = {s: run.load_model(s, trust=trust)[0].predict(floats, verbose=0) for s in stages}
    return images, reference
