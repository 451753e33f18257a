#!/usr/bin/env bash
# Peak throughput with wrk (no Python client competing for the cores): round-robin over 30 loaded
# models at concurrency 16 and 64, 10 s each, against a URL whose models are already loaded.
#
#   bench/wrk.sh URL BENCH_DIR        (BENCH_DIR: the copy of ../shared/bench, for wrk_infer.lua)
set -euo pipefail
URL=${1:?url}; B=${2:?bench dir}
for c in 16 64; do
  echo "wrk c=$c"
  wrk -t2 -c$c -d10s -s "$B/wrk_infer.lua" "$URL" -- 30 cust- "$B/bench-models/bodies/infer_b1.json" | grep '^JSON'
done
