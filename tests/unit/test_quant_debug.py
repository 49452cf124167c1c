"""The int8 debugger's pieces that are ours: name mapping, SQNR, ranking, and the fallback search."""

from __future__ import annotations

import math

import numpy as np

from edgecls.export.debug import LayerError, keras_layer, rank, sqnr_db
from edgecls.export.fallback import search


def error(layer: str, sqnr: float) -> LayerError:
    return LayerError(layer, "CONV_2D", f"node/{layer}", sqnr, 1.0, 0.1, -12.8, 12.7, 0.99)


def test_keras_layer_prefers_the_weighted_layer_of_a_fused_tflite_name():
    name = "m/conv_dw_3_relu/Relu6;m/conv_dw_3_bn/FusedBatchNormV3;m/conv_dw_3/depthwise"
    layers = ["conv_dw_3", "conv_dw_3_bn", "conv_dw_3_relu"]
    assert keras_layer(name, ["conv_dw_3"], layers) == "conv_dw_3"
    assert keras_layer("m/predictions/BiasAdd", ["predictions"], ["predictions"]) == "predictions"
    assert keras_layer("unknown/tensor", ["conv1"], ["conv1"]) == "unknown/tensor"


def test_sqnr_matches_a_hand_computed_value():
    reference = np.array([3.0, 4.0])  # norm 5
    noisy = reference + np.array([0.3, 0.4])  # noise norm 0.5
    assert math.isclose(sqnr_db(reference, noisy), 20.0)
    assert sqnr_db(np.full(4, 1e30, np.float32), np.full(4, 1e30)) > 100  # no float32 overflow


def test_rank_puts_the_lowest_sqnr_first():
    assert [e.layer for e in rank([error("a", 30), error("b", 5), error("c", 12)])] == ["b", "c", "a"]


def run_search(accuracies: dict[tuple[str, ...], float], ranking, *, tolerance=1.0, max_layers=3, int8=0.5):
    built = []

    def build(nodes):
        layers = tuple(node.split("/")[1] for node in nodes)
        built.append(layers)
        return layers

    result = search(
        ranking, build, lambda layers: accuracies[layers], float_accuracy=0.9, int8_accuracy=int8,
        int8_payload=(), tolerance_pp=tolerance, max_float_layers=max_layers,
    )  # fmt: skip
    return result, built


def test_search_skips_a_fallback_that_does_not_help_and_stops_within_tolerance():
    ranking = [error("a", 5), error("b", 6), error("c", 7), error("d", 8)]
    accuracies = {("a",): 0.7, ("a", "b"): 0.6, ("a", "c"): 0.895, ("a", "c", "d"): 0.9}
    result, built = run_search(accuracies, ranking)
    assert result.float_layers == ("a", "c") and result.met and result.payload == ("a", "c")
    assert built == [("a",), ("a", "b"), ("a", "c")]  # d never tried: within tolerance after c
    assert [t.kept for t in result.trials] == [True, False, True]


def test_search_changes_nothing_when_int8_is_within_tolerance():
    result, built = run_search({}, [error("a", 5)], int8=0.895)
    assert built == [] and result.float_layers == () and result.met and result.payload == ()


def test_search_respects_max_float_layers_and_reports_a_miss():
    ranking = [error(name, 5 + i) for i, name in enumerate("abcdef")]
    accuracies = {tuple("abcdef"[: i + 1]): 0.6 + 0.02 * i for i in range(6)}
    result, built = run_search(accuracies, ranking, max_layers=2)
    assert result.float_layers == ("a", "b") and not result.met and len(built) == 2
    assert math.isclose(result.drop_pp, 100 * (0.9 - 0.62))
