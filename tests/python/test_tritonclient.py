"""The unmodified Python tritonclient[http] package against herd serve."""
import numpy as np
import tritonclient.http as httpclient


def client(server):
    return httpclient.InferenceServerClient(url=server.url.replace("http://", ""))


def test_list_load_infer_unload(server, references):
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    index = c.get_model_repository_index()
    names = {e["name"] for e in index}
    assert {"dtype_fp32", "minilm", "corrupt"} <= names

    c.load_model("dtype_fp32")
    assert c.is_model_ready("dtype_fp32")
    meta = c.get_model_metadata("dtype_fp32")
    assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["datatype"] == "FP32"

    ref = references["models"]["dtype_fp32"]
    x = np.array(ref["inputs"][0]["data"], dtype=np.float32).reshape(ref["inputs"][0]["shape"])
    want = np.array(ref["outputs"][0]["data"], dtype=np.float32).reshape(ref["outputs"][0]["shape"])
    for binary in (False, True):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("y", binary_data=binary)
        result = c.infer("dtype_fp32", [inp], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-6)
    # No outputs named: tritonclient asks for every output in binary.
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(c.infer("dtype_fp32", [inp]).as_numpy("y"), want, rtol=1e-6)

    # INT64 and BOOL through the binary path too.
    for name, dt in (("dtype_int64", np.int64), ("dtype_bool", np.bool_)):
        r = references["models"][name]
        a = np.array(r["inputs"][0]["data"], dtype=dt).reshape(r["inputs"][0]["shape"])
        inp = httpclient.InferInput("x", list(a.shape), r["inputs"][0]["datatype"])
        inp.set_data_from_numpy(a, binary_data=True)
        got = c.infer(name, [inp]).as_numpy("y")
        assert got.tolist() == np.array(r["outputs"][0]["data"], dtype=dt).reshape(r["outputs"][0]["shape"]).tolist()

    c.unload_model("dtype_fp32")
    # Unloaded but loadable on demand: still ready; the index shows it is not loaded.
    assert c.is_model_ready("dtype_fp32")
    state = {m["name"]: m.get("state") for m in c.get_model_repository_index()}
    assert state["dtype_fp32"] == "UNLOADED"


def test_errors_surface_as_exceptions(server):
    c = client(server)
    try:
        c.get_model_metadata("no-such-model")
    except Exception as e:  # tritonclient raises InferenceServerException
        assert "not found" in str(e)
    else:
        raise AssertionError("expected an error for an unknown model")
