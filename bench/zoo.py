"""The model zoo (issue 10): one row per shipped config in configs/, measured by `edgecls run`.

Each row is `edgecls run configs/NAME.yaml` on the full JPEG CIFAR-10 of ../shared (the only
overrides: where the data and, for MobileNetV2, the ImageNet file are, and the runs folder),
run one after the other on this machine. The row reads the run's manifest through edgecls'
typed records: test accuracies of the final stage's files (float Keras, int8 TFLite, int8 ONNX;
all 10,000 test images), int8 file size, TFLite Micro arena, MACs, host latency at 1 thread,
and the training wall time (fine-tune epochs + the optimize stage).

Each row's figures are also kept in bench/results/zoo.json (committed), so that `write` in a
checkout without the run folders keeps the rows measured elsewhere; a row run again replaces its own.

Usage:
    python bench/zoo.py run NAME [NAME ...]    # e.g. raspberry-pi mcu-default (in that order: a teacher first)
    python bench/zoo.py write                  # docs/model_zoo.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import time
from pathlib import Path

from common import (
    CIFAR_JPEG,
    ROOT,
    SHARED,
    FinalStage,
    cpu_model,
    git_sha,
    machine,
    record_rows,
    run_edgecls,
    today,
    write_section,
)

from edgecls.run import RunDir

RUNS = ROOT / "bench-runs" / "zoo"
DOC = ROOT / "docs" / "model_zoo.md"
MNV2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_from_slim_npy.h5"

MNV2_OFFLINE = f"model.weights=../shared/{MNV2_WEIGHTS.relative_to(SHARED).as_posix()}"  # Keras' download fails here

# config name -> extra overrides beyond data.source and run.runs_dir (offline locations only)
ZOO: dict[str, list[str]] = {
    "raspberry-pi": [MNV2_OFFLINE, "run.name=mnv2-128"],
    "raspberry-pi-160": [MNV2_OFFLINE, "run.name=mnv2-160"],
    "raspberry-pi-224": [MNV2_OFFLINE, "run.name=mnv2-224"],
    "mcu-default": [],
    "mcu-distilled": ["train.teacher=bench-runs/zoo/mnv2-160", "run.name=mcu-distilled-t160"],
    "mcu-96": [],
    "mcu-142": [],
    "mcu-160": [],
    "mcu-stm32f446": [],
    "article-resnet50": [],
}


def command(name: str) -> list[str]:
    """The exact `edgecls run` line of a row (paths relative to the checkout, as a user types them)."""
    sets = [f"data.source=../shared/{CIFAR_JPEG.relative_to(SHARED).as_posix()}", "run.runs_dir=bench-runs/zoo", *ZOO[name]]
    return ["edgecls", "run", f"configs/{name}.yaml", *[part for s in sets for part in ("--set", s)]]


def run_row(name: str) -> None:
    line, commit = command(name), git_sha()  # the code the run starts with
    start = time.perf_counter()
    run_edgecls([line])
    seconds = time.perf_counter() - start
    info = {"command": shlex.join(line), "wall_seconds": round(seconds, 1), "commit": commit, "date": today(), "machine": machine()}
    (RUNS / f"{name}.zoo.json").write_text(json.dumps(info, indent=1) + "\n")


def _finished(entry: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(entry["finished"])


def optimize_seconds(run: RunDir, finetune: dict, final: str) -> float:
    """Training seconds of a run's optimize stages, as they recorded them.

    Runs from before stages recorded `train_seconds`: the time between the fine-tune's and the final
    stage's ends (wrong for a run resumed later; its zoo.json then holds `optimize_seconds`).
    """
    entries = [entry for stage in ("prune", "channels", "qat", "pqat") if (entry := run.stage(stage))]
    recorded = [entry.get("metrics", {}).get("train_seconds") for entry in entries]
    if recorded and None not in recorded:
        return float(sum(recorded))
    return (_finished(run.require_stage(final)) - _finished(finetune)).total_seconds()


def run_folder(name: str) -> Path:
    """The run folder of a row: `run.name` when its overrides set one, else the config's own name."""
    names = [s.split("=", 1)[1] for s in ZOO[name] if s.startswith("run.name=")]
    return RUNS / (names[0] if names else name)


def shipped_shape(run: RunDir, final: str, input_size: int, macs: int | None) -> tuple[int, int | None]:
    """Input size and MACs of the model a row ships: a channel stage's (`--fit` may change both), else the fine-tune's."""
    if final not in ("channels", "cqat"):
        return input_size, macs
    channels = run.require_stage("channels").get("metrics", {})
    return channels.get("input_size", input_size), channels.get("macs", macs)


