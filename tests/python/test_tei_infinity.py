"""TEI, Infinity and Cohere/Jina rerank dialects (issue 11): every answer is validated against the
published schema (tests/python/schemas/: TEI's OpenAPI document, Infinity's pydantic models as
JSON Schema; see their x-source) with no extra fields allowed, its status code is one the document
lists, and the numbers are checked against an independent reference: Python tokenizers +
onnxruntime + numpy on the same ONNX files (the MiniLM export, a MiniLM cross-encoder built by
scripts/make_cross_encoder.py, and conftest's classifier).

The model is chosen per request: TEI by the x-herd-model header or the /models/{m}/ path prefix;
Infinity and /v1/rerank by the body's `model`.
"""
import functools
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from jsonschema import Draft202012Validator
from tokenizers import Tokenizer

from conftest import CLASSES, ROOT, make_pipelines, start_server

sys.path.insert(0, str(ROOT / "scripts"))
import make_cross_encoder  # noqa: E402

SCHEMAS = Path(__file__).parent / "schemas"
RERANK = "minilm-rerank"
RERANK_RAW = "minilm-rerank-raw"
EMBED = "minilm-embed"
CLASSIFY = "acme-intent"


# ---------------------------------------------------------------- schema checking

def _strict(node):
    """OpenAPI 3.0 -> JSON Schema: `nullable` becomes a null alternative, and objects that list
    their properties allow no others (so an extra or misspelt field fails the test)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class Doc:
    def __init__(self, path):
        self.raw = json.loads(path.read_text())
        self.components = _strict(self.raw["components"])

    def check(self, name, instance):
        schema = {"$ref": f"#/components/schemas/{name}", "components": self.components}
        errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=str)
        assert not errors, f"{name}: {[e.message for e in errors][:5]} in {json.dumps(instance)[:400]}"

    def statuses(self, path, method="post"):
        return {int(c) for c in self.raw["paths"][path][method]["responses"]}


@pytest.fixture(scope="module")
def tei():
    return Doc(SCHEMAS / "tei-openapi-1.7.1.json")


@pytest.fixture(scope="module")
def inf():
    return Doc(SCHEMAS / "infinity-openapi.json")


def test_the_validator_rejects_wrong_shapes(tei, inf):
    # The checks below could not fail if the validator accepted anything.
    for name, bad in [("EmbedResponse", [["x"]]), ("Rank", {"index": 0}),
                      ("Rank", {"index": 0, "score": 1.0, "extra": 1}),
                      ("ErrorResponse", {"error": "e", "error_type": "validation"}),
                      ("SimpleToken", {"id": 1, "text": "a", "special": False, "start": -1})]:
        with pytest.raises(AssertionError):
            tei.check(name, bad)
    with pytest.raises(AssertionError):
        inf.check("ReRankResult", {"object": "rerank", "results": [], "model": "m"})
    tei.check("Rank", {"index": 0, "score": 1.0, "text": None})


# ---------------------------------------------------------------- server and references

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("tei-repo")
    make_pipelines(out)  # minilm-embed, acme-intent (+ two broken ones)
    # max_batch_size 4: the load's warm-up (max_batch_size x max_length tokens) stays cheap on CI
    make_cross_encoder.write(out, RERANK, max_batch_size=4)
    make_cross_encoder.write(out, RERANK_RAW, raw=True, max_batch_size=4)  # sigmoid = false
    return out


@pytest.fixture(scope="module")
def srv(repo, tmp_path_factory):
    s = start_server(["--repo", repo], tmp_path_factory.mktemp("tei-log") / "herd.log", ready_tries=300)
    yield s
    s.stop()


def model(m):
    return {"x-herd-model": m}


def get_json(srv, path, headers=None):
    req = urllib.request.Request(srv.url + path)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@functools.lru_cache(maxsize=None)
def tokenizer(repo, name, max_length):
    t = Tokenizer.from_file(str(repo / name / "tokenizer.json"))
    t.no_padding()
    t.enable_truncation(max_length)
    return t


@functools.lru_cache(maxsize=None)
def session(repo, name):
    return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def ref_logits(repo, query, docs):
    """The cross-encoder's logits, one pair at a time (no padding): the independent reference."""
    t, s = tokenizer(repo, RERANK, 256), session(repo, RERANK)
    out = []
    for d in docs:
        e = t.encode(query, d)
        feeds = {"input_ids": np.array([e.ids], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                 "token_type_ids": np.array([e.type_ids], dtype=np.int64)}
        out.append(float(s.run(None, feeds)[0][0][0]))
    return np.array(out)


def ref_classify(repo, texts):
    t, s = tokenizer(repo, CLASSIFY, 64), session(repo, CLASSIFY)
    out = []
    for x in texts:
        e = t.encode(x)
        logits = s.run(None, {"input_ids": np.array([e.ids], dtype=np.int64),
                              "attention_mask": np.array([e.attention_mask], dtype=np.int64)})[0][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")[:2]
        out.append([(CLASSES[i], float(p[i])) for i in order])
    return out


@pytest.fixture(scope="module")
def ref_emb(tmp_path_factory):
    """scripts/reference_embeddings.py (tokenizers + onnxruntime + numpy) on TEXTS, once."""
    f = tmp_path_factory.mktemp("ref") / "sentences.json"
    f.write_text(json.dumps(TEXTS))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference_embeddings.py"), str(f), "--max-length", "256"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


QUERY = "How do I get a refund for a broken order?"
DOCS = ["Refunds are issued within five days once the broken item is returned.",
        "The weather in Lisbon is sunny today.",
        "Our office is closed on public holidays.",
        "To return a damaged order, open the order page and choose refund.",
        "日本語のテキストも扱えます。",
        ("a very long document about invoices and refunds " * 60).strip()]  # past 256 tokens: truncated
TEXTS = ["A man is eating food.", "The new movie is awesome", "Customer 7 asks about invoice 49.",
         "emoji 🍕 and accents: café", ""]


# ---------------------------------------------------------------- TEI

def test_tei_rerank_matches_onnxruntime_reference(srv, repo, tei):
    logits = ref_logits(repo, QUERY, DOCS)
    for raw in (False, True):
        status, body = srv.post("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": raw}, model(RERANK))
        assert status == 200, body
        tei.check("RerankResponse", body)
        want = logits if raw else sigmoid(logits)
        assert [r["index"] for r in body] == list(np.argsort(-want, kind="stable"))
        got = np.array([r["score"] for r in sorted(body, key=lambda r: r["index"])])
        np.testing.assert_allclose(got, want, atol=2e-4)
        assert all("text" not in r for r in body)
    # the path prefix selects the model too; return_text echoes the documents
    status, body = srv.post(f"/models/{RERANK}/rerank", {"query": QUERY, "texts": DOCS[:3], "return_text": True})
    assert status == 200, body
    tei.check("RerankResponse", body)
    assert {r["index"]: r["text"] for r in body} == dict(enumerate(DOCS[:3]))


def test_a_cross_encoder_without_sigmoid_scores_with_the_logit(srv, repo, tei):
    # [pipeline.cross_encoder] sigmoid = false: the default score is the raw logit
    logits = ref_logits(repo, QUERY, DOCS[:3])
    for raw in (False, True):
        status, body = srv.post(f"/models/{RERANK_RAW}/rerank", {"query": QUERY, "texts": DOCS[:3], "raw_scores": raw})
        assert status == 200, body
        tei.check("RerankResponse", body)
        got = np.array([r["score"] for r in sorted(body, key=lambda r: r["index"])])
        np.testing.assert_allclose(got, logits, atol=2e-4)


def test_tei_predict_classifier_and_pairs(srv, repo, tei):
    ref = ref_classify(repo, TEXTS)
    status, body = srv.post("/predict", {"inputs": TEXTS[0]}, model(CLASSIFY))
    assert status == 200, body
    tei.check("PredictResponse", body)
    assert [p["label"] for p in body] == [l for l, _ in ref[0]]
    np.testing.assert_allclose([p["score"] for p in body], [s for _, s in ref[0]], atol=1e-5)
    status, body = srv.post("/predict", {"inputs": [[t] for t in TEXTS]}, model(CLASSIFY))
    assert status == 200, body
    tei.check("PredictResponse", body)
    assert len(body) == len(TEXTS)
    for got, want in zip(body, ref):
        assert [p["label"] for p in got] == [l for l, _ in want]
        np.testing.assert_allclose([p["score"] for p in got], [s for _, s in want], atol=1e-5)
    # a pair and a batch of pairs through the cross-encoder
    logits = ref_logits(repo, QUERY, DOCS[:2])
    status, body = srv.post("/predict", {"inputs": [QUERY, DOCS[0]]}, model(RERANK))
    assert status == 200, body
    tei.check("PredictResponse", body)
    assert body[0]["label"] == "LABEL_0"
    assert body[0]["score"] == pytest.approx(float(sigmoid(logits[0])), abs=2e-4)
    status, body = srv.post("/predict", {"inputs": [[QUERY, d] for d in DOCS[:2]], "raw_scores": True}, model(RERANK))
    assert status == 200, body
    tei.check("PredictResponse", body)
    np.testing.assert_allclose([r[0]["score"] for r in body], logits, atol=2e-4)


def test_tei_embed_matches_reference(srv, tei, ref_emb):
    ref = ref_emb
    status, body = srv.post("/embed", {"inputs": TEXTS}, model(EMBED))
    assert status == 200, body
    tei.check("EmbedResponse", body)
    got = np.array(body, dtype=np.float32)
    want = np.array(ref["embeddings"], dtype=np.float32)
    assert got.shape == want.shape == (len(TEXTS), 384)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    assert cos.min() >= 0.999, cos
    status, one = srv.post(f"/models/{EMBED}/embed", {"inputs": TEXTS[1], "normalize": True, "truncate": True})
    assert status == 200, one
    tei.check("EmbedResponse", one)
    np.testing.assert_allclose(one[0], body[1], atol=1e-5)


def test_tei_tokenize_and_decode_match_python_tokenizers(srv, repo, tei):
    t = Tokenizer.from_file(str(repo / EMBED / "tokenizer.json"))
    t.no_padding()
    texts = ["Hello, wörld! 🍕", "refund of order 1003"]
    status, body = srv.post("/tokenize", {"inputs": texts}, model(EMBED))
    assert status == 200, body
    tei.check("TokenizeResponse", body)
    for text, toks in zip(texts, body):
        e = t.encode(text)
        assert [x["id"] for x in toks] == e.ids
        assert [x["special"] for x in toks] == [bool(m) for m in e.special_tokens_mask]
        for x, (cs, ce) in zip(toks, e.offsets):
            if not x["special"]:
                # herd answers byte offsets (as TEI does); Python tokenizers gives characters
                assert text.encode()[x["start"]:x["stop"]].decode() == text[cs:ce] == x["text"]
            else:
                assert x["start"] is None and x["stop"] is None
    status, body = srv.post(f"/models/{EMBED}/tokenize", {"inputs": "hello", "add_special_tokens": False})
    assert status == 200 and [x["id"] for x in body[0]] == t.encode("hello", add_special_tokens=False).ids
    ids = t.encode(texts[1]).ids
    for skip in (True, False):
        status, body = srv.post("/decode", {"ids": ids, "skip_special_tokens": skip}, model(EMBED))
        assert status == 200, body
        tei.check("DecodeResponse", body)
        assert body == [t.decode(ids, skip_special_tokens=skip)]
    status, body = srv.post("/decode", {"ids": [ids, ids[:3]]}, model(EMBED))
    assert status == 200 and body == [t.decode(ids), t.decode(ids[:3])]


def test_unmodified_huggingface_hub_inference_client(srv, repo, ref_emb):
    # huggingface_hub (installed with tokenizers) posts to TEI's root route of its base_url.
    # (Its text_classification expects the HF Inference API's nested list, not TEI's /predict
    # answer, so only feature_extraction is a TEI client call.)
    from huggingface_hub import InferenceClient

    ref = ref_emb
    emb = InferenceClient(base_url=f"{srv.url}/models/{EMBED}").feature_extraction(TEXTS[0])
    got = np.asarray(emb, dtype=np.float32).reshape(-1)
    want = np.asarray(ref["embeddings"][0], dtype=np.float32)
    assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.999
    # The root route follows the model's kind: a classifier answers TEI's /predict shape.
    status, body = srv.post(f"/models/{CLASSIFY}", {"inputs": TEXTS[1]})
    assert status == 200 and [p["label"] for p in body] == [l for l, _ in ref_classify(repo, TEXTS[1:2])[0]]


def test_tei_health(srv):
    status, body = srv.get("/health")
    assert status == 200 and body == b""


def test_tei_info_per_model(srv, tei):
    kinds = {}
    for m in (EMBED, CLASSIFY, RERANK):
        status, body = get_json(srv, f"/models/{m}/info")
        assert status == 200, body
        tei.check("Info", body)
        assert body["model_id"] == m
        kinds[m] = body["model_type"]
    assert kinds[EMBED] == {"embedding": {"pooling": "mean"}}
    assert kinds[CLASSIFY]["classifier"]["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert "reranker" in kinds[RERANK]
    status, body = get_json(srv, "/info", model(RERANK))
    assert status == 200 and body["max_input_length"] == 256 and body["auto_truncate"] is True


def test_tei_errors_have_tei_shape_and_status(srv, tei):
    def err(path, body, headers, status, error_type):
        got, b = srv.post(path, body, headers)
        assert got == status, (path, got, b)
        tei.check("ErrorResponse", b)
        assert b["error_type"] == error_type, b
        return b["error"]

    # statuses TEI documents for the route
    assert tei.statuses("/embed") == {200, 413, 422, 424, 429}
    msg = err("/embed", {"inputs": "x"}, model(RERANK), 424, "Backend")  # not an embedding model
    assert "not an embedding model" in msg
    err("/rerank", {"query": "q", "texts": ["a"]}, model(EMBED), 424, "Backend")
    err("/predict", {"inputs": "x"}, model(EMBED), 424, "Backend")
    msg = err("/embed", {"inputs": ["x"] * 2049}, model(EMBED), 413, "Validation")
    assert "max_texts_per_request" in msg and "2048" in msg
    err("/embed", {"inputs": []}, model(EMBED), 413, "Validation")
    err("/embed", {"inputs": [101, 102]}, model(EMBED), 413, "Validation")  # token ids: refused, said so
    err("/embed", {"inputs": "x", "normalize": False}, model(EMBED), 413, "Validation")
    err("/embed", {"inputs": "x", "truncation_direction": "Left"}, model(EMBED), 413, "Validation")
    err("/predict", {"inputs": "x", "raw_scores": True}, model(CLASSIFY), 413, "Validation")
    err("/embed", {"input": "x"}, model(EMBED), 422, "Validation")  # not TEI's body
    err("/decode", {"ids": [10 ** 9]}, model(EMBED), 422, "Tokenizer")
    # herd's own conditions keep their status, in TEI's error shape
    msg = err("/embed", {"inputs": "x"}, {}, 400, "Validation")
    assert "x-herd-model" in msg and "/models/" in msg
    err("/embed", {"inputs": "x"}, model("no-such-model"), 404, "Validation")
    err("/models/no-such-model/rerank", {"query": "q", "texts": ["a"]}, {}, 404, "Validation")


# ---------------------------------------------------------------- Infinity

def test_infinity_embeddings_classify_rerank_models(srv, repo, inf, ref_emb):
    ref = ref_emb
    req = {"model": EMBED, "input": TEXTS}
    inf.check("OpenAIEmbeddingInput_Text", req)
    status, body = srv.post("/embeddings", req)
    assert status == 200, body
    inf.check("OpenAIEmbeddingResult", body)
    got = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)
    want = np.array(ref["embeddings"], dtype=np.float32)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    assert cos.min() >= 0.999
    assert body["usage"]["prompt_tokens"] == sum(ref["tokens"])

    req = {"model": CLASSIFY, "input": TEXTS}
    inf.check("ClassifyInput", req)
    status, body = srv.post("/classify", req)
    assert status == 200, body
    inf.check("ClassifyResult", body)
    for got, want in zip(body["data"], ref_classify(repo, TEXTS)):
        assert [g["label"] for g in got] == [l for l, _ in want]
        np.testing.assert_allclose([g["score"] for g in got], [s for _, s in want], atol=1e-5)

    logits = ref_logits(repo, QUERY, DOCS)
    req = {"model": RERANK, "query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True}
    inf.check("RerankInput", req)
    status, body = srv.post("/rerank", req)
    assert status == 200, body
    inf.check("ReRankResult", body)
    order = list(np.argsort(-logits, kind="stable"))[:3]
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], sigmoid(logits[order]), atol=2e-4)
    assert [r["document"] for r in body["results"]] == [DOCS[i] for i in order]
    status, body = srv.post("/rerank", {"model": RERANK, "query": QUERY, "documents": DOCS[:2], "raw_scores": True})
    assert status == 200, body
    inf.check("ReRankResult", body)
    np.testing.assert_allclose(sorted(r["relevance_score"] for r in body["results"]), sorted(logits[:2]), atol=2e-4)

    status, body = get_json(srv, "/models")
    assert status == 200, body
    inf.check("OpenAIModelInfo", body)
    caps = {m["id"]: m["capabilities"] for m in body["data"]}
    assert caps[EMBED] == ["embed"] and caps[CLASSIFY] == ["classify"] and caps[RERANK] == ["rerank"]


