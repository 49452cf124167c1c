"""Small-data benchmark (issue 10): the default job on data sets of a few hundred to a few thousand images.

Three image folders (train/ and test/), written once into `bench-runs/small-data/data/`:

- `digits`: scikit-learn's bundled copy of the UCI handwritten digits (1,797 grayscale 8x8
  images, 10 classes; openly available, no download), a seeded stratified 75/25 split.
- `digits-5`: the same, classes 0-4 only (901 images): the case issue 10 reported
  (the old default reached 0.929 where a linear model on raw pixels reached 0.995).
- `cifar-mixed`: 60 train + 40 test images per class of CIFAR-10 (../shared), each cropped
  to a random non-square aspect (24x32 to 32x20) and a third of them made grayscale: the
  mixed formats of a real user folder.

For each, the raw-pixel baselines are computed here, independently of edgecls, with
scikit-learn on the native pixels (softmax regression and 1-nearest-neighbour), and the
fine-tune variants run through the CLI one after the other (`edgecls finetune --data DIR`).

Each finished variant's figures are kept, with its command, date, commit and machine, in
`bench/results/small-data.json` (run folders are not committed), so the docs section keeps the rows
measured in other sittings.

Usage:
    python bench/small_data.py [--only VARIANT ...]   # run what is missing (needs scikit-learn)
    python bench/small_data.py --write                # docs/benchmarks.md section
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import tarfile
import time
from pathlib import Path

import numpy as np
from common import CIFAR_JPEG, ROOT, cpu_model, git_sha, machine, record_rows, run_edgecls, today, write_section

RUNS = ROOT / "bench-runs" / "small-data"
DATA = RUNS / "data"

# name -> (data set, what it tests, extra finetune flags)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "digits-default": ("digits", "the default job: no flag but --data", []),
    "digits-10ep": ("digits", "the old default: 10 epochs whatever the size, best validation epoch",
                    ["--epochs", "10", "--set", "train.selection=best"]),
    "digits5-default": ("digits-5", "the default job", []),
    "digits5-10ep": ("digits-5", "the old default", ["--epochs", "10", "--set", "train.selection=best"]),
    "cifarmixed-default": ("cifar-mixed", "the default job", []),
    "cifarmixed-10ep": ("cifar-mixed", "the old default", ["--epochs", "10", "--set", "train.selection=best"]),
    # the step budget (`train.min_steps`, 1,500 by default) at half and twice the default
    "digits5-750": ("digits-5", "the default job, half the step budget", ["--set", "train.min_steps=750"]),
    "digits5-3000": ("digits-5", "the default job, twice the step budget", ["--set", "train.min_steps=3000"]),
    "cifarmixed-750": ("cifar-mixed", "the default job, half the step budget", ["--set", "train.min_steps=750"]),
    "cifarmixed-3000": ("cifar-mixed", "the default job, twice the step budget", ["--set", "train.min_steps=3000"]),
    "digits-750": ("digits", "the default job, half the step budget", ["--set", "train.min_steps=750"]),
    "digits-3000": ("digits", "the default job, twice the step budget", ["--set", "train.min_steps=3000"]),
    # the same three budgets on cifar-mixed with another seed (another validation split, head and batch order)
    "cifarmixed-750-s1": ("cifar-mixed", "half the step budget, seed 1", ["--set", "train.min_steps=750", "--seed", "1"]),
    "cifarmixed-default-s1": ("cifar-mixed", "the default job, seed 1", ["--seed", "1"]),
    "cifarmixed-3000-s1": ("cifar-mixed", "twice the step budget, seed 1", ["--set", "train.min_steps=3000", "--seed", "1"]),
}  # fmt: skip


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_digits(target: Path, n_class: int, seed: int = 0) -> None:
    """scikit-learn's digits as 8x8 grayscale PNGs in target/{train,test}/<digit>/, 25 % of each class as test."""
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=n_class)
    rng = np.random.default_rng(seed)
    for label in range(n_class):
        index = rng.permutation(np.flatnonzero(digits.target == label))
        test = set(index[: round(0.25 * len(index))].tolist())
        for i in index:
            split = "test" if i in test else "train"
            pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
            _save_png(target / split / str(label) / f"{i:04d}.png", pixels)


def write_cifar_mixed(target: Path, train_per_class: int = 60, test_per_class: int = 40, seed: int = 0) -> None:
    """A small CIFAR-10 folder of non-square crops, a third grayscale, from the JPEG archive in ../shared."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wanted = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_JPEG) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in wanted:
                continue
            split, label = parts[-3], parts[-2]
            if counts.get((split, label), 0) >= wanted[split]:
                continue
            counts[(split, label)] = counts.get((split, label), 0) + 1
            image = Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB")
            width, height = [(24, 32), (32, 24), (32, 20), (28, 32)][rng.integers(4)]
            left, top = rng.integers(0, 33 - width), rng.integers(0, 33 - height)
            image = image.crop((left, top, left + width, top + height))
            if rng.random() < 1 / 3:
                image = image.convert("L")
            _save_png(target / split / label / Path(parts[-1]).with_suffix(".png").name, np.asarray(image))


def ensure_data(name: str) -> Path:
    folder = DATA / name
    if not (folder / "test").is_dir():
        {"digits": lambda: write_digits(folder, 10), "digits-5": lambda: write_digits(folder, 5),
         "cifar-mixed": lambda: write_cifar_mixed(folder)}[name]()  # fmt: skip
    return folder


def load_folder(folder: Path, split: str, size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Native pixels as rows (grayscale kept as is; mixed sizes padded to `size` when given) and labels."""
    from PIL import Image

    rows, labels = [], []
    classes = sorted(p.name for p in (folder / "train").iterdir())
    for label, name in enumerate(classes):
        for path in sorted((folder / split / name).iterdir()):
            image = Image.open(path)
            if size:
                image = image.convert("RGB").resize((size, size))
            rows.append(np.asarray(image, np.float32).ravel() / 255.0)
            labels.append(label)
    return np.stack(rows), np.asarray(labels)


