"""herd serve against independent references: Python onnxruntime on the same models."""
import numpy as np
import onnxruntime as ort
import pytest

from conftest import minilm_path

NP = {
    "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
    "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
    "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
}


def served_models(references):
    return sorted(m for m, r in references["models"].items() if not r.get("load_error"))


def test_every_datatype_matches_onnxruntime(server, references):
    models = served_models(references)
    assert len(models) >= 12, models
    for name in models:
        ref = references["models"][name]
        status, body = server.post(f"/v2/models/{name}/infer", {"inputs": ref["inputs"]})
        assert status == 200, (name, body)
        got = {o["name"]: o for o in body["outputs"]}
        for want in ref["outputs"]:
            out = got[want["name"]]
            assert out["datatype"] == want["datatype"], name
            assert out["shape"] == want["shape"], name
            if want["datatype"] in ("FP32", "FP64"):
                np.testing.assert_allclose(out["data"], want["data"], rtol=1e-6, atol=1e-6)
            else:
                assert out["data"] == want["data"], name


@pytest.mark.parametrize("name", ["corrupt", "unsupported_op"])
def test_models_that_cannot_load_give_a_clear_error_and_the_server_stays_up(server, references, name):
    assert references["models"][name]["load_error"]
    status, body = server.post(f"/v2/models/{name}/infer",
                               {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
    assert status == 500, body
    assert name in body["error"] and "failed to load" in body["error"], body
    status, index = server.post("/v2/repository/index", {})
    entry = next(e for e in index if e["name"] == name)
    assert entry["state"] == "UNAVAILABLE" and entry["reason"], entry
    # Still serving.
    assert server.get("/v2/health/live")[0] == 200
    ok = references["models"]["dtype_fp32"]
    assert server.post("/v2/models/dtype_fp32/infer", {"inputs": ok["inputs"]})[0] == 200


def test_fixed_shape_model_rejects_other_shapes_with_the_expected_one(server):
    status, body = server.post("/v2/models/fixed_shape/infer",
                               {"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [0] * 6}]})
    assert status == 400
    assert "expected shape [2, 3]" in body["error"], body


def test_minilm_transformer_matches_onnxruntime(server):
    rng = np.random.default_rng(0)
    batch, seq = 2, 12
    ids = rng.integers(1000, 20000, size=(batch, seq)).astype(np.int64)
    ids[:, 0] = 101
    ids[:, -1] = 102
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    types = np.zeros_like(ids)
    sess = ort.InferenceSession(str(minilm_path()), providers=["CPUExecutionProvider"])
    (want,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    body = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.flatten().tolist()}
        for n, a in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types))
    ]}
    status, out = server.post("/v2/models/minilm/infer", body)
    assert status == 200, out
    o = out["outputs"][0]
    assert o["name"] == "last_hidden_state" and o["shape"] == [batch, seq, 384]
    got = np.array(o["data"], dtype=np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
