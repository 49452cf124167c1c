"""The bench stage: latency, throughput and memory of every exported file, on this host, a device or a fleet.

Each file is timed by the self-contained `edgecls.worker` in a child process (on
this host) or over SSH (on a Linux device), at 1 thread and at all cores, with the
field's method (`edgecls.runtimes.LatencyMethod`): the process pinned to its cores,
warm-up runs, then timed windows of at least 2 s; the figure is the median of the
windows' medians, published with their spread and with p50/p90/p99 within them. The
timed region is the inference alone, its input already in the model's type (as
MLPerf Tiny and TFLite's `benchmark_model` time it); the end-to-end figure with the
float<->int8 conversion is reported beside it. Every device's CPU, core count and
library versions are recorded.

The compute bound divides the model's MACs by the runtime's own peak GEMM rate on
the same device and thread count (`edgecls.bench.peak`).

`--device ssh://user@host[:port]` copies the worker and the models to a Linux
device (Raspberry Pi class), runs the same benchmark there with whichever runtime it
has, scores a few test images there (on-device parity with the host's Keras model),
and pulls the JSON back. Several `--device`s or a `--fleet` file are measured in
parallel, one table per device plus a summary; a device that fails is a failed row
of the summary, not a failed fleet.

`--profile NAME` checks the numbers against a device profile's budgets (model
bytes, RAM, p50 latency; flash and arena from `edgecls firmware` for MCUs).
Writes bench.json and bench.md in the run folder.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.bench.fleet import Device, bench_devices
from edgecls.bench.peak import compute_bound_ms, gemm_files, peak_macs_per_second
from edgecls.bench.ssh import SSHDevice, Target
from edgecls.config import BenchConfig
from edgecls.devices import DeviceProfile, load_profile
from edgecls.errors import DeviceError, EdgeclsError, RunError, UnsavedResultsError
from edgecls.escape import escape_markdown
from edgecls.records import ExportedFile, exported_files, firmware_records, validation_record
from edgecls.run import FinetuneRecord, RunDir, atomic_write_json, atomic_write_text, check_writable
from edgecls.runtimes import LatencyMethod, WorkerError, isolated_latency

__all__ = ["SSHDevice", "Target", "markdown", "method_of", "run_bench"]

PEAK_METHOD = LatencyMethod(windows=3, window_seconds=0.5)  # the GEMM peak: a reference, not a published latency
SYSTEM_KEYS = ("machine", "cpu_model", "cpu_count", "versions")


def method_of(cfg: BenchConfig) -> LatencyMethod:
    """The latency method a bench config asks for."""
    return LatencyMethod(windows=cfg.windows, window_seconds=cfg.window_seconds, min_runs=cfg.runs, warmup=cfg.warmup)


class _Session:
    """One device being measured: `measure(file, threads)` on this host or in a work folder over SSH."""

    def __init__(self, device: Device, method: LatencyMethod, files: list[Path]):
        self.device, self.method, self.files = device, method, files
        self.ssh, self.folder = None, None
        target = device.target
        if target.kind == "ssh":
            self.ssh = SSHDevice(target, key=device.key, known_hosts=device.known_hosts, python=device.python)
            self.folder = self.ssh.prepare(files)
            self.where = f"{target.host}:{target.port} over SSH"
        else:
            self.where = f"host ({os.uname().machine}, {os.cpu_count()} cores)"

    def measure(self, path: Path, threads: int, method: LatencyMethod | None = None) -> dict[str, Any]:
        """Worker `bench` result for one file; DeviceError if the runtime refused it or crashed."""
        method = method or self.method
        if self.ssh is None:
            try:
                return isolated_latency(path, threads=threads, method=method)
            except WorkerError as exc:
                raise DeviceError(f"{path.name}: {exc}") from None
        args = ["bench", path.name, "--threads", str(threads), *method.worker_args()]
        return self.ssh.worker(self.folder, args, path.name)

    def scores(self, path: Path, images: Path, mode: str, local: Path) -> np.ndarray:
        """Scores of `images` by `path` on the SSH device (on-device parity)."""
        out = f"scores_{path.parent.name}_{path.stem}_{path.suffix[1:]}.npy"
        self.ssh.worker(self.folder, ["scores", path.name, images.name, out, "--mode", mode], path.name)
        self.ssh.copy([f"{self.folder}/{out}"], str(local), download=True)
        return np.load(local / out)

    def close(self) -> None:
        if self.ssh is not None and self.folder:
            self.ssh.cleanup(self.folder)


def _budget_checks(profile: DeviceProfile, rows: list[dict[str, Any]], run: RunDir, stage: str | None) -> list[dict[str, Any]]:
    """The profile's budgets against the measured rows, or (a microcontroller) the firmware of `stage` (None: all)."""
    checks = []
    if profile.kind == "mcu":
        for firmware in firmware_records(run):
            if stage is not None and firmware.stage != stage:
                continue  # firmware built from another stage is not what this bench is about
            measured = (("flash", firmware.flash_bytes, profile.flash_bytes), ("arena", firmware.arena_bytes, profile.ram_bytes))
            for what, value, budget in measured:
                checks.append({"what": f"{what} {firmware.stage}", "value": value, "budget": budget, "ok": value <= budget})
        if not checks:
            which = f" --stage {stage}" if stage else ""
            raise RunError(f"profile {profile.name} is a microcontroller: run `edgecls firmware {run.path}{which}` first.")
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


