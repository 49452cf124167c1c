"""edgecls' ONNX Runtime sessions compute int8 products exactly, also on x86 CPUs without VNNI.

There ONNX Runtime adds pairs of uint8 x int8 products in 16 bits, which saturate: a MobileNetV2
int8 file lost 1.66 points of accuracy on an AVX2 host (docs/model_zoo.md). The one-convolution
QDQ model below saturates on such a CPU without `session.x64quantprecision` (it returns about 65
instead of 128); on a CPU with VNNI, or ARM, the test passes either way.

That exact mode cannot load a file whose int8 weights share an initializer, which tf2onnx writes
for every QAT model (it merges equal zero points): edgecls' exports give each weight its own, and
a foreign file that shares them still loads, with the default kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecls.export.onnx import unshare_weight_initializers  # noqa: E402
from edgecls.worker import OnnxModel  # noqa: E402

CHANNELS = 64
OUTPUT_SCALE = 2 * CHANNELS / 127 * 1.01  # 255 steps cover [0, 2 x 128]: one step is about 1.02


def saturating_conv(path, branches: int = 1) -> None:
    """x -> Q/DQ (scale 1/127, zero point -128) -> 1x1 Conv with every int8 weight 127 (scale 1/127) -> Q/DQ.

    With `branches` > 1, that many such convolutions read x, all sharing one weight and one weight
    zero-point initializer (as tf2onnx writes equal constants), and their outputs are averaged.
    """
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
    ]
    for branch in range(branches):
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], [f"wd{branch}"]))
        nodes.append(helper.make_node("Conv", ["xd", f"wd{branch}"], [f"y{branch}"]))
    nodes += [
        helper.make_node("Mean", [f"y{branch}" for branch in range(branches)], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"]),
    ]
    constants = {
        "xs": np.array(1 / 127, np.float32),
        "xz": np.array(-128, np.int8),
        "wq": np.full((1, CHANNELS, 1, 1), 127, np.int8),
        "ws": np.array(1 / 127, np.float32),
        "wz": np.array(0, np.int8),
        "ys": np.array(OUTPUT_SCALE, np.float32),
        "yz": np.array(-128, np.int8),
    }
    graph = helper.make_graph(
        nodes,
        "saturating_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 1, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 1, 1])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_int8_convolution_does_not_saturate(tmp_path):
    path = tmp_path / "saturating_conv.onnx"
    saturating_conv(path)
    x = np.full((1, CHANNELS, 1, 1), 2.0, np.float32)  # int8 126: (126 + 128) / 127 = 2.0 exactly, uint8 254 inside
    # The float reference: every input 2.0 times every weight 1.0 (127 / 127), summed. Pairs of uint8 x int8
    # products (2 x 254 x 127 = 64,516) overflow the 16 bits a non-VNNI x86 kernel adds them in.
    expected = float(CHANNELS * 2.0)
    got = float(OnnxModel(str(path), threads=1).run(x).ravel()[0])
    assert got == pytest.approx(expected, abs=OUTPUT_SCALE)


def test_weights_sharing_an_initializer_load_and_edgecls_exports_unshare_them(tmp_path):
    shared, unshared = tmp_path / "shared.onnx", tmp_path / "unshared.onnx"
    saturating_conv(shared, branches=3)
    proto = unshare_weight_initializers(onnx.load(str(shared)))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(unshared))
    weight_reads = [tuple(node.input[::2]) for node in proto.graph.node if node.input[0].startswith(("wq", "wd"))]
    assert len(weight_reads) == 3 and len({name for names in weight_reads for name in names}) == 6

    x = np.full((1, CHANNELS, 1, 1), 2.0, np.float32)
    exact = OnnxModel(str(unshared), threads=1)
    assert "saturating" not in exact.runtime
    assert float(exact.run(x).ravel()[0]) == pytest.approx(CHANNELS * 2.0, abs=OUTPUT_SCALE)
    foreign = OnnxModel(str(shared), threads=1)  # exact mode fails to load it on x86 without VNNI: default kernels
    assert foreign.run(x).shape == (1, 1, 1, 1)
