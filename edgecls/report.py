"""The report stage: what a person reads to judge a run, as `report.md` and a self-contained `report.html`.

Reads the run through its manifest (every stage's recorded entry) and the finetune stage's own
files (history, metrics, model), and draws with matplotlib (Agg) into `RUN/report/*.png`:

- training curves per phase (head warm-up shaded), confusion matrix, per-class accuracy;
- accuracy against latency (1 thread, from `bench`) and against file size, for every exported file;
- flash and arena (or model bytes and latency) against the device profile's budget;
- the test images the model gets most confidently wrong, with a Grad-CAM heat map (the few
  GradientTape lines it takes: tf-keras-vis and xplique pin other Keras versions).

The HTML page embeds the PNGs (base64), so it is one file to mail or archive. Every string from the
run (class names, file names, reasons) is escaped.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.config import ReportConfig
from edgecls.escape import escape_html, escape_markdown
from edgecls.records import (
    BenchRecord,
    BenchRow,
    FirmwareRecord,
    ValidationRow,
    bench_record,
    firmware_records,
    quant_debug_record,
    validation_record,
)  # fmt: skip
from edgecls.run import FinetuneRecord, RunDir, atomic_write_text, staged_folder

FIGURES = "report"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_json(run: RunDir, relative: str, stage: str) -> Any:
    """A JSON output of `stage`, verified against the manifest's sha256 (the report trusts nothing else)."""
    from edgecls.modelfile import verify_file

    path = run.inside(relative)
    verify_file(path, run.output_sha256(stage, relative))
    return json.loads(path.read_bytes())


