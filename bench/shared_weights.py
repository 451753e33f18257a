#!/usr/bin/env python3
"""Models per GiB with and without weight sharing, and the load time of each customer model.

    .venv/bin/python bench/shared_weights.py --encoder minilm --count 200 [--herd target/debug/herd]

Writes COUNT customers of one encoder (scripts/make_customers.py) into a temp dir, then:
- sharing off (HERD_SHARED_WEIGHTS=off): loads 5 customers, reports their charge and load time;
- sharing on: loads all COUNT customers one after another into one server, timing each
  `POST /v2/repository/models/<m>/load`, and reads the charged bytes from the index and /metrics
  and the server's RSS from /proc.
Prints a Markdown table and a JSON line. The temp dir is removed at the end.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, path, body=None):
    req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(), method="POST")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024


def serve(herd, repo, env_extra, log):
    port = free_port()
    env = dict(os.environ, **env_extra)
    proc = subprocess.Popen([herd, "serve", "--repo", str(repo), "--addr", f"127.0.0.1:{port}",
                             "--memory-budget", "64GiB", "--no-auto-install"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"herd did not start: {open(log).read()}")


def load_all(url, models):
    times = []
    for m in models:
        t = time.perf_counter()
        post(url, f"/v2/repository/models/{m}/load")
        times.append(time.perf_counter() - t)
    idx = {e["name"]: e for e in post(url, "/v2/repository/index")}
    return times, idx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="minilm", choices=["minilm", "synthetic"])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--herd", default=str(ROOT / "target" / "debug" / "herd"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="herd-bench-shared-"))
    try:
        repo = tmp / "repo"
        info = json.loads(subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_customers.py"), str(repo), "--encoder", args.encoder,
             "--count", str(args.count)], check=True, capture_output=True, text=True).stdout)
        models = info["models"]

        proc, url = serve(args.herd, repo, {"HERD_SHARED_WEIGHTS": "off"}, tmp / "off.log")
        base_rss = rss(proc.pid)
        off_times, off_idx = load_all(url, models[:5])
        off_rss = rss(proc.pid)
        proc.terminate()
        proc.wait()
        off_charge = statistics.median(off_idx[m]["unique_bytes"] for m in models[:5])

        proc, url = serve(args.herd, repo, {}, tmp / "on.log")
        on_base_rss = rss(proc.pid)
        on_times, on_idx = load_all(url, models)
        used = metric(url, "herd_cache_memory_used_bytes")
        shared = metric(url, "herd_cache_shared_weights_bytes")
        on_rss = rss(proc.pid)
        proc.terminate()
        proc.wait()
        unique = [on_idx[m]["unique_bytes"] for m in models]
        later = on_times[1:]
        res = {
            "encoder": args.encoder, "count": len(models), "file_bytes": info["file_bytes"],
            "off_charge_per_model": off_charge, "off_models_per_gib": GIB / off_charge,
            "off_rss_growth_per_model": (off_rss - base_rss) / 5,
            "off_load_s_median": statistics.median(off_times),
            "on_charged_total": used, "on_shared": shared, "on_unique_median": statistics.median(unique),
            "on_models_per_gib_at_count": len(models) * GIB / used,
            "on_models_per_gib_asymptotic": GIB / statistics.median(unique[1:]),
            "on_rss_growth": on_rss - on_base_rss,
            "first_load_s": on_times[0],
            "later_load_s_median": statistics.median(later),
            "later_load_s_p90": sorted(later)[int(len(later) * 0.9)],
            "later_load_s_max": max(later),
        }
        print(f"| {args.encoder} x {len(models)} | without sharing | with sharing |")
        print("|---|---|---|")
        print(f"| charged per model | {off_charge / 2**20:.1f} MiB | {res['on_unique_median'] / 2**20:.2f} MiB own"
              f" + {shared / 2**20:.1f} MiB shared once |")
        print(f"| models per GiB | {res['off_models_per_gib']:.1f} | {res['on_models_per_gib_at_count']:.0f}"
              f" at {len(models)} models ({res['on_models_per_gib_asymptotic']:.0f} asymptotically) |")
        print(f"| charged for all {len(models)} | {len(models) * off_charge / 2**20:.0f} MiB (computed) |"
              f" {used / 2**20:.0f} MiB (measured) |")
        print(f"| RSS growth | {res['off_rss_growth_per_model'] / 2**20:.1f} MiB per model |"
              f" {res['on_rss_growth'] / 2**20:.0f} MiB for all |")
        print(f"| load time | {res['off_load_s_median'] * 1000:.0f} ms median | 1st {on_times[0] * 1000:.0f} ms;"
              f" 2nd..{len(models)}th median {res['later_load_s_median'] * 1000:.0f} ms,"
              f" p90 {res['later_load_s_p90'] * 1000:.0f} ms, max {res['later_load_s_max'] * 1000:.0f} ms |")
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
