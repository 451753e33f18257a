#!/usr/bin/env bash
# Cold load + first answer over HTTP: start a fresh `herd serve` on the repository, then for
# each of the first N models send one infer (the model is not loaded: it loads on that request)
# and, right after, a second one (warm). Prints per-request curl times and medians.
# Also prints the server's start-to-ready time. Loopback only; stops its own server by PID.
#
#   bench/cold_first.sh HERD_BIN ONNX_REPO BODY_JSON [N=20] [PORT=18180]
set -euo pipefail
HERD=${1:?herd binary}; REPO=${2:?onnx repo}; BODY=${3:?body json}; N=${4:-20}; PORT=${5:-18180}
URL=http://127.0.0.1:$PORT
LOG=$(mktemp)
t0=$(date +%s.%N)
"$HERD" serve --repo "$REPO" --addr 127.0.0.1:$PORT --memory-budget 1GiB >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 1 600); do
  curl -sf -o /dev/null $URL/v2/health/ready && break
  sleep 0.01
done
t1=$(date +%s.%N)
echo "start_to_ready_s $(echo "$t1 - $t0" | bc -l)"
names=$(ls "$REPO" | head -n "$N")
cold=(); warm=()
for m in $names; do
  c=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H 'Content-Type: application/json' \
      --data-binary @"$BODY" $URL/v2/models/$m/infer)
  w=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H 'Content-Type: application/json' \
      --data-binary @"$BODY" $URL/v2/models/$m/infer)
  echo "$m cold ${c} warm ${w}"
  cold+=("${c#* }"); warm+=("${w#* }")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2) * 1000}'; }
echo "cold_first_answer_ms_median $(med "${cold[@]}")"
echo "warm_second_answer_ms_median $(med "${warm[@]}")"
