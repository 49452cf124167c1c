"""Channel pruning on the device (issue 12): what removing 30 % of the channels buys, and what it costs.

Each variant copies a finished default-recipe run (MobileNet v1 0.25 @128 px, full JPEG CIFAR-10 of
../shared) or another variant's run (BASES), removes channels with `edgecls optimize --prune-channels`,
recovers (and quantization-aware trains, for the -qat variants), exports int8, validates on all 10,000
test images and measures the TFLite Micro arena (`edgecls firmware`). `--latency`, on a quiet machine,
times every finished variant: `edgecls bench` (LiteRT and ONNX Runtime, 1 thread) and TFLite Micro's
`invoke` on this host. The unpruned baseline goes through the same export, firmware and timing.

Usage:
    python bench/channels.py SOURCE_RUN [--only NAME ...] [--work bench-runs/channels]
    python bench/channels.py --latency [--only NAME ...]
    python bench/channels.py --write [--work ...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from common import ROOT, FinalStage, copy_run, git_sha, machine, run_edgecls, today, write_section

EDGECLS = str(Path(sys.executable).with_name("edgecls"))
CUT30 = ["--prune-channels", "0.3"]
OLD_RECOVERY = ["--epochs", "4", "--lr", "5e-4"]  # the recovery before 2026-11-30: magnitude pruning's schedule
RECOVERY = ["--epochs", "10", "--lr", "2e-3"]  # the fine-tune recipe (the default since 2026-11-30)
TEACHER = ["--set", "optimize.channel_teacher=true"]
QAT_AFTER = ["--qat", "--qat-from", "channels", "--epochs", "2"]  # the channels stage of the base variant
ROUND8 = ["--set", "optimize.channel_round_to=8"]  # widths multiples of 8: the default until 2026-11-30
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "unpruned": ("the fine-tuned model, no pruning", []),
    "unpruned-qat": ("the fine-tuned model, quantization-aware trained (2 epochs)", ["--qat", "--epochs", "2"]),
    "ch30-l1": (
        "30 % of the channels, L1 norm of the filters, widths multiples of 8, recovery 4 epochs at 5e-4",
        [*CUT30, "--channel-criterion", "l1", *OLD_RECOVERY, *ROUND8],
    ),
    "ch30-l1-odd": (
        "30 %, L1, exact widths (45, 90, 179, ...), 4 epochs at 5e-4",
        [*CUT30, "--channel-criterion", "l1", *OLD_RECOVERY, "--set", "optimize.channel_round_to=1"],
    ),
    "ch30-l1-r10": (
        "30 %, L1, multiples of 8, recovered like a fine-tune: 10 epochs at 2e-3",
        [*CUT30, "--channel-criterion", "l1", *RECOVERY, *ROUND8],
    ),
    "ch30-l1-r10-teacher": (
        "30 %, L1, multiples of 8, 10 epochs at 2e-3, distilled from the unpruned model",
        [*CUT30, "--channel-criterion", "l1", *RECOVERY, *TEACHER, *ROUND8],
    ),
    "ch30-bn-r10": (
        "30 %, BatchNorm absolute scale instead of L1, multiples of 8, 10 epochs at 2e-3",
        [*CUT30, "--channel-criterion", "bn", *RECOVERY, *ROUND8],
    ),
    "ch30-l1-r10-rt4": (
        "30 %, L1, 10 epochs at 2e-3, widths multiples of 4 (the default since 2026-11-30: the 8-channel stem becomes 4)",
        [*CUT30, "--channel-criterion", "l1", *RECOVERY, "--set", "optimize.channel_round_to=4"],
    ),
    "ch30-l1-r10-qat": ("ch30-l1-r10, then quantization-aware training (2 epochs)", QAT_AFTER),
    "ch30-l1-r10-rt4-qat": ("ch30-l1-r10-rt4, then quantization-aware training (2 epochs)", QAT_AFTER),
    "ch30-l1-r10-teacher-qat": ("ch30-l1-r10-teacher, then quantization-aware training (2 epochs)", QAT_AFTER),
    "ch30-bn-r10-qat": ("ch30-bn-r10, then quantization-aware training (2 epochs)", QAT_AFTER),
    "mag50": ("magnitude pruning to 50 % sparsity (TFMOT, 4 epochs at 5e-4), for comparison", ["--prune", "0.5"]),
}

# variant -> the variant whose finished run it continues (a copy of it, instead of the source run)
BASES = {
    "ch30-l1-r10-qat": "ch30-l1-r10",
    "ch30-l1-r10-teacher-qat": "ch30-l1-r10-teacher",
    "ch30-bn-r10-qat": "ch30-bn-r10",
    "ch30-l1-r10-rt4-qat": "ch30-l1-r10-rt4",
}


def commands(run: Path, flags: list[str], *, again: bool = False) -> list[list[str]]:
    """The edgecls lines of a variant; `again` when the copied run already exported (a based variant)."""
    force = ["--force"] if again else []
    steps = [["edgecls", "optimize", str(run), *flags]] if flags else []
    return steps + [
        ["edgecls", "export", str(run), "--int8", *force],
        ["edgecls", "validate", str(run), "--tflm-images", "0", "--max-int8-drop", "100"],
        ["edgecls", "firmware", str(run), *force],
    ]


def latency_command(run: Path) -> list[str]:
    return ["edgecls", "bench", str(run), "--threads", "1"]


def tflm_latency(run: Path) -> None:
    """Time TFLite Micro's `invoke` of the run's int8 file on this host, one core, edgecls' window method.

    TFLite Micro's portable kernels do the arithmetic a Cortex-M does without CMSIS-NN, one op after the
    other with no delegate: how their time scales between two models is a proxy for the device's, not
    the device's time. Writes `RUN/tflm-latency.json`.
    """
    import os

    import numpy as np

    from edgecls.runtimes import tflm_interpreter
    from edgecls.worker import latency_summary, timed_windows

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    flatbuffer = next((run / "export").glob("*/model_int8.tflite")).read_bytes()
    interpreter = tflm_interpreter(flatbuffer, 4 << 20)
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
    for _ in range(3):
        interpreter.invoke()
    summary = latency_summary(timed_windows(interpreter.invoke, windows=5, seconds=2.0, min_runs=10))
    (run / "tflm-latency.json").write_text(json.dumps(summary, indent=1) + "\n")


INTERLEAVED = ("unpruned", "mag50", "ch30-l1-odd", "ch30-l1-r10", "ch30-l1-r10-rt4", "ch30-l1-r10-qat", "ch30-l1-r10-rt4-qat")
FILES = {"LiteRT int8": "model_int8.tflite", "LiteRT fp32": "model_fp32.tflite", "ORT int8": "model_int8.onnx",
         "ORT fp32": "model_fp32.onnx"}  # fmt: skip


def interleaved_latency(work: Path, names: tuple[str, ...] = INTERLEAVED, rounds: int = 9) -> dict:
    """Medians over `rounds` rounds of one 1-s window per model and runtime, all models in every round, one core.

    This host's speed drifts by up to 50 % between windows minutes apart (see "Latency method: notes"); comparing
    models measured in separate `edgecls bench` calls mixes that drift into the comparison. Interleaving puts the
    drift into every model's rounds alike. The worker's own model classes time only the inference, as `bench` does.
    Writes `WORK/interleaved-latency.json`.
    """
    import os

    import numpy as np

    from edgecls.worker import open_model, timed_windows

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    infers = {}
    for name in names:
        export = next((work / name / "export").iterdir())
        for column, file in FILES.items():
            model = open_model(str(export / file), 1)
            infers[name, column] = model.inference(np.zeros(model.input["shape"], np.float32))
    per_round = {key: [] for key in infers}
    for _ in range(rounds):
        for key, infer in infers.items():
            per_round[key].append(float(np.median(timed_windows(infer, windows=1, seconds=1.0, min_runs=20)[0])))
    result = {
        "rounds": rounds,
        "cpu": machine(),
        "p50_ms": {name: {column: float(np.median(per_round[name, column])) for column in FILES} for name in names},
        "rounds_ms": {f"{name} / {column}": values for (name, column), values in per_round.items()},
    }
    (work / "interleaved-latency.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def run_variant(source: Path, work: Path, name: str) -> None:
    run = work / name
    if (run / "firmware").is_dir():
        return
    base = BASES.get(name)
    copy_run(work / base if base else source, run)
    timings = run_edgecls(commands(run, VARIANTS[name][1], again=base is not None))
    (run / "bench-timings.json").write_text(json.dumps(timings))


def collect(run: Path) -> dict:
    """The table row of a finished variant: its final stage's accuracies, bytes, arena and latencies."""
    final = FinalStage(run)
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    metrics = manifest["channels"]["metrics"] if "channels" in manifest else json.loads((run / "metrics.json").read_text())
    tflm = run / "tflm-latency.json"
    return {
        "macs": metrics.get("macs"),
        "float": final.accuracy("litert", "fp32"),
        "int8": final.accuracy("litert", "int8"),
        "bytes": final.int8_bytes(),
        "arena": final.firmware.arena_bytes_measured,
        "p50": final.p50_ms("int8"),
        "p50_fp32": final.p50_ms("fp32"),
        "p50_ort_int8": final.p50_ms("int8", "onnxruntime"),
        "p50_ort_fp32": final.p50_ms("fp32", "onnxruntime"),
        "tflm": json.loads(tflm.read_text())["p50_ms"] if tflm.exists() else None,
        "optimize_s": json.loads((run / "bench-timings.json").read_text()).get("optimize"),
    }


