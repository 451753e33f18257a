"""Serving a registry channel = serving a directory (issue 9), with the real `herd` binary:
the MiniLM embedding pipeline directory pushed as a bundle, released, promoted, served with
`herd serve --channel production`; a second release that changes the pooling promoted under
load from several clients (0 failed requests, answers switch, the unchanged model stays
loaded); rollback brings the old answers back; `herd release export` + `herd serve --repo` on
the export gives the same answers with no registry."""
import json
import shutil
import subprocess
import threading
import time


from conftest import herd_bin, minilm_path, start_server, tokenizer_path
from test_pipelines import cos, reference

TEXTS = ["A man is eating food.", "The cat sits outside", "Do you like pizza?", "Ein Mann isst Essen."]


def herd(env, *args):
    out = subprocess.run([herd_bin(), *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def embed(server, texts=TEXTS):
    status, body = server.post("/v1/embeddings", {"model": "emb", "input": texts})
    assert status == 200, body
    return [d["embedding"] for d in body["data"]]


def pipeline_dir(root, pooling):
    d = root / f"emb-{pooling}"
    d.mkdir()
    shutil.copy(minilm_path(), d / "model.onnx")
    shutil.copy(tokenizer_path(), d / "tokenizer.json")
    (d / "config.toml").write_text(
        f'max_batch_size = 16\n\n[pipeline]\nmax_length = 256\npooling = "{pooling}"\nnormalize = true\n')
    return d


def test_channel_bundle_release_swap_rollback_export(tmp_path):
    env = {"HERD_REGISTRY": f"sqlite://{tmp_path / 'registry.db'}", "HERD_ARTIFACTS": str(tmp_path / "artifacts"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    import os
    for k in ("HERD_HOME", "HERD_ORT_LIB", "ORT_DYLIB_PATH", "XDG_CACHE_HOME"):
        if k in os.environ:
            env[k] = os.environ[k]
    if "HERD_HOME" not in env and "XDG_CACHE_HOME" not in env:
        env["HERD_HOME"] = str(__import__("pathlib").Path(os.environ["HOME"]) / ".cache" / "herd")
    ref = reference(tmp_path, TEXTS)["embeddings"]

    # 1. The pipeline directory as a bundle, plus a second (unchanged) model.
    mean_dir = pipeline_dir(tmp_path, "mean")
    pushed = json.loads(herd(env, "model", "push", "emb", str(mean_dir), "--create", "--json"))
    assert {f["path"] for f in pushed["version"]["files"]} == {"model.onnx", "tokenizer.json", "config.toml"}
    herd(env, "model", "push", "other", str(mean_dir), "--create")
    r1 = json.loads(herd(env, "release", "create", "--set", "emb=1", "--set", "other=1", "--promote", "production", "--json"))["release"]
    server = start_server(["--channel", "production", "--channel-poll-ms", "100",
                    "--artifact-cache", str(tmp_path / "cache")], tmp_path / "serve.log", env)
    try:
        first = embed(server)
        assert min(cos(a, b) for a, b in zip(first, ref)) >= 0.999
        embed_other = server.post("/v1/embeddings", {"model": "other", "input": ["x"]})
        assert embed_other[0] == 200

        # 2. A release that changes the pooling, promoted under load from several clients.
        cls_dir = pipeline_dir(tmp_path, "cls")
        herd(env, "model", "push", "emb", str(cls_dir))
        failures, answers, stop_flag = [], [], threading.Event()

        def client():
            while not stop_flag.is_set():
                status, body = server.post("/v1/embeddings", {"model": "emb", "input": TEXTS[:1]})
                if status != 200:
                    failures.append((status, body))
                else:
                    answers.append(body["data"][0]["embedding"])

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        r2 = json.loads(herd(env, "release", "create", "--from-channel", "production", "--set", "emb=2",
                             "--promote", "production", "--json"))["release"]
        assert r2["id"] != r1["id"]
        deadline = time.time() + 60
        while time.time() < deadline and cos(answers[-1], ref[0]) >= 0.999:
            time.sleep(0.1)
        time.sleep(0.5)
        stop_flag.set()
        for t in threads:
            t.join()
        assert failures == [], failures[:3]
        assert cos(answers[-1], ref[0]) < 0.999, "answers switched to the cls pipeline"
        assert cos(answers[0], ref[0]) >= 0.999
        _, idx = server.post("/v2/repository/index", {})
        state = {m["name"]: m.get("state") for m in idx}
        assert state.get("other") == "READY", idx  # the unchanged model stayed loaded
        second = embed(server)

        # 3. Rollback brings the old answers back.
        herd(env, "release", "rollback", "--channel", "production")
        deadline = time.time() + 60
        while time.time() < deadline and cos(embed(server)[0], ref[0]) < 0.999:
            time.sleep(0.1)
        back = embed(server)
        assert min(cos(a, b) for a, b in zip(back, first)) >= 0.99999
    finally:
        server.stop()

    # 4. Export each release and serve it with no registry: the same answers.
    for rel, want in ((r1, first), (r2, second)):
        out = tmp_path / f"export-{rel['short_id']}"
        herd(env, "release", "export", rel["id"], str(out))
        meta = json.loads((out / "release.json").read_text())
        assert meta["id"] == rel["id"] and set(meta["entries"]) == {"emb", "other"}
        assert "lineage" in meta
        s = start_server(["--repo", str(out)], tmp_path / f"serve-{rel['short_id']}.log", env)
        try:
            got = embed(s)
            assert min(cos(a, b) for a, b in zip(got, want)) >= 0.99999
        finally:
            s.stop()
