"""Unmodified clients people already run, against herd serve (issue 11): the KServe SDK's
InferenceRESTClient (Open Inference Protocol v2), tritonclient's statistics extension, the
openai SDK (error objects, model list, token-array input, dimensions) and LangChain's
OpenAIEmbeddings with its default settings."""
import asyncio
import glob
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from test_pipelines import cos, reference

# tiktoken (used by LangChain by default, and here to make token ids) downloads cl100k_base at
# run time; machines without internet get the same file (its sha256 is checked by tiktoken)
# from the tiktoken-rs crate that herd embeds it from. This is tiktoken's cache key for it.
CL100K_CACHE_KEY = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


def cl100k_file():
    home = os.environ.get("CARGO_HOME", str(Path.home() / ".cargo"))
    found = sorted(glob.glob(f"{home}/registry/src/*/tiktoken-rs-*/assets/cl100k_base.tiktoken"))
    if not found:
        subprocess.run(["cargo", "fetch"], cwd=ROOT, check=True)
        found = sorted(glob.glob(f"{home}/registry/src/*/tiktoken-rs-*/assets/cl100k_base.tiktoken"))
    assert found, "cl100k_base.tiktoken not found in the cargo registry (a dependency of herd-server)"
    return found[-1]


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiktoken")
    key = d / CL100K_CACHE_KEY
    if not key.exists():
        shutil.copy(cl100k_file(), key)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


# ---- KServe -------------------------------------------------------------------------------

def test_kserve_rest_client_v2(server, references):
    from kserve import InferenceRESTClient, InferRequest, InferInput, RESTConfig
    from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse
    import httpx

    ref = references["models"]["dtype_fp32"]
    x = np.array(ref["inputs"][0]["data"], dtype=np.float32).reshape(ref["inputs"][0]["shape"])
    want = np.array(ref["outputs"][0]["data"], dtype=np.float32).reshape(ref["outputs"][0]["shape"])

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            assert await client.is_server_live(server.url) is True
            assert await client.is_server_ready(server.url) is True
            # Loadable (not loaded yet) counts as ready: herd loads it on the first request.
            assert await client.is_model_ready(server.url, "dtype_fp32") is True
            inp = InferInput(name="x", shape=list(x.shape), datatype="FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            res = await client.infer(server.url, InferRequest(model_name="dtype_fp32", infer_inputs=[inp]),
                                     model_name="dtype_fp32")
            got = res.outputs[0].as_numpy()
            np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6)
            # Binary tensor data through the KServe client too.
            inp = InferInput(name="x", shape=list(x.shape), datatype="FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            res = await client.infer(server.url, InferRequest(model_name="dtype_fp32", infer_inputs=[inp]),
                                     model_name="dtype_fp32")
            np.testing.assert_allclose(res.outputs[0].as_numpy().reshape(want.shape), want, rtol=1e-6)
        finally:
            await client.close()
        # Metadata as KServe's own response model reads it.
        async with httpx.AsyncClient() as h:
            meta = (await h.get(server.url + "/v2/models/dtype_fp32")).json()
        m = ModelMetadataResponse.model_validate(meta)
        assert m.name == "dtype_fp32" and m.inputs[0].name == "x" and m.inputs[0].datatype == "FP32"
        assert meta["state"] == "READY"

    asyncio.run(run())
    # After a failed load, the model is not ready (503), and says why.
    server.post("/v2/models/corrupt/infer", {"inputs": []})

    async def corrupt():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            return await client.is_model_ready(server.url, "corrupt")
        finally:
            await client.close()

    assert asyncio.run(corrupt()) is False


# ---- tritonclient statistics --------------------------------------------------------------

