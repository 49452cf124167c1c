"""Where does LiteRT int8 time go, and can removing channels shorten it? (issue 12, the latency target)

Channel pruning 30 % of the default MCU model (MobileNet v1 0.25 @128 px) halves its MACs, yet
LiteRT int8 on this x86 host runs it 0.95-0.99x as long (bench/channels.py --interleaved). This
script measures why, on a run's fine-tuned model:

- prefixes of the network, from the input to the output of a layer (the stem `conv1`, the first
  depthwise and pointwise convolutions, then every other block), each converted to int8 on its
  own: the time of a prefix is what the layers up to there cost (plus the fixed cost of one
  invoke, which every prefix pays);
- cuts of 30 % and 50 % of the channels with widths in multiples of 4, 8 and 16 (XNNPACK's int8
  kernels work on tiles of 8 or 16 channels; widths below a tile cost a whole tile).

The cuts are untrained (`edgecls.optimize.fit.cut`): latency does not depend on the weights' values.
Every file is timed in interleaved rounds on one core (each round times each file for 0.5 s, in a
new random order), so the host's speed drift falls on all files alike; the table gives the
fastest round's median, its share of the whole model's fastest round, and the median over rounds
of the ratio to the whole model in the same round.

Usage:
    python bench/latency_depth.py RUN [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from common import ROOT, git_sha, machine, today, write_section

from edgecls.optimize import fit
from edgecls.run import RunDir

PREFIXES = (
    "conv1_relu",
    "conv_dw_1_relu",
    "conv_pw_1_relu",
    "conv_pw_3_relu",
    "conv_pw_5_relu",
    "conv_pw_7_relu",
    "conv_pw_11_relu",
)
CUTS = ((0.3, 4), (0.3, 8), (0.3, 16), (0.5, 4), (0.5, 16))


def int8_files(model) -> dict[str, bytes]:
    """The whole model, its prefixes and its channel cuts, as int8 flatbuffers (throwaway calibration)."""
    import tf_keras

    files = {"whole model": fit.throwaway_int8(model)}
    for layer in PREFIXES:
        prefix = tf_keras.Model(model.input, model.get_layer(layer).output)
        files[f"input to {layer.removesuffix('_relu')}"] = fit.throwaway_int8(prefix)
    for ratio, round_to in CUTS:
        thin, _ = fit.cut(model, ratio, model.input_shape[1], "l1", round_to)
        files[f"{ratio:.0%} of the channels removed, widths multiples of {round_to}"] = fit.throwaway_int8(thin)
    return files


def interleaved(files: dict[str, bytes], rounds: int) -> dict[str, list[float]]:
    """Per file, the median latency (ms) of each round; every round times every file for 0.5 s, one core."""
    from edgecls.worker import TFLiteModel, timed_windows

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    folder = ROOT / "bench-runs" / "latency-depth"
    folder.mkdir(parents=True, exist_ok=True)
    infers = {}
    for index, (name, flatbuffer) in enumerate(files.items()):
        path = folder / f"file{index}.tflite"
        path.write_bytes(flatbuffer)
        model = TFLiteModel(str(path), 1)
        infers[name] = model.inference(np.zeros(model.input["shape"], np.float32))
    per_round = {name: [] for name in files}
    order = list(infers)
    for _ in range(rounds):
        np.random.default_rng(len(per_round["whole model"])).shuffle(order)
        for name in order:
            infer = infers[name]
            per_round[name].append(float(np.median(timed_windows(infer, windows=1, seconds=0.5, min_runs=20)[0])))
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = RunDir(args.run).load_model("finetune")[0]
    files = int8_files(model)
    per_round = interleaved(files, args.rounds)
    whole = np.array(per_round["whole model"])
    rows = {name: {"bytes": len(files[name]), "fastest_ms": min(v), "fastest_share": min(v) / whole.min(),
                   "ratio": float(np.median(np.array(v) / whole))} for name, v in per_round.items()}  # fmt: skip
    (ROOT / "bench-runs" / "latency-depth" / "result.json").write_text(json.dumps({"rounds_ms": per_round, "rows": rows}, indent=1))
    lines = [
        "## Where LiteRT int8 time goes (`bench/latency_depth.py`)",
        "",
        f"`python bench/latency_depth.py {args.run}` ({today()}, commit {git_sha()}, {machine()}; LiteRT int8, 1 thread,"
        f" one core, {args.rounds} interleaved rounds of 0.5 s per file; the model: the default recipe's fine-tuned"
        " MobileNet v1 0.25 @128 px; prefixes and cuts converted with a throwaway calibration, cuts untrained).",
        "",
        "| file | int8 bytes | fastest round, ms | / whole model's fastest | median over rounds of / whole model |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {row['bytes']:,} | {row['fastest_ms']:.3f} | {row['fastest_share']:.2f} | {row['ratio']:.2f} |"
            for name, row in rows.items()
        ],
    ]
    write_section("latency-depth", "\n".join(lines))


if __name__ == "__main__":
    main()