def interleaved_table(work: Path) -> list[str]:
    """The interleaved rounds (`--interleaved`): fastest round, and the median of each round's ratio to unpruned."""
    path = work / "interleaved-latency.json"
    if not path.exists():
        return []
    import numpy as np

    result = json.loads(path.read_text())
    rounds = {key: np.array(values) for key, values in result["rounds_ms"].items()}
    lines = [
        "",
        f"Latency in interleaved rounds (`python bench/channels.py --interleaved`, {result['rounds']} rounds, one core): each"
        " round times every file below for 1 s in turn, so the host's speed drift falls on all of them alike. Cell: the"
        " fastest round's median, ms (the median over rounds of the ratio to the unpruned file measured in the same round).",
        "",
        "| variant | " + " | ".join(f"{column} ms" for column in FILES) + " |",
        "|---|" + "---:|" * len(FILES),
    ]
    for name in result["p50_ms"]:
        cells = []
        for column in FILES:
            mine, base = rounds[f"{name} / {column}"], rounds[f"unpruned / {column}"]
            cells.append(f"{mine.min():.3f} ({np.median(mine / base):.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_doc(work: Path) -> None:
    found = {name: collect(work / name) for name in VARIANTS if (work / name / "firmware").is_dir()}
    base = found.get("unpruned")
    lines = [
        "## Channel pruning on the device (issue 12)",
        "",
        f"- Table written {today()} at edgecls {git_sha()} on {machine()}; when each row was trained and timed: the notes.",
        "- Source: the default job's run (`bench-runs/default-job`, MobileNet v1 0.25 @128 px, 0.8885 float); data: the full "
        "JPEG CIFAR-10 of ../shared, accuracies on all 10,000 test images; int8 = post-training, per-channel (the default), "
        "except the -qat rows (quantization-aware trained).",
        "- Reproduce: `python bench/channels.py bench-runs/default-job`, then on a quiet machine `python bench/channels.py "
        "--latency` and `python bench/channels.py --interleaved`, then `python bench/channels.py --write`.",
        "- Latency, 1 thread, median of 5 windows of 2 s: LiteRT through `edgecls bench` (XNNPACK, `invoke` only), and "
        "TFLite Micro's `invoke` of the int8 file on this host (`tflm_latency` in the script): its portable kernels, a proxy "
        "for how compute on a Cortex-M without CMSIS-NN scales, not a device time.",
        "",
        "| variant | what | MACs | float acc | int8 TFLite acc | int8 bytes | TFLM arena | LiteRT int8 p50 ms | "
        "LiteRT fp32 p50 ms | TFLM int8 p50 ms (host) | ONNX Runtime int8 / fp32 p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in found.items():

        def change(key, row=row, name=name):
            if base is None or name == "unpruned" or row[key] is None or base[key] is None:
                return ""
            return f" ({row[key] / base[key] - 1:+.1%})"

        def ms(key, row=row):
            return "" if row[key] is None else f"{row[key]:.3f}{change(key)}"

        def ort(row=row):
            return (
                ""
                if row["p50_ort_int8"] is None and row["p50_ort_fp32"] is None
                else f"{ms('p50_ort_int8')} / {ms('p50_ort_fp32')}"
            )

        macs = "" if row["macs"] is None else f"{row['macs']:,}"
        lines.append(
            f"| {name} | {VARIANTS[name][0]} | {macs}{change('macs')} | {row['float']:.4f} | {row['int8']:.4f} | "
            f"{row['bytes']:,}{change('bytes')} | {row['arena']:,}{change('arena')} | {ms('p50')} | {ms('p50_fp32')} "
            f"| {ms('tflm')} | {ort(row)} |"
        )
    missing = [name for name in VARIANTS if name not in found]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + "."]
    lines += interleaved_table(work)
    lines += ["", "Commands per variant (RUN = a copy of the source run):", ""]
    for name, (_, flags) in VARIANTS.items():
        if name not in found:
            continue
        steps = [*commands(Path("RUN"), flags, again=name in BASES), latency_command(Path("RUN"))]
        start = f" (RUN = a copy of {BASES[name]}'s run)" if name in BASES else ""
        lines.append(f"- {name}{start}: " + "; ".join(f"`{shlex.join(c)}`" for c in steps))
    write_section("channel-pruning", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "bench-runs" / "channels")
    parser.add_argument("--latency", action="store_true", help="time every finished variant: LiteRT, ORT, TFLM (a quiet machine)")
    parser.add_argument("--interleaved", action="store_true", help="time the main variants in interleaved rounds (quiet machine)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.write:
        write_doc(args.work)
        return
    if args.interleaved:
        interleaved_latency(args.work)
        return
    if args.latency:
        for name in args.only:
            if (args.work / name / "firmware").is_dir():
                run_edgecls([latency_command(args.work / name)])
                tflm_latency(args.work / name)
        return
    for name in args.only:
        run_variant(args.source.resolve(), args.work, name)


if __name__ == "__main__":
    main()
