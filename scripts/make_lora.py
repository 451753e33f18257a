#!/usr/bin/env python3
"""Writes a LoRA base model and adapters for it, as a herd model repository (issue 13).

The base: y = x @ W + (x @ lora_A) @ lora_B, then a softmax head. `lora_A` and `lora_B` are
graph inputs with zero initializers (ONNX Runtime's LoRA convention: an adapter's parameters
replace them per run, and without one the base runs as if there were no adapter).
Each adapter (`.onnx_adapter`, written with onnxruntime.AdapterFormat) holds its own
lora_A / lora_B. Layout:

    OUT/<base>/1/model.onnx
    OUT/<name>-NNN/config.toml       base = "<base>", adapter = "adapter.onnx_adapter"
    OUT/<name>-NNN/1/adapter.onnx_adapter

    make_lora.py OUT --count 3 [--base lora-base] [--dim 256] [--rank 8]

Prints one JSON line: {"base": ..., "adapters": [...], "dim": ...}.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def base_model(dim, rank, classes, seed=5):
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(dim, dim)) / np.sqrt(dim)).astype(np.float32)
    head = (0.1 * rng.normal(size=(dim, classes))).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(head, "head"),
        numpy_helper.from_array(np.zeros((dim, rank), np.float32), "lora_A"),
        numpy_helper.from_array(np.zeros((rank, dim), np.float32), "lora_B"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("MatMul", ["x", "lora_A"], ["xa"]),
        helper.make_node("MatMul", ["xa", "lora_B"], ["xab"]),
        helper.make_node("Add", ["xw", "xab"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "lora-base",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim]),
            # Overridable: the adapter's values replace the zero defaults per run.
            helper.make_tensor_value_info("lora_A", TensorProto.FLOAT, [dim, rank]),
            helper.make_tensor_value_info("lora_B", TensorProto.FLOAT, [rank, dim]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def write_adapter(path, dim, rank, seed):
    rng = np.random.default_rng(100 + seed)
    a = (rng.normal(size=(dim, rank)) / np.sqrt(dim)).astype(np.float32)
    b = (0.1 * rng.normal(size=(rank, dim))).astype(np.float32)
    f = ort.AdapterFormat()
    f.set_adapter_version(1)
    f.set_model_version(1)
    f.set_parameters({
        "lora_A": ort.OrtValue.ortvalue_from_numpy(a),
        "lora_B": ort.OrtValue.ortvalue_from_numpy(b),
    })
    f.export_adapter(str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--base", default="lora-base")
    ap.add_argument("--name", default="tuned")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--classes", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out)
    d = out / args.base / "1"
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(base_model(args.dim, args.rank, args.classes), str(d / "model.onnx"))
    names = []
    for i in range(args.count):
        name = f"{args.name}-{i:03d}"
        m = out / name
        (m / "1").mkdir(parents=True, exist_ok=True)
        (m / "config.toml").write_text(f'base = "{args.base}"\nadapter = "adapter.onnx_adapter"\n')
        write_adapter(m / "1" / "adapter.onnx_adapter", args.dim, args.rank, i)
        names.append(name)
    json.dump({"base": args.base, "adapters": names, "dim": args.dim}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
