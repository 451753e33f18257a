#!/usr/bin/env bash
# herd vs MLServer with the shared KServe v2 harness (a copy of ../shared/bench with its venv and
# `gen_models.py --out bench-models --n 300 --dim 64 --classes 4 --kind logreg` models).
# Every server is fresh, on loopback, stopped by its own PID; every phase is time-bounded.
#
#   bench/side_by_side.sh BENCH_DIR HERD_BIN [TAG=r1] [ZIPF_BUDGET=3MiB] [herd|mlserver|all|wrk]
#
# herd:     run A (budget 1GiB, holds all 300): phases index,load,latency,throughput,unload;
#           then zipf (K=50 emulated by the budget ZIPF_BUDGET, --manage none: herd loads and
#           evicts by itself), once with --eviction gdsf and once with --eviction lru.
#           The three results are merged into results/herd_<TAG>.json (zipf = gdsf, zipf_lru).
# mlserver: run_mlserver.py --runs 1, all phases, zipf with --manage client (client LRU, K=50).
# wrk:      each server fresh, the first 30 models loaded (bench.py load phase), then
#           bench/wrk.sh (wrk -t2, c=16 and c=64, 10 s each, round-robin over the 30).
# ZIPF_BUDGET: 3MiB holds about 50 of these models in herd's measured accounting (52 resident
# at the end of a run), the K=50 that the client keeps resident on MLServer.
set -euo pipefail
B=${1:?bench dir}; HERD=${2:?herd binary}; TAG=${3:-r1}; ZB=${4:-3MiB}; WHAT=${5:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$B"
PY=./venv/bin/python
PORT=18280
COMMON=(--models-json bench-models/models.json --body bench-models/bodies/infer_b1.json
        --conc 16,64 --tp-seconds 15 --k 50 --zipf-requests 3000 --zipf-conc 16 --zipf-max-seconds 120)
mkdir -p results runs

herd_run() {  # $1 = label, $2 = budget, $3 = eviction, $4 = phases, rest = extra bench args
  local label=$1 budget=$2 ev=$3 phases=$4; shift 4
  "$HERD" serve --repo bench-models/onnx_repo --addr 127.0.0.1:$PORT --memory-budget "$budget" \
      --eviction "$ev" >"runs/$label.log" 2>&1 &
  local pid=$!
  $PY bench.py --url http://127.0.0.1:$PORT --pid $pid --label "$label" "${COMMON[@]}" \
      --phases "$phases" --out "results/$label.json" "$@" >/dev/null || true
  curl -s http://127.0.0.1:$PORT/metrics > "runs/$label.metrics" || true
  kill $pid; wait $pid 2>/dev/null || true
  sleep 2
}

if [[ $WHAT == herd || $WHAT == all ]]; then
  herd_run "herdA_$TAG" 1GiB gdsf index,load,latency,throughput,unload
  herd_run "herdZ_gdsf_$TAG" "$ZB" gdsf zipf --manage none
  herd_run "herdZ_lru_$TAG" "$ZB" lru zipf --manage none
  $PY - "$TAG" <<'PYEOF'
import json, sys
t = sys.argv[1]
a = json.load(open(f"results/herdA_{t}.json"))
g = json.load(open(f"results/herdZ_gdsf_{t}.json"))
l = json.load(open(f"results/herdZ_lru_{t}.json"))
a["zipf"] = g["zipf"]; a["zipf_lru"] = l["zipf"]
a["errors"] = {k: a["errors"].get(k, 0) + g["errors"].get(k, 0) + l["errors"].get(k, 0)
               for k in set(a["errors"]) | set(g["errors"]) | set(l["errors"])}
a["error_samples"] += g["error_samples"] + l["error_samples"]
json.dump(a, open(f"results/herd_{t}.json", "w"), indent=1)
PYEOF
  $PY summarize.py --label "herd_$TAG" "results/herd_$TAG.json"
fi

if [[ $WHAT == mlserver || $WHAT == all ]]; then
  $PY run_mlserver.py --runs 1 --label "mlserver_$TAG" --port $PORT --parallel-workers 1 \
      --bench-args "$(echo "${COMMON[@]}") --phases index,load,latency,throughput,unload,zipf --manage client"
fi

if [[ $WHAT == wrk ]]; then
  "$HERD" serve --repo bench-models/onnx_repo --addr 127.0.0.1:$PORT --memory-budget 1GiB \
      >"runs/herd_wrk_$TAG.log" 2>&1 &
  pid=$!
  $PY bench.py --url http://127.0.0.1:$PORT --phases load --n 30 --out "results/herd_wrk_load_$TAG.json" >/dev/null
  echo "herd:"; "$HERE/wrk.sh" http://127.0.0.1:$PORT "$B" | tee "results/herd_wrk_$TAG.txt"
  kill $pid; wait $pid 2>/dev/null || true
  sleep 2
  echo "mlserver:"
  $PY run_mlserver.py --runs 1 --label "mlserver_wrk_$TAG" --port $PORT --parallel-workers 1 \
      --bench-args "--phases load --n 30" --post-cmd "$HERE/wrk.sh {url} $B" | grep -v '^|'
fi
