"""Channel pruning: remove whole output channels of convolutions and rebuild a thinner flat model.

TFMOT prunes weights (zeros in dense tensors, which no TFLite Micro kernel skips);
removing channels makes every tensor smaller, so flash, arena and latency shrink
with it. Nothing maintained does this for Keras functional models, so it is written
here, on the flat functional graph the registry builds:

1. `channel_groups` finds each `Conv2D` whose output channels reach, through
   channel-wise layers only (BatchNorm, ReLU, padding, depthwise convolution,
   pooling, dropout), the input of exactly one `Conv2D` or `Dense`. Those channels
   can go together: the producer's filters, the followers' per-channel weights, the
   consumer's input rows. A producer feeding an `Add` or a concatenation is left
   whole (its channels are tied to another branch's).
2. `channel_scores` ranks a group's channels by a measured criterion: the L1 or L2
   norm of the producer's filters, or the |scale| of the BatchNorm that follows
   (Liu et al., "network slimming").
3. `prune_channels` keeps the best `1 - ratio` of each group's channels, edits the
   model's config (`filters`), rebuilds it with `Model.from_config`, and copies the
   kept slices of every weight: nothing is zeroed, the tensors are smaller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecls.errors import ConfigError

CRITERIA = ("l1", "l2", "bn")
CHANNELWISE = ("BatchNormalization", "ReLU", "Activation", "ZeroPadding2D", "Dropout", "DepthwiseConv2D")
POOLS = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of one convolution that can be removed together.

    Attributes:
        producer: The `Conv2D` whose filters are removed.
        followers: Channel-wise layers in between whose per-channel weights shrink with it.
        consumer: The `Conv2D` or `Dense` whose input channels shrink with it.
        channels: The producer's output channels before pruning.
    """

    producer: str
    followers: tuple[str, ...]
    consumer: str
    channels: int


def _consumers(config: dict[str, Any]) -> dict[str, list[str]]:
    """Layer name -> names of the layers that take its output (from the functional config)."""
    found: dict[str, list[str]] = {}
    for layer in config["layers"]:
        for node in layer.get("inbound_nodes", []):
            for inbound in node:
                found.setdefault(inbound[0], []).append(layer["name"])
    return found


def _trace(name: str, layers: Mapping[str, Any], consumers: Mapping[str, list[str]]) -> tuple[list[str], str] | None:
    """(followers, consumer) of the channels `name` produces, or None if they reach anything else."""
    followers, current, pooled = [], name, False
    while True:
        after = consumers.get(current, [])
        if len(after) != 1:
            return None
        layer = layers[after[0]]
        kind = type(layer).__name__
        if kind == "Conv2D" and layer.groups == 1 and not pooled:
            return followers, layer.name
        if kind == "Dense" and pooled:
            return followers, layer.name
        if kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
            return None
        if kind in POOLS and not layer.keepdims:
            pooled = True
        elif kind not in CHANNELWISE:
            return None
        if kind in CHANNELWISE and kind != "ReLU" and kind != "Activation" and kind != "Dropout":
            followers.append(layer.name)
        current = layer.name


def channel_groups(model) -> list[ChannelGroup]:
    """Every prunable group of `model`, in layer order."""
    layers = {layer.name: layer for layer in model.layers}
    consumers = _consumers(model.get_config())
    groups = []
    for layer in model.layers:
        if type(layer).__name__ != "Conv2D" or layer.groups != 1:
            continue
        traced = _trace(layer.name, layers, consumers)
        if traced is not None:
            followers, consumer = traced
            groups.append(ChannelGroup(layer.name, tuple(f for f in followers if f in layers), consumer, layer.filters))
    return groups


def channel_scores(model, group: ChannelGroup, criterion: str) -> np.ndarray:
    """One score per output channel of `group.producer`; the lowest are removed first."""
    if criterion not in CRITERIA:
        raise ConfigError(f"optimize.channel_criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}.")
    kernel = model.get_layer(group.producer).get_weights()[0]
    flat = kernel.reshape(-1, kernel.shape[-1])
    if criterion == "l1":
        return np.abs(flat).sum(axis=0)
    if criterion == "l2":
        return np.sqrt((flat**2).sum(axis=0))
    norm = next((model.get_layer(f) for f in group.followers if type(model.get_layer(f)).__name__ == "BatchNormalization"), None)
    if norm is None or not norm.scale:
        raise ConfigError(f"criterion `bn` needs a BatchNorm with a scale after `{group.producer}`; use `l1` or `l2`.")
    return np.abs(norm.get_weights()[0])


