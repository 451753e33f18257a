#!/usr/bin/env bash
# herd's whole test suite, as CI runs it (the README's test command):
#   Python venv (references and unmodified clients), real Redis/PostgreSQL/S3 on loopback,
#   the ONNX Runtime library (`herd runtime install`), `cargo test --workspace`, and the
#   Python suite (tritonclient, onnxruntime references) against the real `herd serve` binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step "python test environment (.venv)"
bash scripts/test-python.sh

step "services on loopback (Redis, PostgreSQL, S3-compatible)"
bash scripts/test-services.sh
# shellcheck disable=SC1091
source .herd/test-env

step "build"
cargo build --workspace --all-targets

target_dir="${CARGO_TARGET_DIR:-$root/target}"

step "ONNX Runtime library"
"$target_dir/debug/herd" runtime install

step "README's first command resolves (cargo run at the workspace root)"
# The quick start says `cargo run --release -- demo`; a second binary in the workspace once made
# that fail with "could not determine which binary to run". Same resolution, debug profile, small demo.
cargo run -q -- demo --models 40 --requests 400 --concurrency 4 --dir "$root/.herd/ci-demo-models"

step "cargo test"
cargo test --workspace --no-fail-fast

step "python tests against herd serve"
HERD_BIN="$target_dir/debug/herd" .venv/bin/python -m pytest -q tests/python
