"""Channel pruning on the device (issue 12): what removing 30 % of the channels buys, and what it costs.

Each variant copies a finished default-recipe run (MobileNet v1 0.25 @128 px, full JPEG CIFAR-10 of
../shared), removes channels with `edgecls optimize --prune-channels`, recovers, exports int8
(post-training, per-channel), validates on all 10,000 test images, measures the TFLite Micro arena
(`edgecls firmware`) and host latency (`edgecls bench`, LiteRT, 1 thread). The unpruned baseline goes
through the same export, firmware and bench. Run it on a quiet machine (bench times things).

Usage:
    python bench/channels.py SOURCE_RUN [--only NAME ...] [--work bench-runs/channels]
    python bench/channels.py --write [--work ...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from common import ROOT, copy_run, git_sha, machine, run_edgecls, today, write_section

EDGECLS = str(Path(sys.executable).with_name("edgecls"))
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "unpruned": ("the fine-tuned model, no pruning", []),
    "ch30-l1": (
        "30 % of the channels, L1 norm of the filters, widths multiples of 8 (the default)",
        ["--prune-channels", "0.3", "--channel-criterion", "l1"],
    ),
    "ch30-l1-odd": (
        "30 %, L1, exact widths (45, 90, 179, ...)",
        ["--prune-channels", "0.3", "--channel-criterion", "l1", "--set", "optimize.channel_round_to=1"],
    ),
    "ch30-bn": ("30 %, BatchNorm |scale|", ["--prune-channels", "0.3", "--channel-criterion", "bn"]),
    "ch30-l1-teacher": (
        "30 %, L1, recovered by distillation from the unpruned model",
        ["--prune-channels", "0.3", "--channel-criterion", "l1", "--set", "optimize.channel_teacher=true"],
    ),
    "mag50": ("magnitude pruning to 50 % sparsity (TFMOT), for comparison", ["--prune", "0.5"]),
}


def commands(run: Path, flags: list[str]) -> list[list[str]]:
    steps = [["edgecls", "optimize", str(run), *flags]] if flags else []
    return steps + [
        ["edgecls", "export", str(run), "--int8"],
        ["edgecls", "validate", str(run), "--tflm-images", "0", "--max-int8-drop", "100"],
        ["edgecls", "firmware", str(run)],
    ]


def latency_command(run: Path) -> list[str]:
    return ["edgecls", "bench", str(run), "--threads", "1"]


def run_variant(source: Path, work: Path, name: str) -> None:
    run = work / name
    if (run / "firmware").is_dir():
        return
    copy_run(source, run)
    timings = run_edgecls(commands(run, VARIANTS[name][1]))
    (run / "bench-timings.json").write_text(json.dumps(timings))


def collect(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    stage = next((s for s in ("channels", "prune") if s in manifest), "finetune")
    validate = json.loads((run / "validate.json").read_text())["rows"]
    bench = json.loads((run / "bench.json").read_text()) if (run / "bench.json").exists() else {"rows": []}
    firmware = json.loads(next((run / "firmware").glob("*/firmware.json")).read_text())
    int8 = next(r for r in validate if r["artifact"] == "model_int8.tflite" and r["runtime"] == "litert")
    fp32 = next(r for r in validate if r["artifact"] == "model_fp32.tflite")
    rows = bench["rows"] if isinstance(bench, dict) else bench
    latency = next((r for r in rows if r.get("artifact") == "model_int8.tflite" and r.get("p50_ms")), {"p50_ms": None})
    metrics = manifest[stage]["metrics"] if stage == "channels" else {}
    timings = json.loads((run / "bench-timings.json").read_text())
    return {
        "macs": metrics.get("macs", json.loads((run / "metrics.json").read_text()).get("macs")),
        "float": fp32["accuracy"],
        "int8": int8["accuracy"],
        "bytes": int8["bytes"],
        "arena": firmware["arena_bytes_measured"],
        "p50": latency["p50_ms"],
        "optimize_s": timings.get("optimize"),
    }


def write_doc(work: Path) -> None:
    found = {name: collect(work / name) for name in VARIANTS if (work / name / "firmware").is_dir()}
    base = found.get("unpruned")
    lines = [
        "## Channel pruning on the device (issue 12)",
        "",
        f"- Measured {today()} at edgecls {git_sha()} on {machine()}.",
        "- Source: the default job's run (`bench-runs/default-job`, MobileNet v1 0.25 @128 px, 0.8885 float); data: the full "
        "JPEG CIFAR-10 of ../shared, accuracies on all 10,000 test images; int8 = post-training, per-channel (the default).",
        "- Reproduce: `python bench/channels.py bench-runs/default-job` then `python bench/channels.py --write`.",
        "",
        "| variant | what | MACs | float acc | int8 TFLite acc | int8 bytes | TFLM arena | LiteRT p50 ms (1 thread) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in found.items():

        def change(key, row=row, name=name):
            if base is None or name == "unpruned" or row[key] is None or base[key] is None:
                return ""
            return f" ({row[key] / base[key] - 1:+.0%})"

        latency = "" if row["p50"] is None else f"{row['p50']:.3f}"
        macs = "" if row["macs"] is None else f"{row['macs']:,}"
        lines.append(
            f"| {name} | {VARIANTS[name][0]} | {macs}{change('macs')} | {row['float']:.4f} | {row['int8']:.4f} | "
            f"{row['bytes']:,}{change('bytes')} | {row['arena']:,}{change('arena')} | {latency}{change('p50')} |"
        )
    missing = [name for name in VARIANTS if name not in found]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + "."]
    lines += ["", "Commands per variant (RUN = a copy of the source run):", ""]
    for name, (_, flags) in VARIANTS.items():
        if name not in found:
            continue
        steps = [*commands(Path("RUN"), flags), latency_command(Path("RUN"))]
        lines.append(f"- {name}: " + "; ".join(f"`{shlex.join(c)}`" for c in steps))
    write_section("channel-pruning", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "bench-runs" / "channels")
    parser.add_argument("--latency", action="store_true", help="time every finished variant (a quiet machine)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.write:
        write_doc(args.work)
        return
    if args.latency:
        for name in args.only:
            if (args.work / name / "firmware").is_dir():
                run_edgecls([latency_command(args.work / name)])
        return
    for name in args.only:
        run_variant(args.source.resolve(), args.work, name)


if __name__ == "__main__":
    main()
