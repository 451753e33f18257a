#!/usr/bin/env bash
# Model-aware routing vs round robin (BENCHMARKS.md, "Routing across replicas"): the routing
# acceptance test (crates/herd/tests/routing.rs) with a bigger workload. A real HAProxy
# (`herd router haproxy-config`) in front of three real `herd serve` processes, each with a
# budget for a sixth of the models; the same zipf workload (seed fixed) model-aware, against one
# server with three times the budget, and round robin; then a replica stopped and restarted.
#
# Usage: bash bench/routing.sh            # release build, 1200 models, 30000 requests, 16 clients
#        PROFILE=dev bash bench/routing.sh # debug build (what CI runs, with smaller defaults)
# Sizes: HERD_ROUTING_MODELS, HERD_ROUTING_REQUESTS, HERD_ROUTING_CONCURRENCY,
# and HERD_ROUTING_BALANCE_FACTOR (HAProxy hash-balance-factor; default: the CLI's).
set -euo pipefail
cd "$(dirname "$0")/.."
export HERD_ROUTING_MODELS=${HERD_ROUTING_MODELS:-1200}
export HERD_ROUTING_REQUESTS=${HERD_ROUTING_REQUESTS:-30000}
export HERD_ROUTING_CONCURRENCY=${HERD_ROUTING_CONCURRENCY:-16}
profile=()
[ "${PROFILE:-release}" = release ] && profile=(--release)
command -v haproxy >/dev/null || { echo "haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }
cargo test "${profile[@]}" -p herd --test routing -- --nocapture