def pixel_baselines(folder: Path) -> dict[str, float]:
    """Softmax regression and 1-NN on raw pixels (scikit-learn), test accuracy each."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    size = 0 if folder.name.startswith("digits") else 32  # mixed shapes: stretched to 32x32 RGB
    x_train, y_train = load_folder(folder, "train", size)
    x_test, y_test = load_folder(folder, "test", size)
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    nearest = KNeighborsClassifier(n_neighbors=1).fit(x_train, y_train)
    return {
        "linear": float(linear.score(x_test, y_test)),
        "1nn": float(nearest.score(x_test, y_test)),
        "train_images": len(y_train),
        "test_images": len(y_test),
    }


def run_variant(name: str) -> None:
    """Fine-tune variant `name` through the CLI, unless its result file exists, and write that file."""
    data_name, _, flags = VARIANTS[name]
    folder = ensure_data(data_name)
    result_file = RUNS / f"{name}.json"
    if result_file.exists():
        return
    command = ["edgecls", "finetune", "--data", str(folder.relative_to(ROOT)), "--name", name,
               "--runs-dir", str(RUNS.relative_to(ROOT)), "--force", *flags]  # fmt: skip
    start = time.perf_counter()
    run_edgecls([command])
    seconds = time.perf_counter() - start
    metrics = json.loads((RUNS / name / "metrics.json").read_text())
    result = {
        "command": shlex.join(command),
        "wall_seconds": round(seconds, 1),
        "test_accuracy": metrics["test_accuracy"],
        "edgecls_baseline": metrics.get("baseline_test_accuracy"),
        "epochs": metrics["epochs_run"],
        "steps": metrics.get("steps_planned"),
        "selection": metrics.get("selection"),
        "baselines": pixel_baselines(folder),
        "commit": git_sha(),
        "date": today(),
        "machine": machine(),
    }
    result_file.write_text(json.dumps(result, indent=1) + "\n")


def finished_rows() -> dict[str, dict]:
    """Every variant measured here or in an earlier sitting (`bench/results/small-data.json`), in `VARIANTS` order."""
    here = {name: json.loads((RUNS / f"{name}.json").read_text()) for name in VARIANTS if (RUNS / f"{name}.json").exists()}
    recorded = record_rows("small-data", here)
    return {name: recorded[name] for name in VARIANTS if name in recorded}


HEADER = (
    "| variant | data | what | epochs (steps, selection) | test acc | linear (raw px) | 1-NN (raw px) | edgecls baseline"
    " | beats linear | wall time | measured | command |\n|---|---|---|---|---:|---:|---:|---:|---|---:|---|---|"
)


def write_doc(rows: dict[str, dict]) -> None:
    """The small-data section of docs/benchmarks.md."""
    write_section("small-data", small_data_section(rows))


def small_data_section(rows: dict[str, dict]) -> str:
    """The small-data section's text: one row per finished variant, in the order of `VARIANTS`."""
    lines = []
    for name, r in rows.items():
        data_name, what, _ = VARIANTS[name]
        b = r["baselines"]
        beats = "yes" if r["test_accuracy"] > b["linear"] else "**no**"
        lines.append(f"| {name} | {data_name} ({b['train_images']} train / {b['test_images']} test) | {what} | {r['epochs']}"
                     f" ({r['steps']} steps, {r['selection']}) | {r['test_accuracy']:.4f} | {b['linear']:.4f} | {b['1nn']:.4f}"
                     f" | {r['edgecls_baseline']:.4f} | {beats} | {r['wall_seconds'] / 60:.1f} min"
                     f" | {r['date']}, {r['commit']}, {cpu_model(r['machine'])} | `{r['command']}` |")  # fmt: skip
    return f"""## Small data: the default job against raw-pixel baselines (issue 10)

- Machines: 2 cores, 24 GiB RAM, no GPU, Python 3.11.7; each row names its date, edgecls commit and CPU.
- Data: written by `bench/small_data.py` (see its docstring): `digits` = scikit-learn's bundled UCI digits (8x8 grayscale),
  `digits-5` = its classes 0-4 (issue 10's case), `cifar-mixed` = 600 train / 400 test CIFAR-10 images of ../shared cropped
  to non-square shapes, a third grayscale. Model: the default (MobileNet v1 0.25 @128 px, ImageNet weights, `full`).
- Baselines computed by the script with scikit-learn on the native pixels (standardized softmax regression, 1-NN);
  `edgecls baseline` = the raw-pixel softmax regression edgecls itself records in metrics.json (32x32 pixels of the
  decoded images).
- Reproduce: `python bench/small_data.py` (needs `pip install scikit-learn`), then `python bench/small_data.py --write`.

{HEADER}
""" + "\n".join(lines)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if not args.write:
        for name in args.only or list(VARIANTS):
            run_variant(name)
    rows = finished_rows()
    if args.write:
        write_doc(rows)


if __name__ == "__main__":
    main()
