"""Helpers shared by the benchmark scripts: machine facts and docs/benchmarks.md sections."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts import edgecls from this checkout
DOC = ROOT / "docs" / "benchmarks.md"
SHARED = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
RESULTS = ROOT / "bench" / "results"


def machine() -> str:
    """One line: CPU model and its widest vector instructions, cores, memory, Python.

    The vector width is named because hosts of one model name differ in it ("AMD EPYC" has been both an AVX2-only
    and an AVX-512 host here), and TensorFlow's speed depends on it (docs/benchmarks.md, "oneDNN").
    """
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    cpu_line = f"{cpu} ({vector})" if vector else cpu
    return f"{cpu_line}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, no GPU, Python {platform.python_version()}"


def cpu_model(machine_line: str) -> str:
    """The CPU model of a `machine()` line, for rows of one study measured on different hosts."""
    return machine_line.split(",", 1)[0]


def git_sha() -> str:
    """The edgecls commit measured: $EDGECLS_BENCH_COMMIT (for runs from a snapshot), else this checkout's HEAD."""
    if os.environ.get("EDGECLS_BENCH_COMMIT"):
        return os.environ["EDGECLS_BENCH_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "uncommitted"


def invocation() -> str:
    """The command line of the running bench script, as a user types it from the checkout (for provenance lines)."""
    return shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def today() -> str:
    return dt.date.today().isoformat()


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section between `<!-- name:begin -->` and `<!-- name:end -->` of `doc`, and print it."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nEvery number here comes with the command that produced it.\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(body)


def recorded_rows(study: str) -> dict[str, dict]:
    """The rows a study measured in earlier sittings, as committed in `bench/results/STUDY.json`.

    Run folders (bench-runs/) are not committed, so a fresh checkout has none. A study that adds
    rows over several sittings (the recipe study, the model zoo) keeps each row's figures, with its
    command, date, commit and machine, in that file, and rewriting its docs section never drops a
    row that was measured elsewhere.
    """
    path = RESULTS / f"{study}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_rows(study: str, measured: dict[str, dict]) -> dict[str, dict]:
    """Put freshly measured rows over the recorded ones (a re-run replaces its row), save, return them all."""
    rows = {**recorded_rows(study), **measured}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{study}.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    return rows


def copy_run(source: Path, target: Path) -> None:
    """A fresh copy of a finished run without what later stages wrote (exports, validation, firmware, bench, report)
    and without their manifest entries, so that `validate` of the copy does not look for files that were left behind."""
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    later = ("export", "validate", "firmware", "bench", "report")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("export", "validate.*", "firmware", "bench*", "report"))
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["stages"] = {name: entry for name, entry in manifest["stages"].items() if name.split("/")[0] not in later}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def run_edgecls(commands: list[list[str]]) -> dict[str, float]:
    """Run `edgecls ...` command lines in order (each printed first); the wall seconds of each subcommand."""
    import shlex
    import sys
    import time

    executable = str(Path(sys.executable).with_name("edgecls"))
    seconds = {}
    for command in commands:
        print("$", shlex.join(command), flush=True)
        start = time.perf_counter()
        subprocess.run([executable, *command[1:]], cwd=ROOT, check=True)
        seconds[command[1]] = time.perf_counter() - start
    return seconds


class FinalStage:
    """What the later stages measured of a run's final (most optimized exported) stage, read through edgecls' records."""

    def __init__(self, path: Path) -> None:
        from edgecls.export import choose_exported_stage
        from edgecls.records import bench_record, firmware_records, validation_record
        from edgecls.run import RunDir

        run = RunDir(path)
        self.stage = choose_exported_stage(run, None)
        validation, bench = validation_record(run), bench_record(run)
        self.validation = [r for r in (validation.rows if validation else ()) if r.stage == self.stage]
        self.bench = [r for r in (bench.rows if bench else ()) if r.stage == self.stage and r.status == "pass"]
        self.firmware = next((f for f in firmware_records(run) if f.stage == self.stage), None)

    def accuracy(self, runtime: str, precision: str) -> float | None:
        """Test accuracy of the stage's `precision` file on `runtime` (`litert`, `onnxruntime`, `keras`)."""
        return next((r.accuracy for r in self.validation if (r.runtime, r.precision) == (runtime, precision)), None)

    def int8_bytes(self) -> int | None:
        return next((r.bytes for r in self.validation if (r.runtime, r.precision) == ("litert", "int8")), None)

    def p50_ms(self, precision: str, runtime_kind: str = "litert", threads: int = 1) -> float | None:
        """The bench median of the stage's `precision` file on `runtime_kind` at `threads`."""
        found = (r.p50_ms for r in self.bench if (r.precision, r.runtime_kind, r.threads) == (precision, runtime_kind, threads))
        return next(found, None)