def test_infinity_errors_are_openai_objects(srv, inf):
    for path, body, status in [
        ("/embeddings", {"model": "no-such-model", "input": "x"}, 404),
        ("/rerank", {"model": EMBED, "query": "q", "documents": ["a"]}, 400),
        ("/rerank", {"model": RERANK, "query": "q", "documents": ["a"], "top_n": 0}, 400),
        ("/classify", {"model": CLASSIFY, "input": ["x"], "raw_scores": True}, 400),
        ("/embeddings", {"model": EMBED, "input": ["x"] * 2049}, 413),
    ]:
        got, b = srv.post(path, body)
        assert got == status, (path, got, b)
        inf.check("OpenAIError", b)


# ---------------------------------------------------------------- Cohere / Jina

def test_v1_rerank_cohere_and_jina_shape(srv, repo):
    logits = ref_logits(repo, QUERY, DOCS)
    status, body = srv.post("/v1/rerank", {"model": RERANK, "query": QUERY,
                                            "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]],
                                            "top_n": 2, "return_documents": True})
    assert status == 200, body
    assert set(body) == {"id", "model", "results", "usage", "meta"}
    order = list(np.argsort(-logits[:3], kind="stable"))[:2]
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], sigmoid(logits[order]), atol=2e-4)
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in order]
    assert body["usage"]["total_tokens"] > 0 and body["meta"]["billed_units"]["search_units"] == 1
    status, body = srv.post("/v1/rerank", {"model": "no-such-model", "query": "q", "documents": ["a"]})
    assert status == 404 and body["error"]["param"] == "model" and body["error"]["code"] == "model_not_found"


def test_text_requests_are_counted_in_metrics(srv):
    srv.post("/rerank", {"query": "q", "texts": ["a"]}, model(RERANK))
    srv.post("/tokenize", {"inputs": "a"}, model(EMBED))
    status, text = srv.get("/metrics")
    assert status == 200
    text = text.decode()
    assert f'herd_infer_requests_total{{model="{RERANK}",status="ok"}}' in text
    assert 'herd_text_requests_total{op="tokenize",model="minilm-embed",status="ok"}' in text
