"""`--fit PROFILE`: the most accurate channel-pruned model whose int8 file and TFLite Micro arena fit a device.

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
from dataclasses import asdict, dataclass

import numpy as np

from edgecls.devices import DeviceProfile
from edgecls.escape import escape_markdown
from edgecls.runtimes import ALIGN

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


@dataclass(frozen=True)
class Budget:
    """What the model may use of a device: flash and RAM minus what the application keeps."""

    profile: str
    flash_bytes: int
    ram_bytes: int
    flash_reserve: int
    ram_reserve: int
    arena_margin: float

    @classmethod
    def of(cls, profile: DeviceProfile, *, flash_reserve: int, ram_reserve: int, arena_margin: float) -> Budget:
        if profile.kind != "mcu":
            from edgecls.errors import ConfigError

            raise ConfigError(f"`--fit` needs an MCU profile (flash and RAM budgets); `{profile.name}` is {profile.kind}.")
        return cls(profile.name, int(profile.flash_bytes), int(profile.ram_bytes), flash_reserve, ram_reserve, arena_margin)

    @property
    def model_flash(self) -> int:
        return self.flash_bytes - self.flash_reserve

    @property
    def arena_ram(self) -> int:
        return self.ram_bytes - self.ram_reserve

    def judge(self, int8_bytes: int, arena: int) -> tuple[int, str]:
        """(arena with margin, why it does not fit or '')."""
        with_margin = math.ceil(arena * (1 + self.arena_margin) / ALIGN) * ALIGN
        reasons = []
        if int8_bytes + METADATA_ALLOWANCE > self.model_flash:
            reasons.append(f"int8 file {int8_bytes:,} B (+{METADATA_ALLOWANCE:,} B metadata) > {self.model_flash:,} B of flash")
        if with_margin > self.arena_ram:
            reasons.append(f"arena {with_margin:,} B (with margin) > {self.arena_ram:,} B of RAM")
        return with_margin, "; ".join(reasons)


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

    The conversions run here; the arenas are measured by TFLite Micro in one child process for all.
    """
    from edgecls.models.resize import input_size_of, with_input_size
    from edgecls.models.stats import model_stats
    from edgecls.runtimes import measure_arenas_isolated

    flatbuffers, stats, pruned = [], [], {}
    for ratio, size in grid:
        if ratio not in pruned:  # the channels chosen for a share do not depend on the input size: cut once
            pruned[ratio] = cut(model, ratio, input_size_of(model), criterion, round_to)[0]
        thin = with_input_size(pruned[ratio], size)
        flatbuffers.append(throwaway_int8(thin))
        stats.append(model_stats(thin))
    candidates = []
    for (ratio, size), flatbuffer, stat, arena in zip(grid, flatbuffers, stats, measure_arenas_isolated(flatbuffers), strict=True):
        with_margin, why_not = budget.judge(len(flatbuffer), arena)
        candidates.append(Candidate(ratio, size, stat["macs"], stat["params"], len(flatbuffer), arena, with_margin, not why_not,
                                    why_not))  # fmt: skip
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
    from edgecls.runtimes import measure_arenas_isolated
    from edgecls.train import reestimate_batchnorm

    measured, flatbuffers = [], []
    for alpha in alphas:
        model, _ = create_model(name, num_classes=num_classes, input_size=max(sizes), alpha=alpha, weights="none")
        if model.count_params() <= budget.model_flash:
            # untrained, the activations vanish layer after layer (int8 scales of 1e-8 on which TFLite Micro
            # aborts): BatchNorm statistics of random images give every layer a unit-scale output, as trained ones have
            images = np.random.default_rng(0).integers(0, 256, (64, max(sizes), max(sizes), 3), dtype=np.uint8)
            reestimate_batchnorm(model, images, mode=get_spec(name).preprocessing)
        for size in sizes:
            sized = with_input_size(model, size)
            stat = model_stats(sized)
            if stat["params"] > budget.model_flash:
                why = f"{stat['params']:,} parameters > {budget.model_flash:,} B of flash (at least a byte each in int8)"
                measured.append(Candidate(0.0, size, stat["macs"], stat["params"], 0, 0, 0, False, why, alpha=alpha))
                continue
            flatbuffers.append(throwaway_int8(sized))
            measured.append(Candidate(0.0, size, stat["macs"], stat["params"], len(flatbuffers[-1]), 0, 0, False, alpha=alpha))
    converted = [c for c in measured if c.int8_bytes]
    for candidate, arena in zip(converted, measure_arenas_isolated(flatbuffers) if flatbuffers else [], strict=True):
        candidate.arena_bytes = arena
        candidate.arena_with_margin, candidate.why_not = budget.judge(candidate.int8_bytes, arena)
        candidate.fits = not candidate.why_not
    return measured