def measure_row(name: str) -> dict | None:
    """What a finished run's manifest says, for the table; None if the row was not run."""
    info_path, run = RUNS / f"{name}.zoo.json", RunDir(run_folder(name))
    if not info_path.exists() or run.stage("finetune") is None:
        return None
    info = json.loads(info_path.read_text())
    record = run.finetune_record()
    finetune = run.require_stage("finetune")
    metrics = json.loads(run.file("metrics.json").read_text())
    results = FinalStage(run.path)
    final = results.stage
    train_seconds = metrics.get("train_seconds", 0.0) + metrics.get("teacher_outputs_seconds", 0.0)  # cached distillation
    if final != "finetune":
        train_seconds += info.get("optimize_seconds") or optimize_seconds(run, finetune, final)
    accuracy = results.accuracy
    input_size, macs = shipped_shape(run, final, record.input_size, metrics.get("macs"))
    teacher = (finetune["inputs"].get("teacher") or {}).get("run")
    return {
        "name": name,
        "backbone": record.backbone,
        "alpha": record.alpha,
        "input_size": input_size,
        "strategy": metrics.get("strategy"),
        "final_stage": final,
        "teacher": Path(teacher).name if teacher else "",
        "float": metrics["test_accuracy"] if final == "finetune" else accuracy("keras", "fp32") or accuracy("litert", "fp32"),
        "int8_tflite": accuracy("litert", "int8"),
        "int8_onnx": accuracy("onnxruntime", "int8"),
        "int8_bytes": results.int8_bytes(),
        "arena": results.firmware.arena_bytes_measured if results.firmware else None,
        "macs": macs,
        "latency_ms": results.p50_ms("int8"),
        "train_minutes": train_seconds / 60,
        "machine": "machine not recorded",  # zoo.json files written before rows named their machine
        **info,
    }


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def write_doc() -> None:
    """docs/model_zoo.md's table and input-size section from the run folders here and the recorded rows."""
    rows = record_rows("zoo", {name: row for name in ZOO if (row := measure_row(name))})
    measured = [rows[name] for name in ZOO if name in rows]
    if not DOC.exists():
        DOC.write_text("# Model zoo\n")
    write_section("zoo", zoo_section(measured), doc=DOC)
    write_input_size_pareto([r for r in measured if r["name"] in PARETO])


