#!/usr/bin/env python3
"""Sentences per second of a text pipeline served by herd, at batch 1 and under concurrency,
and the share of pipeline time spent in tokenization, the model and post-processing (read from
herd's `herd_pipeline_stage_seconds` metric).

Usage (a herd serve with the MiniLM pipeline, e.g. the repository the Python tests build):
    .venv/bin/python bench/pipeline_bench.py --url http://127.0.0.1:8080 --model minilm-embed \
        --seconds 10 --concurrency 1,4,16
Stops by itself; loopback only.
"""
import argparse
import concurrent.futures as cf
import json
import random
import re
import time
import urllib.request

WORDS = ("customer invoice refund order account password login crash payment card delivery late "
         "great service thanks broken screen update feature request cancel subscription price").split()


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "."


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        return r.status


def stage_sums(url):
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for stage in ("tokenize", "model", "post"):
        m = re.search(r'herd_pipeline_stage_seconds_sum\{stage="%s"\} ([0-9.e+-]+)' % stage, text)
        out[stage] = float(m.group(1)) if m else 0.0
    return out


def run(url, model, seconds, concurrency):
    infer = f"{url}/v2/models/{model}/infer"
    deadline = time.time() + seconds
    lat = []

    def worker(seed):
        rng = random.Random(seed)
        n = 0
        while time.time() < deadline:
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [sentence(rng)]}]}
            t = time.perf_counter()
            assert post(infer, body) == 200
            lat.append(time.perf_counter() - t)
            n += 1
        return n

    t0 = time.time()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        total = sum(ex.map(worker, range(concurrency)))
    wall = time.time() - t0
    lat.sort()
    return total / wall, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="minilm-embed")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", default="1,4,16")
    a = ap.parse_args()
    post(f"{a.url}/v2/models/{a.model}/infer",
         {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["warm up"]}]})
    before = stage_sums(a.url)
    print(f"{'concurrency':>11} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for c in (int(x) for x in a.concurrency.split(",")):
        rate, p50, p99 = run(a.url, a.model, a.seconds, c)
        print(f"{c:>11} {rate:>8.1f} {p50:>8.2f} {p99:>8.2f}")
    after = stage_sums(a.url)
    spent = {k: after[k] - before[k] for k in after}
    total = sum(spent.values()) or 1.0
    print("share of pipeline time: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in spent.items()))


if __name__ == "__main__":
    main()