def widest_fitting(widths: list[Candidate], chosen: Candidate) -> Candidate | None:
    """The fitting other-width candidate with the most MACs, if it has more than `chosen` (else None)."""
    fitting = [c for c in widths if c.fits and c.macs > chosen.macs]
    return max(fitting, key=lambda c: c.macs, default=None)


def remeasure(candidate: Candidate, trained, budget: Budget) -> None:
    """Measure a trained candidate again (bytes, arena) and judge it anew: training changes the int8 file's size."""
    from edgecls.runtimes import measure_arena_isolated

    flatbuffer = throwaway_int8(trained)
    candidate.int8_bytes, candidate.arena_bytes = len(flatbuffer), measure_arena_isolated(flatbuffer)
    candidate.arena_with_margin, why_not = budget.judge(candidate.int8_bytes, candidate.arena_bytes)
    candidate.fits, candidate.why_not = not why_not, f"after training: {why_not}" if why_not else ""


def to_train(candidates: list[Candidate], trials: int) -> list[Candidate]:
    """The fitting candidates with the most MACs, at most `trials` of them."""
    fitting = sorted((c for c in candidates if c.fits), key=lambda c: -c.macs)
    return fitting[:trials]


def table(candidates: list[Candidate], budget: Budget, widths: list[Candidate] = (), backbone: str = "") -> str:
    """fit.md: the budget, every candidate, then the other widths and the command for the widest that fits."""
    lines = [
        f"# Fit to `{escape_markdown(budget.profile)}`",
        "",
        f"Model flash: {budget.flash_bytes:,} B minus {budget.flash_reserve:,} B for the application = {budget.model_flash:,} B. "
        f"Arena RAM: {budget.ram_bytes:,} B minus {budget.ram_reserve:,} B reserve = {budget.arena_ram:,} B; "
        f"arena margin {budget.arena_margin:.0%}.",
        "",
        "| channels removed | input | MACs | params | int8 bytes | arena (measured) | arena + margin | fits | val accuracy"
        " | chosen |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for c in candidates:
        fits = "yes" if c.fits else f"no: {c.why_not}"
        accuracy = "" if c.val_accuracy is None else f"{c.val_accuracy:.4f}"
        lines.append(
            f"| {c.ratio:.0%} | {c.input_size} px | {c.macs:,} | {c.params:,} | {c.int8_bytes:,} | {c.arena_bytes:,}"
            f" | {c.arena_with_margin:,} | {fits} | {accuracy} | {'yes' if c.chosen else ''} |"
        )
    chosen = next((c for c in candidates if c.chosen), None)
    return "\n".join(lines) + "\n" + (_widths_table(widths, backbone, chosen) if widths else "")


def _widths_table(widths: list[Candidate], backbone: str, chosen: Candidate | None) -> str:
    """The other widths, measured untrained, and the command for the widest that fits with more MACs than `chosen`."""
    lines = [
        "",
        "## Other widths (a fine-tune of their own from ImageNet; measured, not trained by `--fit`)",
        "",
        "| alpha | input | MACs | params | int8 bytes | arena (measured) | arena + margin | fits |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in widths:
        fits = "yes" if c.fits else f"no: {c.why_not}"
        size, arena = (f"{c.int8_bytes:,}", f"{c.arena_bytes:,}") if c.int8_bytes else ("-", "-")
        margin = f"{c.arena_with_margin:,}" if c.int8_bytes else "-"
        lines.append(f"| {c.alpha:g} | {c.input_size} px | {c.macs:,} | {c.params:,} | {size} | {arena} | {margin} | {fits} |")
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