def _peaks(session: _Session, gemm: dict[str, Path], thread_counts: list[int]) -> dict[tuple[str, int], float]:
    """(precision, threads) -> the runtime's GEMM multiply-accumulates per second on this device."""
    peaks = {}
    for precision, path in gemm.items():
        for threads in thread_counts:
            try:
                peaks[precision, threads] = peak_macs_per_second(session.measure(path, threads, PEAK_METHOD))
            except DeviceError:
                continue  # no bound for this precision: the column stays empty
    return peaks


def measure_device(
    device: Device,
    cfg: BenchConfig,
    run: RunDir,
    measurable: list[ExportedFile],
    unmeasured: list[dict[str, Any]],
    parity_set: tuple[np.ndarray, dict[str, np.ndarray]] | None,
    scratch: Path,
    gemm: dict[str, Path],
) -> dict[str, Any]:
    """Measure every file on one device and check its profile: that device's result.

    Raises:
        DeviceError: the SSH device is unreachable, refuses the key, or lacks a runtime.
        RunError: an MCU profile without firmware.
    """
    record = run.finetune_record()
    cores = os.cpu_count() or 1
    thread_counts = sorted(set(cfg.threads or (1, cores)))
    budgets = load_profile(device.profile) if device.profile else None
    images_file = scratch / "images.npy"
    files = [a.path for a in measurable] + list(gemm.values())
    session = _Session(device, method_of(cfg), files + ([images_file] if parity_set else []))
    rows, parity = list(unmeasured), []
    try:
        peaks = _peaks(session, gemm, thread_counts)
        for artifact in measurable:
            for threads in thread_counts:
                try:
                    measured = session.measure(artifact.path, threads)
                except DeviceError as exc:
                    if session.ssh is not None:
                        raise  # a remote failure is the device's, reported by the caller
                    rows.append(_failed_row(artifact, str(exc), threads))  # this runtime refused this file
                    continue
                rows.append(_bench_row(artifact, measured, threads, record.macs, peaks.get((artifact.precision, threads))))
            if session.ssh is not None and parity_set is not None:
                images, reference = parity_set
                scores = session.scores(artifact.path, images_file, record.preprocessing, scratch)
                agreement = float(np.mean(scores.argmax(1) == reference[artifact.source_stage].argmax(1)))
                parity.append({"artifact": f"{artifact.stage}/{artifact.file}", "agreement": agreement, "images": len(images)})
    finally:
        session.close()
    system = next(({k: r[k] for k in SYSTEM_KEYS if k in r} for r in rows if r["status"] == "pass"), {})
    method = method_of(cfg)
    result = {"device": session.where, "url": device.url, "status": "measured", "profile": device.profile,
              "macs": record.macs, "system": system, "method": method.__dict__, "rows": rows, "parity": parity,
              "peak_gmacs": {f"{p}@{t}t": round(v / 1e9, 2) for (p, t), v in peaks.items()}}  # fmt: skip
    result["budgets"] = _budget_checks(budgets, rows, run, cfg.stage) if budgets else []
    result["passed"] = all(c["ok"] for c in result["budgets"]) and all(r["status"] == "pass" for r in rows)
    result["recommendation"] = _recommend(run, rows)
    result["int8_vs_fp32"] = _speedups(rows)
    return result


