"""`--fit PROFILE`: the most accurate channel-pruned model whose int8 file fits a device's budgets.

A microcontroller profile budgets flash (the int8 file) and RAM (the TFLite Micro arena); a Linux
profile the model file, the median latency and the runtime's peak resident memory, which the
bench worker measures under LiteRT on this machine (1 thread, in a child process pinned to one
core), as `edgecls bench` would. Every candidate's LiteRT latency is measured and tabled, for
either kind.

The search measures instead of estimating: every candidate (a share of removed channels at an
input size) is cut from the fine-tuned model (untrained; a convolutional network with global
pooling takes its weights at any input size), converted to int8 by `TFLiteConverter` (a
throwaway conversion on random inputs: sizes and the arena do not depend on the
calibration values), and its arena measured by the TFLite Micro interpreter in a child
process. Candidates whose file exceeds the flash budget, or whose arena with the firmware
margin exceeds the RAM budget, are rejected before any training; a trained candidate is
measured again (trained weights converted to a file 6 % larger than the untrained cut in
one measurement) and dropped if it no longer fits. When the fine-tuned model
fits as it is, it is the answer (removing channels only costs accuracy). Otherwise the fitting
candidates with the most compute (MACs, the proxy for accuracy before training) are trained,
and the validation accuracy chooses among them; the test split is only reported.

The family's other widths with ImageNet weights (MobileNet alpha 0.5, 0.75, 1.0) are measured
the same way at every searched size and listed apart: each is a fine-tune of its own from
ImageNet, not a compression of this run, so `--fit` does not train them; it names the widest one
that fits, with the command that trains it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecls.devices import DeviceProfile
from edgecls.escape import escape_markdown
from edgecls.runtimes import ALIGN, LatencyMethod

# short windows: the search times 24 candidates or more, and a budget decides between sizes far apart
FIT_LATENCY = LatencyMethod(windows=3, window_seconds=0.25, min_runs=10, warmup=5)

RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
METADATA_ALLOWANCE = 4096  # bytes the export adds to the file (labels, normalization) beyond the bare conversion


@dataclass
class Candidate:
    """One point of the search: a share of removed channels at an input size, and what it measured."""

    ratio: float
    input_size: int
    macs: int
    params: int
    int8_bytes: int
    arena_bytes: int
    arena_with_margin: int
    fits: bool
    why_not: str = ""
    trained: bool = False
    val_accuracy: float | None = None
    chosen: bool = False
    alpha: float | None = None
    p50_ms: float | None = None
    peak_rss_mib: float | None = None


@dataclass(frozen=True)
class Budget:
    """What the model may use of a device.

    Microcontroller: flash and RAM minus what the application keeps. Linux: the model file's
    size, the median latency and the runtime's peak resident memory (each optional, as in the
    profile), with nothing reserved.
    """

    profile: str
    flash_bytes: int | None
    ram_bytes: int | None
    flash_reserve: int
    ram_reserve: int
    arena_margin: float
    kind: str = "mcu"
    max_p50_ms: float | None = None
    max_ram_mib: float | None = None

    @classmethod
    def of(cls, profile: DeviceProfile, *, flash_reserve: int, ram_reserve: int, arena_margin: float) -> Budget:
        if profile.kind == "linux":
            model_bytes = None if profile.max_model_bytes is None else int(profile.max_model_bytes)
            return cls(profile.name, model_bytes, None, 0, 0, arena_margin, "linux", profile.max_p50_ms, profile.max_ram_mib)
        return cls(profile.name, int(profile.flash_bytes), int(profile.ram_bytes), flash_reserve, ram_reserve, arena_margin)

    @property
    def model_flash(self) -> int | None:
        """Bytes the int8 file may take (flash, or a Linux model file); None: no limit."""
        return None if self.flash_bytes is None else self.flash_bytes - self.flash_reserve

    @property
    def arena_ram(self) -> int | None:
        """Bytes the TFLite Micro arena may take; None on Linux (no arena)."""
        return None if self.ram_bytes is None else self.ram_bytes - self.ram_reserve

    @property
    def needs_arena(self) -> bool:
        return self.kind == "mcu"

    def judge(self, int8_bytes: int, arena: int, p50_ms: float | None = None, rss_mib: float | None = None) -> tuple[int, str]:
        """(arena with margin, why it does not fit or '')."""
        with_margin = math.ceil(arena * (1 + self.arena_margin) / ALIGN) * ALIGN
        reasons = []
        if self.model_flash is not None and int8_bytes + METADATA_ALLOWANCE > self.model_flash:
            where = "of flash" if self.kind == "mcu" else "for the model file"
            reasons.append(f"int8 file {int8_bytes:,} B (+{METADATA_ALLOWANCE:,} B metadata) > {self.model_flash:,} B {where}")
        if self.arena_ram is not None and with_margin > self.arena_ram:
            reasons.append(f"arena {with_margin:,} B (with margin) > {self.arena_ram:,} B of RAM")
        if self.max_p50_ms is not None and p50_ms is not None and p50_ms > self.max_p50_ms:
            reasons.append(f"p50 {p50_ms:.3f} ms > {self.max_p50_ms:g} ms")
        if self.max_ram_mib is not None and rss_mib is not None and rss_mib > self.max_ram_mib:
            reasons.append(f"peak memory {rss_mib:.0f} MiB > {self.max_ram_mib:g} MiB")
        return with_margin, "; ".join(reasons)


def measure_latencies(flatbuffers: list[bytes], threads: int = 1) -> list[dict]:
    """LiteRT latency and peak memory of each int8 file on this machine: the bench worker in a pinned child process.

    Returns:
        One dict per file with `p50_ms` and `peak_rss_mib` (the worker's `bench` answer).
    """
    from edgecls.runtimes import isolated_latency

    with tempfile.TemporaryDirectory() as folder:
        results = []
        for index, flatbuffer in enumerate(flatbuffers):
            path = Path(folder) / f"candidate{index}.tflite"
            path.write_bytes(flatbuffer)
            results.append(isolated_latency(path, threads=threads, method=FIT_LATENCY))
            path.unlink()
        return results


def _measure_files(flatbuffers: list[bytes], budget: Budget) -> tuple[list[int], list[dict]]:
    """The TFLite Micro arenas (microcontroller budgets; zeros on Linux) and LiteRT latencies of the files."""
    from edgecls.runtimes import measure_arenas_isolated

    if not flatbuffers:
        return [], []
    arenas = measure_arenas_isolated(flatbuffers) if budget.needs_arena else [0] * len(flatbuffers)
    return arenas, measure_latencies(flatbuffers)


def _judge(candidate: Candidate, budget: Budget, arena: int, timing: dict, prefix: str = "") -> None:
    """Record a candidate's arena and timing, and whether it fits (`prefix` explains when it was measured)."""
    candidate.arena_bytes, candidate.p50_ms, candidate.peak_rss_mib = arena, timing["p50_ms"], timing["peak_rss_mib"]
    candidate.arena_with_margin, why_not = budget.judge(candidate.int8_bytes, arena, candidate.p50_ms, candidate.peak_rss_mib)
    candidate.fits, candidate.why_not = not why_not, f"{prefix}{why_not}" if why_not else ""


def throwaway_int8(model) -> bytes:
    """An int8 TFLite conversion on random inputs: right sizes and arena, meaningless accuracy."""
    from edgecls.export.tflite import convert

    shape = [1, *model.input_shape[1:]]
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(4):
            yield [rng.uniform(-1, 1, shape).astype(np.float32)]

    return convert(model, "int8", representative=representative)


def default_sizes(size: int) -> tuple[int, ...]:
    """The fine-tuned size and 7/8 and 3/4 of it, in multiples of 8, largest first (128: 128, 112, 96)."""
    return tuple(dict.fromkeys(max(32, 8 * round(size * share / 8)) for share in (1.0, 7 / 8, 3 / 4)))


def cut(model, ratio: float, size: int, criterion: str, round_to: int = 8):
    """`model` without `ratio` of its channels, at input `size` (the model itself at 0 % and its own size).

    Returns:
        (model, {producer: [channels before, channels after]}).
    """
    from edgecls.models.resize import with_input_size
    from edgecls.optimize.channels import channel_groups, prune_channels

    if ratio > 0:
        thin, widths = prune_channels(model, ratio, criterion, round_to)
    else:
        thin, widths = model, {g.producer: [g.channels, g.channels] for g in channel_groups(model)}
    return with_input_size(thin, size), widths


def measure_all(model, grid: list[tuple[float, int]], criterion: str, budget: Budget, round_to: int = 8) -> list[Candidate]:
    """Cut each (share of channels, input size) of `grid` from `model` and measure the untrained results against `budget`.

    The conversions run here; the arenas are measured by TFLite Micro in one child process for all,
    the latencies by the bench worker.
    """
    from edgecls.models.resize import input_size_of, with_input_size
    from edgecls.models.stats import model_stats

    flatbuffers, stats, pruned = [], [], {}
    for ratio, size in grid:
        if ratio not in pruned:  # the channels chosen for a share do not depend on the input size: cut once
            pruned[ratio] = cut(model, ratio, input_size_of(model), criterion, round_to)[0]
        thin = with_input_size(pruned[ratio], size)
        flatbuffers.append(throwaway_int8(thin))
        stats.append(model_stats(thin))
    candidates = []
    for (ratio, size), flatbuffer, stat, arena, timing in zip(grid, flatbuffers, stats, *_measure_files(flatbuffers, budget),
                                                              strict=True):  # fmt: skip
        candidate = Candidate(ratio, size, stat["macs"], stat["params"], len(flatbuffer), 0, 0, False)
        _judge(candidate, budget, arena, timing)
        candidates.append(candidate)
    return candidates


def measure(model, ratio: float, criterion: str, budget: Budget, round_to: int = 8, size: int | None = None) -> Candidate:
    """Cut `ratio` of the channels from `model`, at input `size` (default its own), and measure the untrained result."""
    from edgecls.models.resize import input_size_of

    return measure_all(model, [(ratio, size or input_size_of(model))], criterion, budget, round_to)[0]


def other_widths(name: str, alpha: float) -> tuple[float, ...]:
    """The widths of backbone `name`, other than `alpha`, for which ImageNet weights are published."""
    from edgecls.models import get_spec

    return tuple(a for a in get_spec(name).imagenet_alphas if a != alpha)


def measure_widths(name: str, alphas: tuple[float, ...], sizes: list[int], num_classes: int, budget: Budget) -> list[Candidate]:
    """Measure backbone `name` at each of `alphas` x `sizes`, untrained (sizes and the arena do not depend on weights).

    A width whose parameters alone exceed the flash budget (int8 stores at least a byte per weight)
    is rejected without a conversion.
    """
    from edgecls.models import create_model, get_spec
    from edgecls.models.resize import with_input_size
    from edgecls.models.stats import model_stats
    from edgecls.train import reestimate_batchnorm

    measured, flatbuffers = [], []
    for alpha in alphas:
        model, _ = create_model(name, num_classes=num_classes, input_size=max(sizes), alpha=alpha, weights="none")
        if budget.model_flash is None or model.count_params() <= budget.model_flash:
            # untrained, the activations vanish layer after layer (int8 scales of 1e-8 on which TFLite Micro
            # aborts): BatchNorm statistics of random images give every layer a unit-scale output, as trained ones have
            images = np.random.default_rng(0).integers(0, 256, (64, max(sizes), max(sizes), 3), dtype=np.uint8)
            reestimate_batchnorm(model, images, mode=get_spec(name).preprocessing)
        for size in sizes:
            sized = with_input_size(model, size)
            stat = model_stats(sized)
            if budget.model_flash is not None and stat["params"] > budget.model_flash:
                why = f"{stat['params']:,} parameters > {budget.model_flash:,} B of flash (at least a byte each in int8)"
                measured.append(Candidate(0.0, size, stat["macs"], stat["params"], 0, 0, 0, False, why, alpha=alpha))
                continue
            flatbuffers.append(throwaway_int8(sized))
            measured.append(Candidate(0.0, size, stat["macs"], stat["params"], len(flatbuffers[-1]), 0, 0, False, alpha=alpha))
    converted = [c for c in measured if c.int8_bytes]
    for candidate, arena, timing in zip(converted, *_measure_files(flatbuffers, budget), strict=True):
        _judge(candidate, budget, arena, timing)
    return measured


def widest_fitting(widths: list[Candidate], chosen: Candidate) -> Candidate | None:
    """The fitting other-width candidate with the most MACs, if it has more than `chosen` (else None)."""
    fitting = [c for c in widths if c.fits and c.macs > chosen.macs]
    return max(fitting, key=lambda c: c.macs, default=None)


def remeasure(candidate: Candidate, trained, budget: Budget) -> None:
    """Measure a trained candidate again (bytes, arena, latency) and judge it anew: training changes the int8 file's size."""
    flatbuffer = throwaway_int8(trained)
    candidate.int8_bytes = len(flatbuffer)
    (arena,), (timing,) = _measure_files([flatbuffer], budget)
    _judge(candidate, budget, arena, timing, prefix="after training: ")


def to_train(candidates: list[Candidate], trials: int) -> list[Candidate]:
    """The fitting candidates with the most MACs, at most `trials` of them."""
    fitting = sorted((c for c in candidates if c.fits), key=lambda c: -c.macs)
    return fitting[:trials]


def table(candidates: list[Candidate], budget: Budget, widths: list[Candidate] = (), backbone: str = "") -> str:
    """fit.md: the budget, every candidate, then the other widths and the command for the widest that fits."""
    lines = [
        f"# Fit to `{escape_markdown(budget.profile)}`",
        "",
        _budget_line(budget),
        "",
        "| channels removed | input | MACs | params | int8 bytes | arena (measured) | arena + margin | LiteRT p50 ms"
        " | peak MiB | fits | val accuracy | chosen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for c in candidates:
        fits = "yes" if c.fits else f"no: {c.why_not}"
        accuracy = "" if c.val_accuracy is None else f"{c.val_accuracy:.4f}"
        lines.append(
            f"| {c.ratio:.0%} | {c.input_size} px | {c.macs:,} | {c.params:,} | {c.int8_bytes:,} | {_arena_cells(c, budget)}"
            f" | {_timing_cells(c)} | {fits} | {accuracy} | {'yes' if c.chosen else ''} |"
        )
    chosen = next((c for c in candidates if c.chosen), None)
    return "\n".join(lines) + "\n" + (_widths_table(widths, budget, backbone, chosen) if widths else "")


def _budget_line(budget: Budget) -> str:
    """The budgets a candidate is judged against, in words, and where the latency is measured."""
    timing = "LiteRT p50 and peak memory: int8, 1 thread, measured on this machine by the bench worker"
    if budget.kind == "mcu":
        flash = f"Model flash: {budget.flash_bytes:,} B minus {budget.flash_reserve:,} B for the application"
        flash += f" = {budget.model_flash:,} B."
        ram = f"Arena RAM: {budget.ram_bytes:,} B minus {budget.ram_reserve:,} B reserve = {budget.arena_ram:,} B"
        return f"{flash} {ram}; arena margin {budget.arena_margin:.0%}. {timing} (for comparison; the device runs TFLite Micro)."
    limits = [f"model file {budget.model_flash:,} B" if budget.model_flash is not None else "",
              f"p50 {budget.max_p50_ms:g} ms" if budget.max_p50_ms is not None else "",
              f"peak memory {budget.max_ram_mib:g} MiB" if budget.max_ram_mib is not None else ""]  # fmt: skip
    return f"Budgets: {', '.join(limit for limit in limits if limit)}. {timing}, as `edgecls bench` does on the host."


def _arena_cells(c: Candidate, budget: Budget) -> str:
    return f"{c.arena_bytes:,} | {c.arena_with_margin:,}" if budget.needs_arena and c.int8_bytes else "- | -"


def _timing_cells(c: Candidate) -> str:
    return "- | -" if c.p50_ms is None else f"{c.p50_ms:.3f} | {c.peak_rss_mib:.0f}"


def _widths_table(widths: list[Candidate], budget: Budget, backbone: str, chosen: Candidate | None) -> str:
    """The other widths, measured untrained, and the command for the widest that fits with more MACs than `chosen`."""
    lines = [
        "",
        "## Other widths (a fine-tune of their own from ImageNet; measured, not trained by `--fit`)",
        "",
        "| alpha | input | MACs | params | int8 bytes | arena (measured) | arena + margin | LiteRT p50 ms | peak MiB | fits |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in widths:
        fits = "yes" if c.fits else f"no: {c.why_not}"
        size = f"{c.int8_bytes:,}" if c.int8_bytes else "-"
        lines.append(f"| {c.alpha:g} | {c.input_size} px | {c.macs:,} | {c.params:,} | {size} | {_arena_cells(c, budget)}"
                     f" | {_timing_cells(c)} | {fits} |")  # fmt: skip
    hint = wider_hint(widths, chosen, backbone) if chosen else ""
    return "\n".join(lines + (["", hint] if hint else [])) + "\n"


def wider_hint(widths: list[Candidate], chosen: Candidate, backbone: str) -> str:
    """One line naming the widest other width that fits with more MACs than `chosen`, and how to train it ('' if none).

    `backbone` is a registry name (letters, digits, `_`), written as is inside a Markdown code span.
    """
    widest = widest_fitting(widths, chosen)
    if widest is None:
        return ""
    return (
        f"alpha {widest.alpha:g} at {widest.input_size} px also fits, with {widest.macs / chosen.macs:.1f}x the chosen"
        f" model's MACs (not trained: it starts from its own ImageNet weights); fine-tune it and compare validation"
        f" accuracy: `edgecls finetune DATA --model {backbone} --alpha {widest.alpha:g}"
        f" --input-size {widest.input_size}`."
    )


def as_dict(candidates: list[Candidate], budget: Budget, widths: list[Candidate] = ()) -> dict:
    return {"budget": asdict(budget), "candidates": [asdict(c) for c in candidates], "other_widths": [asdict(c) for c in widths]}
