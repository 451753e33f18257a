"""Text pipelines (issue 5): raw text in, embeddings or labels out, checked against an
independent reference (Python tokenizers + onnxruntime + numpy, scripts/reference_embeddings.py)
and through the unmodified `openai` client."""
import base64
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from conftest import CLASSES, ROOT, classifier_weights, tokenizer_path


def sentences():
    base = [
        "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
        "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
        "The new movie is awesome", "The cat sits outside", "I love pasta", "Do you like pizza?",
        "Ein Mann isst Essen.", "Un homme mange de la nourriture.", "Человек ест еду.", "男人在吃东西。",
        "人が食べ物を食べています。", "رجل يأكل الطعام.", "Ο άνθρωπος τρώει φαγητό.", "एक आदमी खाना खा रहा है।",
        "emoji 🍕🍝 and accents: café naïve façade", "", "   ", "\t\n", "a", "[CLS] literal [SEP]",
        "numbers 12345 and symbols #$%&", "MiXeD CaSe WoRdS", "hyphen-ated and under_scored words",
    ]
    out = list(base)
    for i in range(50):
        out.append(f"Customer {i} asks about invoice {i * 7} and the refund of order {1000 + i}.")
    for i in range(25):
        out.append(("long text number %d " % i) * (60 + i))  # far past 256 tokens: truncated
    return out  # 102 sentences


def reference(tmp_path, texts):
    f = tmp_path / "sentences.json"
    f.write_text(json.dumps(texts))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference_embeddings.py"), str(f), "--max-length", "256"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def cos(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_v2_infer_with_text_matches_reference_embeddings(server, tmp_path):
    texts = sentences()
    assert len(texts) >= 100
    ref = reference(tmp_path, texts)
    got = []
    for i in range(0, len(texts), 8):  # mixed lengths in one request
        chunk = texts[i:i + 8]
        status, body = server.post("/v2/models/minilm-embed/infer",
                                   {"inputs": [{"name": "text", "shape": [len(chunk)], "datatype": "BYTES", "data": chunk}]})
        assert status == 200, body
        out = {o["name"]: o for o in body["outputs"]}
        assert out["embedding"]["shape"] == [len(chunk), 384]
        got.extend(np.array(out["embedding"]["data"], dtype=np.float32).reshape(len(chunk), 384))
        assert out["token_count"]["data"] == ref["tokens"][i:i + 8]
    sims = [cos(g, r) for g, r in zip(got, ref["embeddings"])]
    worst = min(sims)
    assert worst >= 0.999, (worst, texts[int(np.argmin(sims))])


def test_mixed_length_batches_equal_single_requests(server):
    texts = ["short", "a somewhat longer sentence with more tokens in it", "", "日本語のテキスト",
             ("long " * 300).strip()]
    status, body = server.post("/v2/models/minilm-embed/infer",
                               {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})
    assert status == 200, body
    batch = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(len(texts), 384)
    for i, t in enumerate(texts):
        status, one = server.post("/v2/models/minilm-embed/infer",
                                  {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]})
        assert status == 200
        single = np.array(one["outputs"][0]["data"], dtype=np.float32)
        assert cos(batch[i], single) >= 0.99999, (t, cos(batch[i], single))
        np.testing.assert_allclose(batch[i], single, atol=2e-4)


def test_openai_client_embeddings_create(server, tmp_path):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused-without-a-tokens-file")
    texts = ["A man is eating food.", "Un homme mange de la nourriture."]
    ref = reference(tmp_path, texts)
    res = client.embeddings.create(model="minilm-embed", input=texts)
    assert [d.index for d in res.data] == [0, 1]
    for d, r in zip(res.data, ref["embeddings"]):
        assert cos(d.embedding, r) >= 0.999
    assert res.usage.prompt_tokens == sum(ref["tokens"])
    one = client.embeddings.create(model="minilm-embed", input="A man is eating food.")
    assert cos(one.data[0].embedding, ref["embeddings"][0]) >= 0.999
    # Asked for explicitly, base64 comes back as the string: little-endian float32.
    b64 = client.embeddings.create(model="minilm-embed", input=texts, encoding_format="base64")
    raw = b64.data[1].embedding
    assert isinstance(raw, str)
    vec = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    assert vec.shape == (384,) and cos(vec, ref["embeddings"][1]) >= 0.999


def test_classifier_pipeline_answers_labels_and_scores(server):
    texts = ["my invoice is wrong", "the app crashes when I log in", "thank you, great service!", ""]
    status, body = server.post("/v2/models/acme-intent/infer",
                               {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["shape"] == [len(texts), 2] and out["label"]["datatype"] == "BYTES"
    assert out["score"]["shape"] == [len(texts), 2]
    # Reference: the same tokenizer and weights in numpy.
    tok = Tokenizer.from_file(str(tokenizer_path()))
    tok.no_padding()  # the file itself asks for fixed padding to 128
    tok.enable_truncation(64)
    emb, w = classifier_weights()
    for i, t in enumerate(texts):
        ids = tok.encode(t).ids
        logits = emb[ids].mean(axis=0) @ w
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")[:2]
        assert out["label"]["data"][2 * i:2 * i + 2] == [CLASSES[j] for j in order], t
        np.testing.assert_allclose(out["score"]["data"][2 * i:2 * i + 2], p[order], rtol=1e-4, atol=1e-5)


def test_pipeline_bad_input_is_a_clear_error(server):
    # Numbers to a text pipeline: 400 saying it takes text.
    status, body = server.post("/v2/models/minilm-embed/infer",
                               {"inputs": [{"name": "text", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
    assert status == 400 and "BYTES" in body["error"], body
    # Missing tokenizer file and a config naming a missing input: clear load errors.
    status, body = server.post("/v2/models/no-tokenizer/infer",
                               {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert status == 500 and "tokenizer" in body["error"] and "not found" in body["error"], body
    status, body = server.post("/v2/models/bad-input/infer",
                               {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert status == 500 and "ids_that_do_not_exist" in body["error"], body
    # Embeddings of a classifier or a plain model: 400 with what to do.
    status, body = server.post("/v1/embeddings", {"model": "dtype_fp32", "input": "x"})
    # (under /v1 errors are OpenAI error objects)
    assert status == 400 and "[pipeline]" in body["error"]["message"], body
    status, body = server.post("/v1/embeddings", {"model": "nope", "input": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    # The server is still up.
    assert server.get("/v2/health/live")[0] == 200