def _failed_device(device: Device, reason: str) -> dict[str, Any]:
    """A fleet member that could not be measured: one failed summary row."""
    return {"device": device.url, "url": device.url, "status": "fail", "reason": reason, "profile": device.profile,
            "rows": [], "parity": [], "budgets": [], "passed": False, "recommendation": "not measured"}  # fmt: skip


def _measure_fleet(devices: list[Device], measure) -> list[dict[str, Any]]:
    """Every device in parallel (one thread each: the work is in child processes and SSH)."""

    def one(device: Device) -> dict[str, Any]:
        try:
            return measure(device)
        except EdgeclsError as exc:  # unreachable, refused key, no runtime, no firmware for its MCU profile
            return _failed_device(device, str(exc))

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        return list(pool.map(one, devices))


def summary_row(result: dict[str, Any]) -> dict[str, Any]:
    """One line of the fleet summary: the device, whether it passed, its fastest 1-thread int8 latency."""
    measured = [r for r in result["rows"] if r["status"] == "pass" and r.get("threads") == 1]
    int8 = [r for r in measured if r["precision"] == "int8"] or measured
    best = min(int8, key=lambda r: r["p50_ms"], default=None)
    return {"device": result["device"], "url": result["url"], "status": result["status"], "passed": result["passed"],
            "reason": result.get("reason"), "profile": result["profile"], "cpu_model": result.get("system", {}).get("cpu_model"),
            "best": None if best is None else f"{best['stage']}/{best['artifact']} ({best['runtime_kind']})",
            "best_p50_ms": None if best is None else best["p50_ms"],
            "failed_rows": sum(r["status"] != "pass" for r in result["rows"])}  # fmt: skip