def plot_curves(history: list[dict[str, float]], warmup: int, path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, with the head-only warm-up shaded."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [row.get(prefix + key, np.nan) for row in history]
            axis.plot(epochs, values, marker="o", label=label)
        if warmup:
            axis.axvspan(0.5, warmup + 0.5, color="0.9", label="head warm-up")
        axis.set(xlabel="epoch", title=title)
        axis.grid(alpha=0.3)
    axes[1].legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix with counts."""
    plt = _pyplot()
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set(xlabel="predicted", ylabel="true", title="confusion matrix (test split)")
    if len(names) <= 20:
        for (row, col), count in np.ndenumerate(confusion):
            color = "white" if rates[row, col] > 0.5 else "black"
            axis.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_per_class(per_class: dict[str, float | None], path: Path) -> None:
    """Horizontal bars: accuracy of each class, worst first."""
    plt = _pyplot()
    items = sorted(((v if v is not None else 0.0), k) for k, v in per_class.items())
    figure, axis = plt.subplots(figsize=(6, max(2.5, 0.32 * len(items) + 1)))
    axis.barh([k for _, k in items], [v for v, _ in items], color="tab:blue")
    axis.set(xlim=(0, 1), xlabel="test accuracy", title="per-class accuracy")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _worst_int8_layers(run: RunDir, rows: tuple[ValidationRow, ...]) -> list[list[str]]:
    """[stage, format, worst three layers] for each stage whose int8 row failed and that has a quant_debug.json."""
    found = []
    for stage in sorted({r.stage for r in rows if r.precision == "int8" and r.status != "pass"}):
        record = quant_debug_record(run, stage)
        for fmt, layers in (record.worst if record else {}).items():
            found.append([stage, fmt, ", ".join(layers[:3])])
    return found


def tradeoff_points(validate_rows: tuple[ValidationRow, ...], bench_rows: tuple[BenchRow, ...]) -> list[dict[str, Any]]:
    """One point per exported file: its accuracy (LiteRT/ONNX Runtime), bytes, and p50 at 1 thread."""
    first = bench_rows[0].device if bench_rows else None  # of a fleet, the first device's latencies
    latency = {(r.stage, r.artifact): r.p50_ms for r in bench_rows if r.status == "pass" and r.threads == 1 and r.device == first}
    points = []
    for row in validate_rows:
        if row.runtime == "tflite-micro" or row.accuracy is None:
            continue
        points.append({"label": f"{row.stage}/{row.artifact}", "accuracy": row.accuracy, "bytes": row.bytes,
                       "p50_ms": latency.get((row.stage, row.artifact)), "precision": row.precision})  # fmt: skip
    return points


def _annotate(axis, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Label each point inside the axes: stacked where points (nearly) coincide, to the left in the right half."""
    if not xs:
        return
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    middle = (max(xs) + min(xs)) / 2
    placed: list[tuple[float, float]] = []
    for x, y, label in zip(xs, ys, labels, strict=True):  # a label spans about a third of the axes' width
        stacked = sum(1 for px, py in placed if abs(py - y) <= 0.03 * y_span and abs(px - x) <= 0.35 * x_span)
        placed.append((x, y))
        right = x > middle
        axis.annotate(label, (x, y), xytext=(-6 if right else 6, 5 + 9 * stacked), textcoords="offset points",
                      ha="right" if right else "left", fontsize=7)  # fmt: skip
    axis.margins(x=0.1, y=0.3)  # room for the labels above the highest points


def plot_tradeoffs(points: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against latency and against size, every exported file."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"fp32": "tab:blue", "fp16": "tab:green", "dynamic": "tab:orange", "int8": "tab:red"}
    for axis, key, label in ((axes[0], "p50_ms", "p50 latency, 1 thread (ms)"), (axes[1], "bytes", "file size (KiB)")):
        shown = [p for p in points if p[key] is not None]
        xs = [p[key] / 1024 if key == "bytes" else p[key] for p in shown]
        for x, point in zip(xs, shown, strict=True):
            axis.scatter(x, point["accuracy"], color=colors.get(point["precision"], "black"), s=40)
        _annotate(axis, xs, [p["accuracy"] for p in shown], [p["label"] for p in shown])
        axis.set(xlabel=label, ylabel="test accuracy")
        axis.grid(alpha=0.3)
    used = sorted({p["precision"] for p in points}, key=list(colors).index)
    axes[1].legend(handles=[plt.Line2D([], [], marker="o", ls="", color=colors[p], label=p) for p in used], loc="best")
    axes[0].set_title("accuracy vs latency")
    axes[1].set_title("accuracy vs size")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_budget(items: list[tuple[str, float, float]], title: str, path: Path) -> None:
    """Each measured quantity as a share of its budget (1.0 = the limit)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, max(2.2, 0.45 * len(items) + 1)))
    shares = [value / budget for _, value, budget in items]
    axis.barh([name for name, _, _ in items], shares, color=["tab:green" if s <= 1 else "tab:red" for s in shares])
    axis.axvline(1.0, color="black", linestyle="--", label="budget")
    for index, (_, value, budget) in enumerate(items):
        axis.text(shares[index], index, f" {value:,.0f} / {budget:,.0f}", va="center", fontsize=8)
    axis.set(xlabel="share of the budget", title=title, xlim=(0, max(1.3, max(shares) * 1.35)))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def last_conv_layer(model) -> str:
    """Name of the last layer with a 4-D (feature map) output: where Grad-CAM looks."""
    return [layer.name for layer in model.layers if len(getattr(layer, "output_shape", ()) or ()) == 4][-1]


def grad_cam(model, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM heat maps in [0, 1], one per preprocessed image, at the input size (Selvaraju et al., 2017)."""
    import tensorflow as tf
    import tf_keras

    layer = model.get_layer(last_conv_layer(model))
    probe = tf_keras.Model(model.inputs, [layer.output, model.output])
    with tf.GradientTape() as tape:
        features, scores = probe(images, training=False)
        chosen = tf.gather(scores, classes, batch_dims=1)
    gradients = tape.gradient(chosen, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
    cams = tf.image.resize(cams, images.shape[1:3])[..., 0].numpy()
    return cams / np.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-8)


def plot_wrong(images: np.ndarray, cams: np.ndarray, captions: list[str], path: Path) -> None:
    """Thumbnails of the most confidently wrong images with their Grad-CAM overlay."""
    plt = _pyplot()
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, cam, caption in zip(axes.flat, images, cams, captions, strict=False):
        axis.imshow(image)
        axis.imshow(cam, cmap="jet", alpha=0.4)
        axis.set_title(caption, fontsize=8)
    figure.suptitle("most confidently wrong test images (Grad-CAM: where the model looked)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def confused_pairs(confusion: np.ndarray, names: list[str], top: int = 5) -> list[tuple[str, str, int]]:
    """The (true, predicted, count) pairs the model mixes up most, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    return [(names[i], names[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape), strict=True) if off[i, j]]


def _wrong_examples(run: RunDir, record: FinetuneRecord, trust: bool, count: int):
    """The `count` test images the fine-tuned model gets wrong with the highest confidence, with Grad-CAM maps."""
    from edgecls.data import load_split
    from edgecls.data.pipeline import preprocess_numpy
    from edgecls.runtimes import KerasRunner, predict

    model, _ = run.load_model("finetune", trust=trust)
    test, _ = load_split(record.data(), record.input_size, record.seed, "test")
    scores = predict(KerasRunner(model), test.images, batch_size=128, mode=record.preprocessing)
    predicted = scores.argmax(1)
    wrong = np.flatnonzero(predicted != test.labels)
    chosen = wrong[np.argsort(-scores[wrong, predicted[wrong]])][:count]
    if not len(chosen):
        return None
    cams = grad_cam(model, preprocess_numpy(test.images[chosen], record.preprocessing), predicted[chosen])
    names = record.class_names
    captions = [f"{names[test.labels[i]]} → {names[predicted[i]]} ({scores[i, predicted[i]]:.2f})" for i in chosen]
    return test.images[chosen], cams, captions


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape_markdown(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _budget_items(firmware: list[FirmwareRecord], bench: BenchRecord | None) -> tuple[list[tuple[str, float, float]], str] | None:
    """Measured quantities against the device profile's budgets (from the firmware and bench records)."""
    items, profiles = [], [f.profile for f in firmware if f.profile]
    for record in firmware:
        if record.profile:
            items.append((f"flash {record.stage}", record.flash_bytes, record.flash_budget))
            items.append((f"arena {record.stage}", record.arena_bytes, record.ram_budget))
    if bench is not None:
        items += [(check.what, check.value, check.budget) for check in bench.budgets]
        profiles = [bench.profile] if bench.profile else profiles
    items = list({name: (name, value, budget) for name, value, budget in items}.values())  # bench repeats firmware's
    return (items, f"budgets of {profiles[0] if profiles else 'the device'}") if items else None


def _baseline_sentence(metrics: dict[str, Any]) -> str:
    """The raw-pixel baseline beside the model's accuracy ("" for a run made before it was recorded)."""
    baseline = metrics.get("baseline")
    reference = baseline.get("test_accuracy") if isinstance(baseline, dict) else None
    if not isinstance(reference, float | int) or isinstance(reference, bool):
        return ""
    verdict = "beats" if metrics["test_accuracy"] > reference else "does NOT beat"
    return f" It {verdict} a softmax regression on the raw pixels ({reference:.4f})."


def _warmup_epochs(configured: int | None, metrics: dict[str, Any]) -> int:
    """The head warm-up the run trained: the config's, else the one the step budget resolved (metrics.json)."""
    if configured is not None:
        return configured
    resolved = metrics.get("warmup_epochs")
    return resolved if isinstance(resolved, int) and not isinstance(resolved, bool) and resolved >= 0 else 1


def run_report(run_path: str | Path, cfg: ReportConfig | None = None, *, trust: bool = False) -> dict[str, Any]:
    """Write `report.md`, `report.html` and `report/*.png` for a run (every finished stage is shown).

    Args:
        run_path: A run folder with a finished finetune stage.
        cfg: The `report` config section; None for the defaults.
        trust: Load a model with Lambda layers (`--trust-run`) for the Grad-CAM panel.

    Returns:
        The report's manifest entry.
    """
    from edgecls.config import load_config

    wrong_images = (cfg or ReportConfig()).wrong_images
    run = RunDir(run_path)
    record = run.finetune_record()
    train_cfg = load_config(run.inside("config.yaml")).train
    history = _read_json(run, "history.json", "finetune")
    metrics = _read_json(run, "metrics.json", "finetune")
    names = list(record.class_names)
    confusion = np.asarray(metrics["confusion_matrix"], np.int64)
    validation, bench = validation_record(run), bench_record(run)
    validate_rows = validation.rows if validation else ()
    bench_rows = bench.rows if bench else ()
    sections_md, sections_html, figures = [], [], []

    def figure(name: str, title: str, draw) -> None:
        draw(folder / name)
        figures.append(name)
        sections_md.append(f"## {title}\n\n![{title}]({FIGURES}/{name})\n")
        data = base64.b64encode((folder / name).read_bytes()).decode()
        sections_html.append(f"<h2>{escape_html(title)}</h2><img alt='{escape_html(title)}' src='data:image/png;base64,{data}'>")

    def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
        sections_md.append(f"## {title}\n\n{_table(header, rows)}\n")
        sections_html.append(f"<h2>{escape_html(title)}</h2>{_html_table(header, rows)}")

    with staged_folder(run.inside(FIGURES)) as folder:
        warmup = 0 if train_cfg.strategy == "frozen" else _warmup_epochs(train_cfg.warmup_epochs, metrics)
        figure("curves.png", "Training curves", lambda p: plot_curves(history, warmup, p))
        figure("confusion.png", "Confusion matrix", lambda p: plot_confusion(confusion, names, p))
        figure("per_class.png", "Per-class accuracy", lambda p: plot_per_class(metrics["per_class_accuracy"], p))
        pairs = confused_pairs(confusion, names)
        table("Most confused class pairs", ["true class", "predicted as", "test images"], [list(p) for p in pairs])
        points = tradeoff_points(validate_rows, bench_rows)
        if points:
            figure("tradeoffs.png", "Accuracy vs latency and size", lambda p: plot_tradeoffs(points, p))
        budget = _budget_items(firmware_records(run), bench)
        if budget:
            figure("budget.png", "Device budget", lambda p: plot_budget(budget[0], budget[1], p))
        if validate_rows:
            header = ["file", "stage", "runtime", "precision", "bytes", "accuracy", "Δ vs Keras (pp)", "status"]
            rows = [[r.artifact, r.stage, r.runtime, r.precision, f"{r.bytes:,}",
                     "" if r.accuracy is None else f"{r.accuracy:.4f}", "" if r.delta_pp is None else f"{r.delta_pp:+.2f}",
                     r.status if r.status == "pass" else f"FAIL: {r.reason}"] for r in validate_rows]  # fmt: skip
            table("Validation (full test split)", header, rows)
            worst = _worst_int8_layers(run, validate_rows)
            if worst:
                table("Worst int8 layers of the failing int8 rows (edgecls inspect)", ["stage", "format", "worst layers"], worst)
        if bench_rows:
            header = ["device", "file", "stage", "runtime", "precision", "threads", "p50 ms", "status"]
            rows = [[r.device or "", r.artifact, r.stage, r.runtime_kind or "", r.precision, r.threads or "",
                     "" if r.p50_ms is None else f"{r.p50_ms:.3f}",
                     r.status if r.status == "pass" else f"FAIL: {r.reason}"] for r in bench_rows]  # fmt: skip
            table("Latency", header, rows)
        examples = _wrong_examples(run, record, trust, wrong_images) if wrong_images else None
        if examples is not None:
            figure("wrong.png", "Most confidently wrong", lambda p: plot_wrong(*examples, p))
        summary = {
            "test_accuracy": metrics["test_accuracy"],
            "num_test_images": metrics["num_test_images"],
            "figures": figures,
            "validation_passed": validation.passed if validation else None,
            "recommendation": bench.recommendation if bench else None,
        }
    title = f"edgecls report: {run.path.name}"
    intro = (
        f"{record.backbone} (alpha {record.alpha:g}) at {record.input_size} px, {len(names)} classes; "
        f"float test accuracy {metrics['test_accuracy']:.4f} on {metrics['num_test_images']:,} images."
    )
    intro += _baseline_sentence(metrics)
    if summary["validation_passed"] is not None:
        intro += f" Validation gate: {'passed' if summary['validation_passed'] else 'FAILED'}."
    if summary["recommendation"]:
        intro += f" Recommended file: {summary['recommendation']}."
    atomic_write_text(run.file("report.md"), f"# {escape_markdown(title)}\n\n{escape_markdown(intro)}\n\n" + "\n".join(sections_md))
    atomic_write_text(run.file("report.html"), _html_page(title, intro, sections_html))
    outputs = ["report.md", "report.html", *(f"{FIGURES}/{name}" for name in figures)]
    inputs = {"finetune_sha256": run.model_sha256("finetune"), "stages": sorted(run.manifest()["stages"])}
    return run.record_stage("report", seed=record.seed, inputs=inputs, outputs=outputs, metrics=summary, warnings=[])


def _html_page(title: str, intro: str, sections: list[str]) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}h2{margin-top:1.6em}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape_html(title)}</title>"
        f"<style>{style}</style></head><body><h1>{escape_html(title)}</h1><p>{escape_html(intro)}</p>"
        + "".join(sections)
        + "</body></html>\n"
    )
