"""Per-layer int8 debugging and accuracy-aware fallback (issue 13) on real fine-tuned models.

For each source run (a finished `edgecls finetune` of MobileNet v1 0.25 @128 px on the full JPEG
CIFAR-10 of ../shared), three copies are exported and validated on all 10,000 test images:

- `per-channel`: post-training int8 with per-channel weights (the default), with `--inspect`;
- `per-tensor`: one weight scale per tensor, with `--inspect` (the collapse docs/benchmarks.md records);
- `per-tensor-fallback`: the same with `--fallback auto --max-int8-drop 2` (at most 3 float layers).

Everything goes through the CLI as a user would run it. Latency is `edgecls bench` (LiteRT, 1 thread)
in a separate `--latency` pass on a quiet machine.

Usage:
    python bench/int8_fallback.py SOURCE_RUN [SOURCE_RUN ...] [--work bench-runs/int8-fallback]
    python bench/int8_fallback.py --latency [--work ...]   # on a quiet machine
    python bench/int8_fallback.py --write [--work ...]     # docs/benchmarks.md section from the finished runs
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from common import ROOT, copy_run, git_sha, machine, run_edgecls, today, write_section

EDGECLS = [str(Path(sys.executable).with_name("edgecls"))]
VARIANTS = {
    "per-channel": ["--inspect"],
    "per-tensor": ["--granularity", "per-tensor", "--inspect"],
    "per-tensor-fallback": ["--granularity", "per-tensor", "--inspect", "--fallback", "auto", "--max-int8-drop", "2"],
}


SOURCES = {  # how the source runs of docs/benchmarks.md were made
    "default-job": "edgecls finetune --data ../shared/datasets/cifar10-jpeg.tar.gz --name default-job --runs-dir bench-runs",
    "old-recipe-6ep": "edgecls finetune --data ../shared/datasets/cifar10-jpeg.tar.gz --epochs 6 --warmup-epochs 1 --lr 1e-4 "
    "--set train.batchnorm=frozen --name old-recipe-6ep --runs-dir bench-runs",
}


def commands(source: Path, work: Path, variant: str) -> list[list[str]]:
    run = work / f"{source.name}-{variant}"
    run = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    return [
        ["edgecls", "export", str(run), "--int8", "--stage", "finetune", *VARIANTS[variant]],
        ["edgecls", "validate", str(run), "--tflm-images", "0", "--max-int8-drop", "100"],
    ]


def latency_command(run: Path) -> list[str]:
    run = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    return ["edgecls", "bench", str(run), "--threads", "1"]


def run_variant(source: Path, work: Path, variant: str) -> None:
    target = work / f"{source.name}-{variant}"
    if (target / "validate.json").exists():
        return
    copy_run(source, target)
    run_edgecls(commands(source, work, variant))


def collect(run: Path) -> dict:
    export = json.loads((run / "export/finetune/export.json").read_text())
    validate = json.loads((run / "validate.json").read_text())
    debug = json.loads((run / "export/finetune/quant_debug.json").read_text())
    bench = json.loads((run / "bench.json").read_text()) if (run / "bench.json").exists() else {"rows": []}
    rows = {}
    for artifact in export["artifacts"]:
        check = next(r for r in validate["rows"] if r["artifact"] == artifact["file"] and r["runtime"] != "tflite-micro")
        timed = next((r for r in bench["rows"] if r.get("artifact") == artifact["file"] and r.get("p50_ms")), {})
        rows[artifact["file"]] = {
            "bytes": artifact["bytes"], "accuracy": check["accuracy"],
            "fallback": artifact.get("fallback"), "p50": timed.get("p50_ms"),
        }  # fmt: skip
    worst = {fmt: [(r["layer"], r["sqnr_db"]) for r in layers[:3]] for fmt, layers in debug["layers"].items()}
    outliers = {fmt: sum(r["outlier"] for r in layers) for fmt, layers in debug["layers"].items()}
    return {"rows": rows, "worst": worst, "outliers": outliers}


def write_doc(work: Path, sources: list[str]) -> None:
    lines = [
        "## Per-layer int8 debugging and accuracy-aware fallback (issue 13)",
        "",
        f"- Measured {today()} at edgecls {git_sha()} on {machine()}.",
        "- Data: the full JPEG CIFAR-10 of ../shared; accuracies on all 10,000 test images (`edgecls validate`), the "
        "fallback's own choices on at most 100 validation images a class.",
        "- Reproduce: `python bench/int8_fallback.py SOURCE_RUN` then `python bench/int8_fallback.py --write`; the commands "
        "per row are below the table.",
        "",
        "| source model | int8 weights | int8 TFLite acc | int8 ONNX acc | float layers (TFLite / ONNX) | TFLite bytes | "
        "TFLite p50 ms | worst layers TFLite (SQNR dB) | worst layers ONNX | outliers T/O |",
        "|---|---|---:|---:|---|---:|---|---|---|---|",
    ]
    for source in sources:
        for variant in VARIANTS:
            run = work / f"{source}-{variant}"
            if not (run / "validate.json").exists():
                continue
            found = collect(run)
            rows = found["rows"]
            tflite, onnx = rows["model_int8.tflite"], rows["model_int8.onnx"]
            float_acc = rows["model_fp32.tflite"]["accuracy"]
            layers = " / ".join(", ".join((r["fallback"] or {}).get("float_layers", [])) or "none" for r in (tflite, onnx))
            latency = "" if tflite["p50"] is None else f"{tflite['p50']:.3f}"
            worst = {fmt: ", ".join(f"{name} ({db:.1f})" for name, db in items) for fmt, items in found["worst"].items()}
            lines.append(
                f"| {source} (float {float_acc:.4f}) | {variant} | {tflite['accuracy']:.4f} | {onnx['accuracy']:.4f} | {layers} "
                f"| {tflite['bytes']:,} | {latency} | {worst['tflite']} | {worst['onnx']} | "
                f"{found['outliers']['tflite']} / {found['outliers']['onnx']} |"
            )
    lines += ["", "Source runs (MobileNet v1 0.25 @128 px; old-recipe-6ep is the recipe of the documented 0.1001 case):", ""]
    lines += [f"- {name}: `{SOURCES[name]}`" for name in sources if name in SOURCES]
    if not any((work / f"{source}-{variant}" / "bench.json").exists() for source in sources for variant in VARIANTS):
        lines += ["", "Latency: not measured yet (`--latency` needs a quiet machine)."]
    lines += ["", "Commands (per source run and variant):", ""]
    for source in sources:
        for variant in VARIANTS:
            for command in [*commands(Path(source), work, variant), latency_command(work / f"{source}-{variant}")]:
                lines.append(f"- `{shlex.join(command)}`")
    write_section("int8-fallback", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-runs" / "int8-fallback")
    parser.add_argument("--latency", action="store_true", help="time the finished runs' files (a quiet machine)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.latency:
        for run in sorted(p for p in args.work.iterdir() if (p / "validate.json").exists()):
            run_edgecls([latency_command(run)])
        return
    if args.write:
        sources = sorted(p.name.removesuffix("-per-channel") for p in args.work.glob("*-per-channel"))
        write_doc(args.work, sources)
        return
    for source in args.sources:
        for variant in VARIANTS:
            run_variant(source.resolve(), args.work, variant)


if __name__ == "__main__":
    main()