def test_tritonclient_statistics(server, references):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url=server.url.replace("http://", ""))
    ref = references["models"]["dtype_fp32"]
    x = np.array(ref["inputs"][0]["data"], dtype=np.float32).reshape(ref["inputs"][0]["shape"])
    before = c.get_inference_statistics("dtype_fp32")["model_stats"][0]
    for _ in range(3):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.infer("dtype_fp32", [inp])
    st = c.get_inference_statistics("dtype_fp32")["model_stats"][0]
    assert st["name"] == "dtype_fp32" and st["version"] == "1"
    rows = x.shape[0]
    assert st["inference_count"] - before["inference_count"] == 3 * rows
    assert st["execution_count"] - before["execution_count"] == 3
    s = st["inference_stats"]
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(s[k]) == {"count", "ns"}, k
    assert s["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert s["compute_infer"]["ns"] > 0 and st["last_inference"] > 0
    assert st["batch_stats"] and {"batch_size", "compute_infer"} <= set(st["batch_stats"][0])
    all_stats = c.get_inference_statistics()["model_stats"]
    assert "dtype_fp32" in {m["name"] for m in all_stats}
    one = c.get_inference_statistics("dtype_fp32", model_version="1")["model_stats"]
    assert len(one) == 1


# ---- openai -------------------------------------------------------------------------------

def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused-without-a-tokens-file")


def test_openai_unknown_model_is_not_found_with_code_and_type(server):
    import openai

    client = openai_client(server)
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="no-such-model", input="hello")
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    assert e.value.type == "invalid_request_error"
    assert e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="dtype_fp32", input="hello")
    assert e.value.code == "invalid_input" and "text pipeline" in e.value.message


def test_openai_models_list(server):
    client = openai_client(server)
    ids = [m.id for m in client.models.list()]
    assert "minilm-embed" in ids and ids == sorted(ids)
    assert client.models.retrieve("minilm-embed").id == "minilm-embed"


def test_openai_token_arrays_and_dimensions(server, tmp_path, tiktoken_cache):
    import tiktoken

    client = openai_client(server)
    texts = ["A man is eating food.", "Un homme mange de la nourriture. café"]
    ref = reference(tmp_path, texts)
    enc = tiktoken.get_encoding("cl100k_base")
    ids = [enc.encode(t) for t in texts]
    res = client.embeddings.create(model="minilm-embed", input=ids)
    for d, r in zip(res.data, ref["embeddings"]):
        assert cos(d.embedding, r) >= 0.999
    one = client.embeddings.create(model="minilm-embed", input=ids[0])
    assert cos(one.data[0].embedding, ref["embeddings"][0]) >= 0.999
    # dimensions: the first d values renormalized (what OpenAI's text-embedding-3 models do).
    short = client.embeddings.create(model="minilm-embed", input=texts, dimensions=128)
    for d, r in zip(short.data, ref["embeddings"]):
        v = np.asarray(d.embedding)
        assert v.shape == (128,)
        want = np.asarray(r[:128]) / np.linalg.norm(r[:128])
        np.testing.assert_allclose(v, want, atol=1e-4)
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm-embed", input="x", dimensions=1000)
    assert e.value.param == "dimensions"


def test_langchain_openai_embeddings_with_defaults(server, tmp_path, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    texts = ["A man is eating food.", "The girl is carrying a baby.", "Человек ест еду."]
    ref = reference(tmp_path, texts)
    emb = OpenAIEmbeddings(model="minilm-embed", base_url=server.url + "/v1", api_key="unused")
    got = emb.embed_documents(texts)
    assert len(got) == 3
    for g, r in zip(got, ref["embeddings"]):
        assert cos(g, r) >= 0.999
    q = emb.embed_query(texts[0])
    assert cos(q, ref["embeddings"][0]) >= 0.999


def test_tritonclient_model_config(server):
    import onnx
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url=server.url.replace("http://", ""))
    cfg = c.get_model_config("minilm")
    assert cfg["name"] == "minilm" and cfg["platform"] == "onnxruntime_onnx"
    # Compared with the ONNX file itself: names, types, dims without the batch dimension.
    from conftest import minilm_path

    m = onnx.load(str(minilm_path()), load_external_data=False)
    names = [i.name for i in m.graph.input]
    assert [i["name"] for i in cfg["input"]] == names
    assert all(i["data_type"] == "TYPE_INT64" for i in cfg["input"])
    assert cfg["max_batch_size"] == 32 and cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert cfg["input"][0]["dims"] == [-1]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU" and cfg["instance_group"][0]["count"] == 1
    # (a text pipeline's served signature is known once loaded; see notes/issue-11.md)
    server.post("/v1/embeddings", {"model": "minilm-embed", "input": "x"})
    e = c.get_model_config("minilm-embed")
    assert e["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": []}]
    assert e["max_batch_size"] == 16 and e["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
