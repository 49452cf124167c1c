"""Accuracy-aware int8: keep the worst layers in float until the int8 drop is within a tolerance.

The search is the one Intel Neural Compressor's accuracy-aware tuning and ST's
quantizer in automatic mode use: walk the layers in the debugger's ranking
(worst first), fall one back to float, measure the validation accuracy, keep
the fallback only if it helped, and stop when the drop is within the tolerance
or `max_float_layers` layers are float. The builders that make a file with
given float layers are the runtimes' own: the TFLite debugger's denylist
(`edgecls.export.debug.tflite_with_float_layers`) and ONNX Runtime's
`nodes_to_exclude`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgecls.export.debug import LayerError


@dataclass(frozen=True)
class Trial:
    """One measured candidate: these Keras layers in float gave this validation accuracy."""

    float_layers: tuple[str, ...]
    accuracy: float
    kept: bool


@dataclass
class Fallback:
    """The outcome of the search for one int8 file.

    Attributes:
        tolerance_pp: The allowed drop, in accuracy points.
        float_accuracy: The float model's validation accuracy.
        int8_accuracy: The all-int8 file's validation accuracy.
        accuracy: The chosen file's validation accuracy.
        float_layers: Keras layers the chosen file keeps in float (empty: the file is all int8).
        nodes: The runtime's names of those layers.
        met: Whether the chosen file is within the tolerance.
        trials: Every candidate measured, in order.
        cost: When float layers were kept: bytes and host latency (1 thread) of the
            all-int8 file and of the chosen one.
        payload: The chosen file's bytes (not serialized).
    """

    tolerance_pp: float
    float_accuracy: float
    int8_accuracy: float
    accuracy: float
    float_layers: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    met: bool = True
    trials: list[Trial] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    payload: Any = None

    @property
    def drop_pp(self) -> float:
        return 100.0 * (self.float_accuracy - self.accuracy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tolerance_pp": self.tolerance_pp,
            "float_accuracy": self.float_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "accuracy": self.accuracy,
            "drop_pp": self.drop_pp,
            "float_layers": list(self.float_layers),
            "met": self.met,
            "cost": dict(self.cost),
            "trials": [{"float_layers": list(t.float_layers), "accuracy": t.accuracy, "kept": t.kept} for t in self.trials],
        }


def within(float_accuracy: float, accuracy: float, tolerance_pp: float) -> bool:
    return 100.0 * (float_accuracy - accuracy) <= tolerance_pp + 1e-9


def search(
    ranking: list[LayerError],
    build: Callable[[list[str]], Any],
    evaluate: Callable[[Any], float],
    *,
    float_accuracy: float,
    int8_accuracy: float,
    int8_payload: Any,
    tolerance_pp: float,
    max_float_layers: int,
    max_trials: int | None = None,
) -> Fallback:
    """Fall back the ranked layers one at a time while the validation drop exceeds `tolerance_pp`.

    Args:
        ranking: Layers worst first (`debug.rank`).
        build: Runtime node names to keep in float -> a file's payload.
        evaluate: A payload -> its validation accuracy.
        float_accuracy: The float model's validation accuracy.
        int8_accuracy: The all-int8 file's validation accuracy.
        int8_payload: The all-int8 file, kept when no fallback helps.
        tolerance_pp: Accuracy points int8 may lose.
        max_float_layers: At most this many layers stay float.
        max_trials: Candidates to measure at most; default 3 x `max_float_layers`.
    """
    best = Fallback(tolerance_pp, float_accuracy, int8_accuracy, int8_accuracy, payload=int8_payload)
    best.met = within(float_accuracy, int8_accuracy, tolerance_pp)
    budget = max_trials if max_trials is not None else 3 * max_float_layers
    for candidate in ranking[:budget]:
        if best.met or len(best.float_layers) >= max_float_layers:
            break
        layers, nodes = (*best.float_layers, candidate.layer), (*best.nodes, candidate.node)
        payload = build(list(nodes))
        accuracy = evaluate(payload)
        kept = accuracy > best.accuracy
        best.trials.append(Trial(layers, accuracy, kept))
        if kept:
            best.accuracy, best.float_layers, best.nodes, best.payload = accuracy, layers, nodes, payload
            best.met = within(float_accuracy, accuracy, tolerance_pp)
    return best