def run_bench(
    run_path: str | Path, cfg: BenchConfig | None = None, *, parity_images: int = 50, trust: bool = False
) -> dict[str, Any]:
    """Benchmark every exported file of a run (or of `cfg.stage`) on each of `cfg`'s devices and check their budgets.

    One device gives that device's result; several (or a fleet file) are measured in
    parallel and give `{"devices": [...], "summary": [...]}`, where a device that cannot
    be measured is a failed summary row.

    Args:
        run_path: A run folder with exports.
        cfg: The `bench` config section; None for the defaults (this host, no profile).
        parity_images: Test images scored on an SSH device against the host's Keras model.
        trust: Load Keras models with Lambda layers (`--trust-run`; SSH parity only).

    Raises:
        ConfigError: bad method, threads, device, fleet file or profile.
        DeviceError: the one SSH device is unreachable, refuses the key, or lacks a runtime.
        RunError: nothing exported (or, for an MCU profile, no firmware).
    """
    cfg = cfg or BenchConfig()
    devices = bench_devices(cfg)
    for device in devices:
        if device.profile:
            load_profile(device.profile)  # a bad profile is a config error before anything is measured
    run = RunDir(run_path)
    record = run.finetune_record()
    check_writable(run.path, "fix the run folder's permissions or free some space")  # before the measurements
    measurable, unmeasured = [], []
    for artifact in exported_files(run, cfg.stage):
        problem = artifact.problem()
        if problem:  # never measured, never recommended
            unmeasured.append(_failed_row(artifact, problem))
        else:
            measurable.append(artifact)
    needs_parity = any(d.target.kind == "ssh" for d in devices) and measurable
    parity_set = _parity_set(run, record, measurable, parity_images, trust) if needs_parity else None
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if parity_set is not None:
            np.save(scratch / "images.npy", parity_set[0])
        gemm = gemm_files(scratch)

        def measure(device: Device) -> dict[str, Any]:
            return measure_device(device, cfg, run, measurable, unmeasured, parity_set, scratch, gemm)

        if len(devices) == 1:
            result = measure(devices[0])
        else:
            results = _measure_fleet(devices, measure)
            result = {"devices": results, "summary": [summary_row(r) for r in results],
                      "passed": all(r["passed"] for r in results)}  # fmt: skip
    _save(run, record, result)
    return result


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `bench` metrics (`records.BenchRecord`): rows and budgets of every device, each row naming it."""
    results = result.get("devices", [result])
    keys = ("artifact", "stage", "runtime_kind", "precision", "bytes", "threads", "p50_ms", "status", "reason")
    rows = [{**{k: r.get(k) for k in keys}, "device": d["url"]} for d in results for r in d["rows"]]
    rows += [{"artifact": "", "stage": "", "precision": "", "bytes": 0, "status": "fail", "device": d["url"],
              "reason": d["reason"]} for d in results if d["status"] == "fail"]  # fmt: skip
    budgets = [{**c, "what": c["what"] if len(results) == 1 else f"{d['url']}: {c['what']}"} for d in results for c in d["budgets"]]
    return {"device": ", ".join(d["device"] for d in results), "profile": results[0]["profile"], "passed": result["passed"],
            "recommendation": results[0]["recommendation"], "rows": rows, "budgets": budgets}  # fmt: skip


def _save(run: RunDir, record: FinetuneRecord, result: dict[str, Any]) -> None:
    try:
        atomic_write_json(run.file("bench.json"), result)
        atomic_write_text(run.file("bench.md"), markdown(result))
        all_rows = [r for d in result.get("devices", [result]) for r in d["rows"]]
        run.record_stage("bench", seed=record.seed, inputs={"artifacts": _inputs(all_rows)},
                         outputs=["bench.json", "bench.md"], metrics=_headline(result), warnings=[])  # fmt: skip
    except RunError as exc:
        raise UnsavedResultsError(f"the benchmark finished, but its results were not saved: {exc}", result) from None


def _device_markdown(result: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} edgecls bench: {escape_markdown(result['device'])}", ""]
    if result["status"] == "fail":
        return lines + [f"**FAIL**: {escape_markdown(result['reason'])}", ""]
    system, method = result.get("system", {}), result.get("method", {})
    if system:
        versions = ", ".join(f"{k} {v}" for k, v in system.get("versions", {}).items())
        cpu = escape_markdown(str(system.get("cpu_model")))
        lines += [f"CPU: {cpu} ({system.get('machine')}, {system.get('cpu_count')} cores); {escape_markdown(versions)}.", ""]
    if method:
        lines += [f"Method: {method['warmup']} warm-up runs, then {method['windows']} windows of at least"
                  f" {method['window_seconds']:g} s and {method['min_runs']} runs, process pinned to its cores;"
                  " p50 is the median of the windows' medians, spread their range over it; inference only"
                  " (input in the model's type), end-to-end adds the float<->int8 conversion.", ""]  # fmt: skip
    lines += [
        "| stage | file | runtime | precision | bytes | threads | load s | p50 ms | spread % | p90 ms | p99 ms |"
        " end-to-end p50 ms | images/s | peak RSS MiB | compute bound ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r.get("status") == "fail":
            threads = "" if r["threads"] is None else r["threads"]
            lines.append(f"| {r['stage']} | {r['artifact']} | | {r['precision']} | {r['bytes']:,} | {threads} |"
                         f" **FAIL**: {escape_markdown(r['reason'])} | | | | | | | | |")  # fmt: skip
            continue
        bound = "" if r.get("compute_bound_ms") is None else f"{r['compute_bound_ms']:.3f}"
        lines.append(
            f"| {r['stage']} | {r['artifact']} | {r['runtime']} | {r['precision']} | {r['bytes']:,} | {r['threads']} |"
            f" {r['load_seconds']:.2f} | {r['p50_ms']:.3f} | {r['window_spread_pct']:.1f} | {r['p90_ms']:.3f} |"
            f" {r['p99_ms']:.3f} | {r['end_to_end_p50_ms']:.3f} | {r['images_per_second']:.0f} | {r['peak_rss_mib']:.0f} |"
            f" {bound} |"
        )
    if result.get("peak_gmacs"):
        peaks = ", ".join(f"{k} {v:g}" for k, v in result["peak_gmacs"].items())
        lines += ["", f"Runtime GEMM peak (GMAC/s, LiteRT, this device): {peaks}. A bound above the measurement is not shown."]
    if result.get("parity"):
        lines += ["", "On-device parity (test images scored on the device vs Keras on the host):", ""]
        lines += [f"- {p['artifact']}: top-1 agreement {p['agreement']:.3f} on {p['images']} images" for p in result["parity"]]
    if result.get("budgets"):
        lines += ["", f"Budgets of profile `{result['profile']}`:", ""]
        lines += [f"- {c['what']}: {c['value']} vs {c['budget']}: {'ok' if c['ok'] else 'OVER'}" for c in result["budgets"]]
    return lines + ["", f"Recommendation: {result['recommendation']}", ""]


def markdown(result: dict[str, Any]) -> str:
    """bench.md: per device, the latency table, budgets and recommendation; for a fleet, a summary first."""
    if "devices" not in result:
        return "\n".join(_device_markdown(result, "#"))
    lines = [f"# edgecls bench: a fleet of {len(result['devices'])} devices", ""]
    lines += ["| device | status | profile | CPU | fastest 1-thread file | p50 ms | failed rows |", "|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        status = "pass" if s["passed"] else ("**FAIL**: " + escape_markdown(s["reason"]) if s["reason"] else "**FAIL**")
        p50 = "" if s["best_p50_ms"] is None else f"{s['best_p50_ms']:.3f}"
        cpu = escape_markdown(str(s["cpu_model"] or ""))
        lines.append(f"| {escape_markdown(s['device'])} | {status} | {s['profile'] or ''} | {cpu} |"
                     f" {s['best'] or ''} | {p50} | {s['failed_rows']} |")  # fmt: skip
    lines.append("")
    for device in result["devices"]:
        lines += _device_markdown(device, "##")
    return "\n".join(lines)


def _inputs(rows: list[dict[str, Any]]) -> dict[str, str]:
    """stage/file -> sha256 of the exported files a bench or validate result is about."""
    return {f"{r['stage']}/{r['artifact']}": r.get("sha256", "") for r in rows}


def _failed_row(artifact: ExportedFile, reason: str, threads: int | None = None) -> dict[str, Any]:
    """A bench row for a file that was not measured (changed since export, or its runtime failed)."""
    return {"stage": artifact.stage, "artifact": artifact.file, "precision": artifact.precision, "bytes": artifact.bytes,
            "sha256": artifact.sha256, "threads": threads, "status": "fail", "reason": reason}  # fmt: skip


def _bench_row(row: ExportedFile, measured: dict[str, Any], threads: int, macs: int | None, peak: float | None) -> dict[str, Any]:
    kind = "litert" if row.format == "tflite" else "onnxruntime"
    bound = compute_bound_ms(macs, peak, measured["p50_ms"])
    return {"stage": row.stage, "artifact": row.file, "precision": row.precision, "bytes": row.bytes,
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


def _parity_set(run: RunDir, record: FinetuneRecord, artifacts: list[ExportedFile], count: int, trust: bool):
    """uint8 test images and the host Keras scores of the artifacts' source stages, for on-device parity."""
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy

    per_class = -(-count // len(record.class_names))
    split, _ = load_split(record.data(test_limit_per_class=per_class), record.input_size, record.seed, "test")
    images = split.images[:count]
    floats = preprocess_numpy(images, record.preprocessing)
    stages = {artifact.source_stage for artifact in artifacts}
    reference = {s: run.load_model(s, trust=trust)[0].predict(floats, verbose=0) for s in stages}
    return images, reference
