"""`edgecls optimize --fit PROFILE` on the default model for the shipped MCU profiles (issue 12).

Each profile gets a copy of the default job's run; `--fit` measures every candidate share of removed
channels and input size (int8 bytes, TFLite Micro arena), trains the two fitting ones with the most
MACs (recovery: `optimize`'s defaults), keeps the best on validation; then the result is exported
(post-training int8), validated on all 10,000 test images, and built into firmware, whose arena is
checked against the same profile.

Usage:
    python bench/fit.py SOURCE_RUN [--only PROFILE ...] [--work bench-runs/fit-size]
    python bench/fit.py --write [--work ...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from common import ROOT, FinalStage, copy_run, git_sha, machine, run_edgecls, today, write_section

EDGECLS = str(Path(sys.executable).with_name("edgecls"))
PROFILES = ("cortex-m4-stm32f446", "cortex-m4-nrf52840", "cortex-m7-stm32h747")
# optimize's recovery defaults, spelled out: a run fine-tuned before they changed (2026-11-30) saved 4 epochs at 5e-4
# in its config.yaml, and later stages read that
RECOVERY = ["--epochs", "10", "--lr", "2e-3"]


def commands(run: Path, profile: str) -> list[list[str]]:
    return [
        ["edgecls", "optimize", str(run), "--fit", profile, *RECOVERY],
        ["edgecls", "export", str(run), "--int8", "--format", "tflite"],
        ["edgecls", "validate", str(run), "--tflm-images", "0", "--max-int8-drop", "100"],
        ["edgecls", "firmware", str(run), "--device", profile],
    ]


def run_profile(source: Path, work: Path, profile: str) -> None:
    run = work / profile
    if (run / "firmware").is_dir():
        return
    copy_run(source, run)
    timings = run_edgecls(commands(run, profile))
    (run / "bench-timings.json").write_text(json.dumps(timings))


def widest(widths: list[dict] | None, chosen: dict) -> str:
    """The other-width cell: the fitting width with the most MACs, and how many times the chosen model's MACs."""
    if widths is None:
        return "not measured (searched before widths were)"
    fitting = [c for c in widths if c["fits"]]
    if not fitting:
        return "none (" + ", ".join(sorted({f"{c['alpha']:g}" for c in widths})) + " do not fit)"
    best = max(fitting, key=lambda c: c["macs"])
    return f"alpha {best['alpha']:g} @{best['input_size']} px, {best['macs'] / chosen['macs']:.1f}x MACs"


def write_doc(work: Path) -> None:
    lines = [
        "## `--fit PROFILE` on the default model (issue 12)",
        "",
        f"- Table written {today()} at edgecls {git_sha()} on {machine()}; when each row was searched: the notes.",
        "- Source: the default job's run (`bench-runs/default-job`, MobileNet v1 0.25 @128 px, 0.8885 float, 0.8845 int8); "
        "data: the full JPEG CIFAR-10 of ../shared; accuracies on all 10,000 test images. Budgets: the profile's flash "
        "minus 64 KiB for the application, its RAM minus 16 KiB, the arena with the firmware's 10 % margin.",
        "- Reproduce: `python bench/fit.py bench-runs/default-job` then `python bench/fit.py --write` (runs in "
        "bench-runs/fit-size).",
        "",
        "| profile | flash / RAM | channels removed | input | val acc (search) | float acc | int8 TFLite acc | int8 bytes | "
        "arena (+margin) | candidates fitting; evaluated (share@px, val acc) | widest other width that fits (untrained) "
        "| fit wall min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for profile in PROFILES:
        run = work / profile
        if not (run / "firmware").is_dir():
            continue
        report = json.loads((run / f"fit/{profile}/fit.json").read_text())
        budget, candidates = report["budget"], report["candidates"]
        chosen = next(c for c in candidates if c["chosen"])
        final = FinalStage(run)
        trained = ", ".join(f"{c['ratio']:.0%}@{c['input_size']} ({c['val_accuracy']:.4f})" for c in candidates
                            if c["val_accuracy"] is not None)  # fmt: skip
        fitting = f"{sum(c['fits'] for c in candidates)} of {len(candidates)}; evaluated: {trained}"
        minutes = json.loads((run / "bench-timings.json").read_text())["optimize"] / 60
        widths = report.get("other_widths")
        lines.append(
            f"| {profile} | {budget['flash_bytes'] // 1024} KiB / {budget['ram_bytes'] // 1024} KiB | {chosen['ratio']:.0%} "
            f"| {chosen['input_size']} px | {chosen['val_accuracy']:.4f} | {final.accuracy('litert', 'fp32'):.4f} "
            f"| {final.accuracy('litert', 'int8'):.4f} | {final.int8_bytes():,} "
            f"| {final.firmware.arena_bytes_measured:,} ({final.firmware.arena_bytes:,}) "
            f"| {fitting} | {widest(widths, chosen)} | {minutes:.0f} |"
        )
    lines += ["", "Each profile's search table is `RUN/fit/PROFILE/fit.md`. Commands (RUN = a copy of the source run):", ""]
    for profile in PROFILES:
        lines.append(f"- {profile}: " + "; ".join(f"`{shlex.join(c)}`" for c in commands(Path("RUN"), profile)))
    write_section("fit-profile", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path)
    parser.add_argument("--only", nargs="*", default=list(PROFILES))
    parser.add_argument("--work", type=Path, default=ROOT / "bench-runs" / "fit-size")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.write:
        write_doc(args.work)
        return
    for profile in args.only:
        run_profile(args.source.resolve(), args.work, profile)


if __name__ == "__main__":
    main()