ROUND_TO = 4  # kept widths are multiples of 4: XNNPACK, MLAS and CMSIS-NN kernels work in blocks of 4-16 channels


def kept_count(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels left after removing `ratio` of `channels`: rounded to a multiple of `round_to` (at least one
    multiple, at most all of them).

    Odd widths cost more than they save: with 30 % removed to widths like 45 and 179, ONNX Runtime ran the thinner
    model 2x slower than the unpruned one (docs/benchmarks.md, "Channel pruning").
    """
    kept = channels * (1.0 - ratio)
    if round_to > 1:
        return int(min(channels, max(round_to, round(kept / round_to) * round_to)))
    return max(1, int(round(kept)))


def choose_channels(model, ratios: float | Mapping[str, float], criterion: str, round_to: int = ROUND_TO) -> dict[str, np.ndarray]:
    """Producer name -> sorted indices of the channels to keep.

    `ratios` is one share for every group, or a map from producer name to its share
    (groups it does not name keep all their channels); a name that is not a prunable
    producer is a `ConfigError`.
    """
    groups = channel_groups(model)
    if isinstance(ratios, Mapping):
        known = {g.producer for g in groups}
        unknown = sorted(set(ratios) - known)
        if unknown:
            raise ConfigError(
                f"optimize.prune_channels names `{unknown[0]}`, which is not a prunable convolution "
                f"(prunable: {', '.join(sorted(known))})."
            )
    keep = {}
    for group in groups:
        ratio = ratios.get(group.producer, 0.0) if isinstance(ratios, Mapping) else ratios
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"optimize.prune_channels must be in [0, 1) for every layer; got {ratio!r} for {group.producer}.")
        scores = channel_scores(model, group, criterion)
        best = np.argsort(-scores, kind="stable")[: kept_count(group.channels, ratio, round_to)]
        keep[group.producer] = np.sort(best)
    return keep


def _slices(model, keep: Mapping[str, np.ndarray]) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """Layer name -> [(weight index, axis, kept indices)] for every weight `keep` shrinks."""
    slices: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for group in channel_groups(model):
        if group.producer not in keep:
            continue
        kept = keep[group.producer]
        producer = model.get_layer(group.producer)
        slices.setdefault(group.producer, []).append((0, 3, kept))
        if producer.use_bias:
            slices[group.producer].append((1, 0, kept))
        for name in group.followers:
            layer = model.get_layer(name)
            kind = type(layer).__name__
            if kind == "BatchNormalization":
                slices.setdefault(name, []).extend((i, 0, kept) for i in range(len(layer.get_weights())))
            elif kind == "DepthwiseConv2D":
                slices.setdefault(name, []).append((0, 2, kept))
                if layer.use_bias:
                    slices[name].append((1, 0, kept))
        consumer = model.get_layer(group.consumer)
        axis = 0 if type(consumer).__name__ == "Dense" else 2
        slices.setdefault(group.consumer, []).append((0, axis, kept))
    return slices


def rebuild(model, keep: Mapping[str, np.ndarray]):
    """A new model with only the `keep` channels of each producer, the kept weights copied."""
    import tf_keras

    config = model.get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # shapes from before pruning; from_config infers the new ones
        if layer["name"] in keep:
            layer["config"]["filters"] = int(len(keep[layer["name"]]))
    thin = tf_keras.Model.from_config(config)
    slices = _slices(model, keep)
    for layer in model.layers:
        weights = layer.get_weights()
        for index, axis, kept in slices.get(layer.name, []):
            weights[index] = np.take(weights[index], kept, axis=axis)
        if weights:
            thin.get_layer(layer.name).set_weights(weights)
    return thin


def prune_channels(model, ratios: float | Mapping[str, float], criterion: str = "l1", round_to: int = ROUND_TO):
    """`model` without the `ratios` share of each prunable group's channels (lowest `criterion` first), each kept
    width a multiple of `round_to` (1: exactly the share).

    Returns:
        (thin model, {producer: [channels before, channels after]}).
    """
    keep = choose_channels(model, ratios, criterion, round_to)
    thin = rebuild(model, keep)
    widths = {name: [int(model.get_layer(name).filters), int(len(kept))] for name, kept in keep.items()}
    return thin, widths
