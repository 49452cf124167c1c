"""Latency method (issue 14): five back-to-back `edgecls bench` runs of the default model's exports must agree.

Exports the README default job's run (bench-runs/default-job, from bench/recipe.py) to fp32 and
int8 TFLite and ONNX in a copy, then runs `edgecls bench COPY --threads 1` five times in a row with
the default method (10 warm-up runs, 5 windows of >= 2 s, median of the windows' medians, pinned
core, inference only) and tabulates each file's p50 per invocation, the spread across the five,
the end-to-end figure with the float<->int8 conversion, and the compute bound. Run it on a quiet
machine: nothing else may share the cores (a paused job: `kill -STOP PID`, then `kill -CONT PID`).
Writes the "latency-method" section of docs/benchmarks.md.

Usage: python bench/latency_repeat.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics

from common import ROOT, copy_run, git_sha, machine, run_edgecls, today, write_section

SOURCE = ROOT / "bench-runs" / "default-job"
RUN = ROOT / "bench-runs" / "latency-method" / "default-job"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args()
    copy_run(SOURCE, RUN)
    export = ["edgecls", "export", str(RUN), "--int8"]
    run_edgecls([export])
    bench = ["edgecls", "bench", str(RUN), "--threads", args.threads]
    results = []
    for _ in range(args.repeats):
        run_edgecls([bench])
        results.append(json.loads((RUN / "bench.json").read_text()))
    keys = [(r["artifact"], r["threads"]) for r in results[0]["rows"]]
    lines = [
        "| file | threads | p50 ms, each of the runs | max/min − 1 | spread within a run (windows), max | end-to-end p50 ms |"
        " compute bound ms |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for artifact, threads in keys:
        rows = [next(r for r in result["rows"] if (r["artifact"], r["threads"]) == (artifact, threads)) for result in results]
        p50s = [r["p50_ms"] for r in rows]
        disagreement = max(p50s) / min(p50s) - 1
        worst = max(worst, disagreement)
        bound = rows[0]["compute_bound_ms"]
        lines.append(
            f"| {artifact} | {threads} | {', '.join(f'{p:.3f}' for p in p50s)} | {disagreement * 100:.1f} % |"
            f" {max(r['window_spread_pct'] for r in rows):.1f} % | {statistics.median(r['end_to_end_p50_ms'] for r in rows):.3f} |"
            f" {'' if bound is None else f'{bound:.3f}'} |"
        )
    system = results[0]["system"]
    body = [
        "## Latency method: five back-to-back `edgecls bench` runs (issue 14)",
        "",
        f"- Date: {today()}; edgecls commit {git_sha()}; machine: {machine()}; nothing else running on the cores.",
        f"- Libraries: {', '.join(f'{k} {v}' for k, v in system['versions'].items())}.",
        f"- Model: the README default job (MobileNet v1 0.25 @128 px, {SOURCE.relative_to(ROOT)}), exported with"
        f" `{shlex.join(export)}`; then {args.repeats} times `{shlex.join(bench)}`.",
        "- Method (the defaults): 10 warm-up runs, 5 windows of at least 2 s and 10 runs, process pinned to its cores,"
        " p50 = median of the windows' medians; the timed region is LiteRT `set_tensor` + `invoke` (input already int8"
        " for int8 files) / ONNX Runtime `run_with_iobinding`; end-to-end adds the float copy, the float->int8"
        " quantization of the input and the dequantized output.",
        f"- Peak GEMM of this device (LiteRT, 1 thread, GMAC/s): {results[0]['peak_gmacs']}; compute bound ="
        " model MACs / that peak of the file's precision, shown only where below the measurement.",
        f"- Reproduce: `python bench/latency_repeat.py --repeats {args.repeats} --threads {args.threads}`.",
        "",
        *lines,
        "",
        f"Largest disagreement between the {args.repeats} runs: **{worst * 100:.1f} %** (target: within 10 %).",
    ]
    write_section("latency-method", "\n".join(body))


if __name__ == "__main__":
    main()