def zoo_section(measured: list[dict]) -> str:
    """The zoo section's text: the table, each row's command, and the configs not measured."""
    lines = [
        "| config | backbone (alpha) | input | strategy → final stage | teacher | float | int8 TFLite | int8 ONNX | int8 bytes"
        " | TFLM arena | MACs | LiteRT int8 p50 (1 thread) | training wall time |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in measured:
        lines.append(
            f"| [{r['name']}](../configs/{r['name']}.yaml) | {r['backbone']} ({r['alpha']:g}) | {r['input_size']} px"
            f" | {r['strategy']} → {r['final_stage']} | {r['teacher'] or '-'} | {_cell(r['float'], '.4f')}"
            f" | {_cell(r['int8_tflite'], '.4f')} | {_cell(r['int8_onnx'], '.4f')} | {_cell(r['int8_bytes'], ',')}"
            f" | {_cell(r['arena'], ',')} | {_cell(r['macs'], ',')} | {_cell(r['latency_ms'], '.3f')} ms"
            f" | {r['train_minutes']:.0f} min |"
        )
    commands = "\n".join(f"- {r['name']} ({r['date']}, edgecls {r['commit']}, {cpu_model(r['machine'])}, the whole"
                         f" `edgecls run` {r['wall_seconds'] / 60:.0f} min): `{r['command']}`" for r in measured)  # fmt: skip
    missing = [name for name in ZOO if name not in {r["name"] for r in measured}]
    return ZOO_TEXT.format(table="\n".join(lines), commands=commands, missing=", ".join(missing) or "none")


PARETO = ("mcu-96", "mcu-default", "mcu-142", "mcu-160")  # the same model and recipe at four input sizes
PARETO_PLOT = ROOT / "docs" / "images" / "zoo_input_size.png"


def write_input_size_pareto(rows: list[dict]) -> None:
    """The input-size section: a table against the 128-px default and a plot of int8 accuracy against MACs."""
    rows = sorted(rows, key=lambda r: r["input_size"])
    base = next((r for r in rows if r["name"] == "mcu-default"), None)
    if base is None or len(rows) < 2:
        return
    lines = [
        "| input | MACs | TFLM arena | LiteRT int8 p50 (host CPU) | float | int8 TFLite | int8 vs 128 px |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = 100 * (r["int8_tflite"] - base["int8_tflite"])
        lines.append(f"| {r['input_size']} px | {r['macs'] / 1e6:.1f} M | {r['arena']:,} B | {r['latency_ms']:.3f} ms"
                     f" ({cpu_model(r['machine'])}) | {r['float']:.4f} | {r['int8_tflite']:.4f}"
                     f" | {delta:+.2f} points |")  # fmt: skip
    one_host = len({cpu_model(r["machine"]) for r in rows}) == 1
    _plot_pareto(rows, with_latency=one_host)
    latency = "" if one_host else LATENCY_HOSTS_NOTE
    text = PARETO_TEXT.format(table="\n".join(lines), latency=latency, plot=PARETO_PLOT.relative_to(DOC.parent).as_posix())
    write_section("zoo-input-size", text, doc=DOC)


def _plot_pareto(rows: list[dict], *, with_latency: bool) -> None:
    """int8 accuracy against MACs, each point labelled with its arena (and latency, when one CPU measured them all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    macs, accuracy = [r["macs"] / 1e6 for r in rows], [100 * r["int8_tflite"] for r in rows]
    ax.plot(macs, accuracy, "o-", color="tab:blue")
    for index, (r, x, y) in enumerate(zip(rows, macs, accuracy, strict=True)):
        label = f"{r['input_size']} px\n{r['arena'] / 1024:.0f} KiB arena" + (f", {r['latency_ms']:.2f} ms" if with_latency else "")
        neighbours = accuracy[max(0, index - 1) : index] + accuracy[index + 1 : index + 2]
        above = y >= sum(neighbours) / len(neighbours)  # a peak's label above, a dip's below: clear of the line
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 9 if above else -9), ha="center",
                    va="bottom" if above else "top", fontsize=7)  # fmt: skip
    ax.margins(x=0.2, y=0.35)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("int8 TFLite test accuracy (%)")
    ax.set_title("MobileNet v1 0.25 on CIFAR-10 by input size", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    PARETO_PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PARETO_PLOT)
    plt.close(fig)


PARETO_TEXT = """## Choosing an input size (MobileNet v1 0.25)

The same model and recipe at each input size below (mcu-default's: 12 epochs at batch 128 and lr 3e-3, the default
for a training split of 16,000 images or more, then QAT for 2 epochs under 142 px and 3 from 142 px up), from the table
above: what each size costs on the device and in accuracy. The int8 file barely changes with the input size (the
weights do not depend on it; at 142 px three PAD operators add 568 B); the arena, the MACs and the latency grow with
the pixels. Pick the largest size whose arena and latency fit your board (`edgecls optimize RUN --fit PROFILE`
searches sizes and channel shares for a profile).

{table}
{latency}
![int8 accuracy against MACs by input size]({plot})
"""

LATENCY_HOSTS_NOTE = """
The rows' latencies were measured on different host CPUs (each named beside its latency): compare latencies only
between rows of one CPU. The arena and the MACs do not depend on the host.
"""


ZOO_TEXT = """One row per shipped config file in [configs/](../configs/); each was measured by running that config with
`edgecls run` on a 2-core machine with 24 GiB RAM, no GPU and Python 3.11.7 (each command below names its CPU), on the
full JPEG CIFAR-10 of `../shared` (45,000 train / 5,000 validation / all 10,000 test images); the notes below say
when a run shared the cores with other work. Accuracies are test
accuracies of the run's final stage (the QAT model where the config trains one); "float" is the Keras model. Training
wall time = the fine-tune epochs (and a cached teacher's pass) plus the optimize stage (QAT or pruning), as recorded
in the run. Latency:
`edgecls bench` on the host that ran the row, LiteRT, 1 thread, median of 5 windows. Reproduce a row with its command
below; `python bench/zoo.py write` rebuilds this section from the run folders and `bench/results/zoo.json`.

{table}

Commands (from the checkout, with `../shared` beside it; `data.source=cifar10` works online instead):

{commands}

Not measured yet: {missing}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run").add_argument("names", nargs="+", choices=list(ZOO))
    sub.add_parser("write")
    args = parser.parse_args()
    if args.action == "write":
        write_doc()
        return
    for name in args.names:
        run_row(name)


if __name__ == "__main__":
    main()
