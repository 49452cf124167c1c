"""Host latency (issue 6): the default edge model and MobileNetV2 1.0, every precision, LiteRT and ONNX Runtime.

Uses the run of bench/finetune.py (with its exports) for the default edge model, and makes a
MobileNetV2 1.0 @224 px run (frozen head, one short epoch: latency does not depend on accuracy)
exported in every precision. Then `edgecls bench` on this host, 1 and all threads, in one
invocation per model. Writes the "latency" section of docs/benchmarks.md.

Usage: python bench/latency.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess

from common import CIFAR_JPEG, ROOT, git_sha, machine, today, write_section

V2_RUN = "bench-runs/latency-mobilenet_v2"


def ensure_v2_run() -> list[list[str]]:
    commands = [
        ["edgecls", "finetune", "--data", str(CIFAR_JPEG), "--model", "mobilenet_v2", "--input-size", "224",
         "--strategy", "frozen", "--epochs", "1", "--limit-per-class", "100", "--test-limit-per-class", "20",
         "--name", "latency-mobilenet_v2", "--runs-dir", "bench-runs", "--force"],
        ["edgecls", "export", V2_RUN, "--precision", "fp32,fp16,dynamic,int8", "--calibration-samples", "100"],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(command, check=True, cwd=ROOT)
    return commands


def table(result: dict) -> list[str]:
    rows = result["rows"]
    fp32 = {(r["stage"], r["runtime_kind"], r["threads"]): r["p50_ms"] for r in rows if r["precision"] == "fp32"}
    lines = [
        "| stage | file | runtime | threads | p50 ms | p90 ms | p99 ms | images/s | fp32/this | compute bound ms | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["stage"], r["threads"], r["runtime_kind"], r["precision"])):
        base = fp32.get((r["stage"], r["runtime_kind"], r["threads"]))
        ratio = f"{base / r['p50_ms']:.2f}x" if base else ""
        lines.append(
            f"| {r['stage']} | {r['artifact']} | {r['runtime']} | {r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} |"
            f" {r['p99_ms']:.3f} | {r['images_per_second']:.0f} | {ratio} |"
            f" {'' if r['compute_bound_ms'] is None else format(r['compute_bound_ms'], '.3f')} |"
            f" {r['peak_rss_mib']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-v2-run", action="store_true")
    args = parser.parse_args()
    prepared = [] if args.skip_v2_run else ensure_v2_run()
    sections = []
    for name, run in (("MobileNet v1 0.25 @128 px (default edge model)", "bench-runs/bench-full"),
                      ("MobileNetV2 1.0 @224 px", V2_RUN)):  # fmt: skip
        command = ["edgecls", "bench", run]
        subprocess.run(command, check=True, cwd=ROOT)
        result = json.loads((ROOT / run / "bench.json").read_text())
        sections += [f"### {name}", "", f"`{shlex.join(command)}` — {result['macs'] / 1e6:.1f} M MACs/image", "",
                     *table(result), "", f"Recommendation: {result['recommendation']}", ""]  # fmt: skip
    lines = [
        "## Host latency (`edgecls bench --device host`, issue 6)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}.",
        "- Single-image latency, each file in its own child process pinned to its cores, with `edgecls bench`'s default"
        " method (10 warm-up runs, 5 windows of >= 2 s, median of the windows' medians, inference only); LiteRT"
        " (ai-edge-litert, default XNNPACK delegate) and ONNX Runtime (CPU EP) side by side; compute bound = model MACs"
        " / the runtime's own GEMM peak of that precision on this CPU, shown only where below the measurement.",
        "- Reproduce: `python bench/latency.py`.",
        *[f"- `{shlex.join(c)}`" for c in prepared],
        "",
        *sections,
    ]
    write_section("latency", "\n".join(lines))


if __name__ == "__main__":
    main()
