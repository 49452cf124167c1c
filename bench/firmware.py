"""Benchmark of `edgecls firmware` (issue 5): measured arena, flash and TFLM accuracy of the default edge model.

Needs the run of bench/finetune.py with its int8 exports (bench/export.py). Writes the
"firmware" section of docs/benchmarks.md, next to the STM32 model zoo's published anchor.

Usage: python bench/firmware.py [--run bench-runs/bench-full] [--parity-images 500]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess

from common import ROOT, git_sha, machine, today, write_section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench-runs/bench-full")
    parser.add_argument("--parity-images", type=int, default=500)
    args = parser.parse_args()
    rows = []
    for stage in ("finetune", "pqat", "qat"):
        command = ["edgecls", "firmware", args.run, "--stage", stage, "--parity-images", str(args.parity_images),
                   "--device", "cortex-m7-stm32h747", "--force"]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)
        result = json.loads((ROOT / args.run / "firmware" / stage / "firmware.json").read_text())
        rows.append((stage, command, result))
    lines = [
        "## TensorFlow Lite Micro firmware (`edgecls firmware`, issue 5)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        f"- Run `{args.run}` (MobileNet v1 0.25, 128 px, int8 TFLite from the export section). Arena measured on the"
        " TFLM interpreter of the `tflite-micro` package (reference kernels, 64-bit host): smallest arena, to 16 bytes,"
        " that allocates and invokes; +10 % margin. TFLM accuracy and TFLM-vs-LiteRT parity on"
        f" {args.parity_images} real JPEG CIFAR-10 test images. Reproduce: `python bench/firmware.py`.",
        "",
        "| model | flash (model bytes) | arena measured | arena with margin | TFLM accuracy | LiteRT (reference kernels)"
        " accuracy | bit-exact outputs | max diff (int8 steps) | STM32H747 budget |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, _, r in rows:
        p = r["parity"]
        device = r["device"]
        verdict = "fits" if device["flash_ok"] and device["ram_ok"] else "does not fit"
        lines.append(
            f"| {stage} int8 | {r['flash_bytes'] / 1024:.0f} KiB | {r['arena_bytes_measured'] / 1024:.1f} KiB |"
            f" {r['arena_bytes'] / 1024:.1f} KiB | {p['tflm_accuracy']:.4f} | {p['litert_accuracy']:.4f} |"
            f" {p['bit_exact_fraction']:.3f} | {p['max_abs_diff_quantized']} | {verdict} |"
        )
    lines += [
        "| anchor: STM32 model zoo, MobileNetV2 0.35 int8 @128 px on STM32H7 (published) | 407 KiB weights |"
        " 237 KiB activations | | | | | | |",
        "",
        *[f"- `{shlex.join(command)}`" for _, command, _ in rows],
    ]
    write_section("firmware", "\n".join(lines))


if __name__ == "__main__":
    main()
