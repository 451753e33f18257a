"""Triton's extensions through the unmodified tritonclient[http] package (issue 11): FP16 and
BF16 tensors end to end (JSON and binary), classification (`class_count`), gzip/deflate
request and response compression, and `load_model(config=...)` applied.

The models are written here with the onnx package; the references come from onnxruntime
(FP16) or from onnxruntime on the FP32 twin of the graph rounded with ml_dtypes (BF16:
onnxruntime's Python API takes no bfloat16 arrays).
"""
import gzip
import json
import urllib.request
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import start_server

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
W = (np.arange(20, dtype=np.float32).reshape(4, 5) - 9.5) / 8.0
MAX_BODY = 1 << 20


def linear(elem, n_out, name):
    """x [b, 4] of `elem` -> Cast float -> MatMul W -> Cast `elem` -> y [b, n_out]."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "W"], ["yf"])]
    out = "yf"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["yf"], ["y"], to=elem))
        out = "y"
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", elem, ["b", 4])],
        [helper.make_tensor_value_info(out, elem, ["b", n_out])],
        [numpy_helper.from_array(W[:, :n_out], "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def save(repo, name, model, config=None):
    d = repo / name / "1"
    d.mkdir(parents=True)
    onnx.save(model, str(d / "model.onnx"))
    if config:
        (repo / name / "config.toml").write_text(config)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton_ext")
    save(repo, "fp16", linear(TensorProto.FLOAT16, 3, "fp16"))
    save(repo, "bf16", linear(TensorProto.BFLOAT16, 3, "bf16"))
    save(repo, "fp32twin", linear(TensorProto.FLOAT, 3, "fp32twin"))
    labels = ", ".join(f'"{c}"' for c in CLASSES)
    save(repo, "classes", linear(TensorProto.FLOAT, 5, "classes"), f"labels = [{labels}]\n")
    save(repo, "tunable", linear(TensorProto.FLOAT, 5, "tunable"), "max_batch_size = 16\n")
    return repo


@pytest.fixture(scope="module")
def srv(models, tmp_path_factory):
    s = start_server(["--repo", models, "--max-body", MAX_BODY], tmp_path_factory.mktemp("log") / "herd.log",
                     budget="512MiB", ready_tries=300)
    yield s
    s.stop()


def client(srv):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=srv.url.replace("http://", ""))


def x_values(rows=3):
    return (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) - 5.0) / 3.0


def ort_run(models, name, x):
    s = ort.InferenceSession(str(models / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


# ---- FP16 and BF16 ------------------------------------------------------------------------

def test_fp16_numpy_in_and_out_json_and_binary(srv, models):
    import tritonclient.http as httpclient

    c = client(srv)
    meta = c.get_model_metadata("fp16")
    assert meta["inputs"][0]["datatype"] == "FP16" and meta["outputs"][0]["datatype"] == "FP16"
    x = x_values().astype(np.float16)
    want = ort_run(models, "fp16", x)
    assert want.dtype == np.float16
    for binary in (False, True):
        inp = httpclient.InferInput("x", list(x.shape), "FP16")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("y", binary_data=binary)
        got = c.infer("fp16", [inp], outputs=[out]).as_numpy("y")
        assert got.dtype == np.float16 and got.shape == want.shape
        # The same FP16 values onnxruntime computes, bit for bit.
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), (binary, got, want)
    # The model loaded, so its warm-up (zeros in the model's own FP16) ran; the config says FP16.
    cfg = c.get_model_config("fp16")
    assert cfg["input"][0]["data_type"] == "TYPE_FP16"


def test_bf16_binary_in_and_out(srv, models):
    import ml_dtypes
    import tritonclient.http as httpclient

    c = client(srv)
    assert c.get_model_metadata("bf16")["inputs"][0]["datatype"] == "BF16"
    x = x_values().astype(ml_dtypes.bfloat16)
    # Reference: the FP32 twin on the same (bf16-exact) values, rounded to bfloat16.
    want = ort_run(models, "fp32twin", x.astype(np.float32)).astype(ml_dtypes.bfloat16)
    inp = httpclient.InferInput("x", list(x.shape), "BF16")
    inp.set_data_from_numpy(x, binary_data=True)  # tritonclient sends BF16 in binary only
    got = c.infer("bf16", [inp], outputs=[httpclient.InferRequestedOutput("y")]).as_numpy("y")
    assert got.dtype == ml_dtypes.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2 ** -7)
    # JSON BF16 in and out (herd's JSON carries the numbers; tritonclient refuses to send it).
    status, body = srv.post("/v2/models/bf16/infer", {"inputs": [
        {"name": "x", "shape": list(x.shape), "datatype": "BF16",
         "data": x.astype(np.float32).reshape(-1).tolist()}]})
    assert status == 200, body
    y = body["outputs"][0]
    assert y["datatype"] == "BF16"
    np.testing.assert_allclose(np.array(y["data"], dtype=np.float32).reshape(want.shape),
                               got.astype(np.float32), rtol=0)


# ---- classification ---------------------------------------------------------------------

def test_class_count_gives_triton_strings_with_labels(srv, models):
    import tritonclient.http as httpclient

    c = client(srv)
    x = x_values(4)
    logits = ort_run(models, "classes", x)
    for binary in (True, False):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("yf", binary_data=binary, class_count=3)
        got = c.infer("classes", [inp], outputs=[out]).as_numpy("yf")
        assert got.shape == (4, 3), got
        for row, strings in zip(logits, got):
            top = np.argsort(-row, kind="stable")[:3]
            parsed = [s.decode() if isinstance(s, bytes) else s for s in strings]
            assert [p.split(":")[1] for p in parsed] == [str(i) for i in top]
            assert [p.split(":")[2] for p in parsed] == [CLASSES[i] for i in top]
            np.testing.assert_allclose([float(p.split(":")[0]) for p in parsed], row[top], atol=1e-6)
    # More classes than there are: all five; not-a-number k is a 400.
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = c.infer("classes", [inp], outputs=[httpclient.InferRequestedOutput("yf", class_count=99)])
    assert got.as_numpy("yf").shape == (4, 5)
    status, body = srv.post("/v2/models/classes/infer", {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "yf", "parameters": {"classification": "three"}}]})
    assert status == 400 and "classification" in body["error"], body


# ---- compression ------------------------------------------------------------------------

def test_gzip_and_deflate_requests_and_responses(srv, models):
    import tritonclient.http as httpclient

    c = client(srv)
    x = x_values(64)
    want = ort_run(models, "classes", x)
    for req_alg in (None, "gzip", "deflate"):
        for resp_alg in (None, "gzip", "deflate"):
            for binary in (False, True):
                inp = httpclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput("yf", binary_data=binary)
                got = c.infer("classes", [inp], outputs=[out], request_compression_algorithm=req_alg,
                              response_compression_algorithm=resp_alg).as_numpy("yf")
                np.testing.assert_allclose(got, want, rtol=1e-6)
    # What goes over the wire: a gzip body in, a compressed answer out when asked.
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()
    for coding, pack, unpack in (("gzip", gzip.compress, gzip.decompress),
                                 ("deflate", zlib.compress, zlib.decompress)):
        req = urllib.request.Request(srv.url + "/v2/models/classes/infer", data=pack(body), method="POST")
        req.add_header("Content-Encoding", coding)
        req.add_header("Accept-Encoding", coding)
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["Content-Encoding"] == coding
            answer = json.loads(unpack(r.read()))
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(want.shape), want, rtol=1e-6)

    def post_raw(data, headers):
        req = urllib.request.Request(srv.url + "/v2/models/classes/infer", data=data, method="POST")
        for k, v in headers.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, err = post_raw(b"this is not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in err["error"], err
    status, err = post_raw(gzip.compress(body), {"Content-Encoding": "br"})
    assert status == 400 and "gzip or deflate" in err["error"], err
    # A small body that inflates past --max-body: 413 naming the limit, nothing decoded beyond it.
    bomb = gzip.compress(b" " * (MAX_BODY + 1))
    assert len(bomb) < 10_000
    status, err = post_raw(bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "--max-body" in err["error"], err


# ---- load with a configuration ----------------------------------------------------------

def test_load_model_with_config_is_applied(srv):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    c = client(srv)
    x = x_values(10)

    def batch_sizes():
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.infer("tunable", [inp])
        st = c.get_inference_statistics("tunable")["model_stats"][0]
        return {b["batch_size"] for b in st["batch_stats"]}

    before = c.get_model_config("tunable")
    assert before["max_batch_size"] == 16 and before["instance_group"][0]["count"] == 1
    # config.toml's max_batch_size 16: 10 rows run as one batch of 10.
    assert batch_sizes() == {10}
    # The answer of get_model_config, changed, goes back as the load's config.
    cfg = dict(before)
    cfg["max_batch_size"] = 4
    cfg["instance_group"] = [{"kind": "KIND_CPU", "count": 2}]
    cfg["dynamic_batching"] = {"max_queue_delay_microseconds": 2000}
    c.load_model("tunable", config=json.dumps(cfg))
    after = c.get_model_config("tunable")
    assert after["max_batch_size"] == 4
    assert after["instance_group"][0]["count"] == 2
    assert after["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert c.is_model_ready("tunable")
    # Applied to serving: now the 10 rows run in batches of at most 4 (4 + 4 + 2).
    assert batch_sizes() == {10, 4}

    # Keys herd cannot apply: a 400 naming them, and nothing changes.
    bad = dict(after)
    bad["sequence_batching"] = {}
    bad["dynamic_batching"] = {"preferred_batch_size": [2, 4]}
    bad["instance_group"] = [{"kind": "KIND_GPU", "count": 1}]
    with pytest.raises(InferenceServerException) as e:
        c.load_model("tunable", config=json.dumps(bad))
    msg = str(e.value)
    assert "sequence_batching" in msg and "dynamic_batching.preferred_batch_size" in msg, msg
    assert "KIND_GPU" in msg, msg
    with pytest.raises(InferenceServerException) as e:
        c.load_model("tunable", config=json.dumps({"max_batch_size": 4, "instance_group": [{"count": 0}]}))
    assert "instances" in str(e.value), str(e.value)
    with pytest.raises(InferenceServerException) as e:
        c.load_model("tunable", files={"file:1/model.onnx": b"\0"})
    assert "file:1/model.onnx" in str(e.value)
    assert c.get_model_config("tunable")["max_batch_size"] == 4

    # Unload drops the change: the next load reads config.toml again.
    c.unload_model("tunable")
    assert c.get_model_config("tunable")["max_batch_size"] == 16
    c.load_model("tunable", config=json.dumps({"max_batch_size": 8}))
    assert c.get_model_config("tunable")["max_batch_size"] == 8
    c.load_model("tunable")  # a load without a config also returns to config.toml
    assert c.get_model_config("tunable")["max_batch_size"] == 16
