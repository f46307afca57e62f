#!/usr/bin/env python3
"""Generates the small ONNX fixtures in tests/fixtures/models/ (committed; rerun only to change them).

Usage: .cache/venv/bin/python scripts/gen_models.py [OUT_DIR]

Opset 17 / IR 8 so that ONNX Runtime >= 1.17 loads them (onnx 1.23 would write IR 11 by default).
  dyn_conv.onnx    images f32 [batch,3,height,width] -> Conv/Relu/GlobalAveragePool -> feat f32 [batch,8,1,1]
                   (dynamic dims addressed by symbol: --dim batch=1 --dim height=32 --dim width=32)
  int_inputs.onnx  ids int64 [1,seq], mask int32 [1,seq] -> Gather(embedding) * mask -> emb f32 [1,seq,4]
  tiny_add.onnx    x f32 [1,16] -> x + c -> y f32 [1,16]   (near-zero compute: measures harness overhead)
  truncated.onnx   the first half of dyn_conv.onnx's bytes (a download cut short)
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR = 8


def save(model, path):
    model.ir_version = IR
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def dyn_conv():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    nodes = [
        helper.make_node("Conv", ["images", "W", "B"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["feat"]),
    ]
    g = helper.make_graph(
        nodes,
        "dyn_conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["batch", 8, 1, 1])],
        initializer=[w, b],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpslab")


def int_inputs():
    table = numpy_helper.from_array(
        np.arange(256 * 4, dtype=np.float32).reshape(256, 4) / 1024.0, "table"
    )
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["emb"]),
    ]
    axis = numpy_helper.from_array(np.array([2], dtype=np.int64), "axis")
    g = helper.make_graph(
        nodes,
        "int_inputs",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, [1, "seq"]),
        ],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, "seq", 4])],
        initializer=[table, axis],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpslab")


def tiny_add():
    c = numpy_helper.from_array(np.full((1, 16), 0.5, dtype=np.float32), "c")
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "tiny_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        initializer=[c],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpslab")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "tests/fixtures/models")
    out.mkdir(parents=True, exist_ok=True)
    save(dyn_conv(), out / "dyn_conv.onnx")
    save(int_inputs(), out / "int_inputs.onnx")
    save(tiny_add(), out / "tiny_add.onnx")
    data = (out / "dyn_conv.onnx").read_bytes()
    (out / "truncated.onnx").write_bytes(data[: len(data) // 2])
    for p in sorted(out.glob("*.onnx")):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
