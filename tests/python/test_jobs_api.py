"""The jobs API (`/v1/jobs`) from a plain HTTP client (urllib only, no herd client code): a real
`herd serve --tokens ... --jobs-queue-url sqlite://...` started through conftest's
`start_server`, a real `herd worker` draining the queue.

A tenant enqueues batch-infer over its own model, the worker runs it, and the tenant reads the
job and its result rows (checked against numpy on the model's own weights); another tenant gets
403 for that model and 404 for the job and its results; no token is 401.
"""
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import herd_bin, start_server

TOKENS = {"acme": "acme-jobs-token", "globex": "globex-jobs-token", "admin": "admin-jobs-token"}


def call(url, method, path, token=None, body=None):
    """One request; returns (status, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if body is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def linear_model(path, w, b):
    """output = input @ w + b, written with the onnx package."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", w.shape[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", w.shape[1]])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


def test_a_tenant_runs_batch_infer_through_the_jobs_api(tmp_path):
    rng = np.random.default_rng(14)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    repo = tmp_path / "models"
    for model, tenant in (("acme-linear", "acme"), ("globex-linear", "globex")):
        linear_model(repo / model / "1" / "model.onnx", w, b)
        (repo / model / "config.toml").write_text(f'tenant = "{tenant}"\n')
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("".join(
        f'[[token]]\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\n'
        + ("admin = true\n" if who == "admin" else f'tenant = "{who}"\n')
        for who, t in TOKENS.items()
    ))
    data = tmp_path / "data"
    (data / "acme").mkdir(parents=True)
    rows = rng.normal(size=(10, 4)).astype(np.float32)
    (data / "acme" / "rows.jsonl").write_text(
        "\n".join(json.dumps({"id": f"doc-{i}", "input": r.tolist()}) for i, r in enumerate(rows)) + "\n"
    )
    queue_url = f"sqlite://{tmp_path / 'jobs.db'}"
    server = start_server(
        ["--repo", repo, "--tokens", tokens, "--jobs-queue-url", queue_url, "--jobs-data", data],
        tmp_path / "herd.log",
    )
    try:
        url = server.url
        status, _ = call(url, "GET", "/v1/jobs")
        assert status == 401

        # acme enqueues batch-infer over its own model.
        status, job = call(url, "POST", "/v1/jobs", TOKENS["acme"],
                           {"kind": "batch-infer", "params": {"model": "acme-linear", "input": "rows.jsonl",
                                                              "batch_size": 4}})
        assert status == 202, job
        assert job["state"] == "waiting" and job["spec"]["owner"] == "acme", job
        job_id = job["id"]

        # globex may not run acme's model, nor see acme's job.
        status, err = call(url, "POST", "/v1/jobs", TOKENS["globex"],
                           {"kind": "batch-infer", "params": {"model": "acme-linear", "input": "rows.jsonl"}})
        assert status == 403, err
        assert call(url, "GET", f"/v1/jobs/{job_id}", TOKENS["globex"])[0] == 404
        status, listed = call(url, "GET", "/v1/jobs", TOKENS["globex"])
        assert status == 200 and listed["jobs"] == [], listed

        # A real worker (its own admin token for the server) drains the queue and exits when idle.
        env = dict(os.environ, HERD_TOKEN=TOKENS["admin"], RUST_LOG="warn")
        env.pop("HERD_QUEUE_URL", None)
        worker = subprocess.run(
            [herd_bin(), "worker", "--queue-url", queue_url, "--queue", "default", "--idle-exit", "1s",
             "--poll", "100ms"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert worker.returncode == 0, worker.stderr

        status, job = call(url, "GET", f"/v1/jobs/{job_id}", TOKENS["acme"])
        assert status == 200, job
        assert job["state"] == "done", job
        assert job["result"]["detail"]["ok"] == len(rows), job

        status, body = call(url, "GET", f"/v1/jobs/{job_id}/results", TOKENS["acme"])
        assert status == 200, body
        lines = [json.loads(l) for l in body.splitlines() if l.strip()] if isinstance(body, str) else [body]
        assert len(lines) == len(rows), body
        want = rows @ w + b
        for i, line in enumerate(lines):
            assert line["id"] == f"doc-{i}", line
            np.testing.assert_allclose(np.array(line["outputs"]["output"], dtype=np.float32), want[i],
                                       rtol=1e-5, atol=1e-5)
        assert (data / "acme" / "results" / f"{job_id}.jsonl").exists()

        assert call(url, "GET", f"/v1/jobs/{job_id}/results", TOKENS["globex"])[0] == 404
        status, listed = call(url, "GET", "/v1/jobs", TOKENS["acme"])
        assert status == 200 and [j["id"] for j in listed["jobs"]] == [job_id], listed
    finally:
        server.stop()
