#!/usr/bin/env bash
# Starts the real services that herd's tests use, on 127.0.0.1 only, and writes their URLs to
# .herd/test-env (source it). Idempotent: a service already answering is left alone.
#   PostgreSQL -> HERD_TEST_POSTGRES_URL   (Debian's postgresql package)
#   Redis      -> HERD_TEST_REDIS_URL      (Debian's redis-server package)
#   Redis Cluster (3 nodes) -> HERD_TEST_REDIS_CLUSTER_URL
#   S3 (moto)  -> HERD_TEST_S3_ENDPOINT    (PyPI moto[server], in the project venv)
#   HAProxy    -> on PATH only (Debian's haproxy package; tests start their own)
# Usage: bash scripts/test-services.sh && source .herd/test-env
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.herd/services"
mkdir -p "$state"
env_file="$root/.herd/test-env"
: >"$env_file"

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
# HAProxy: the model-aware router the routing tests start themselves (not a service here).
command -v haproxy >/dev/null || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt-get)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: not root; install ${need_apt[*]} yourself" >&2
  fi
fi

# --- Redis on 127.0.0.1:56379
REDIS_PORT=${HERD_TEST_REDIS_PORT:-56379}
if command -v redis-server >/dev/null; then
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
      --daemonize yes --logfile "$state/redis.log" --pidfile "$state/redis.pid"
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "export HERD_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT" >>"$env_file"
  echo "redis: redis://127.0.0.1:$REDIS_PORT"
fi

# --- Redis Cluster: three masters on 127.0.0.1:45701-45703 (a cluster bus port is 10000 higher, so <= 55535) -> HERD_TEST_REDIS_CLUSTER_URL
# (herd-jobs runs its Redis queue suite on it too: every key through KEYS, one hash slot).
CLUSTER_BASE=${HERD_TEST_REDIS_CLUSTER_PORT:-45701}
if command -v redis-server >/dev/null; then
  cl_ports=("$CLUSTER_BASE" "$((CLUSTER_BASE + 1))" "$((CLUSTER_BASE + 2))")
  for p in "${cl_ports[@]}"; do
    if ! redis-cli -p "$p" ping >/dev/null 2>&1; then
      mkdir -p "$state/redis-cluster-$p"
      (cd "$state/redis-cluster-$p" && redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
        --cluster-config-file nodes.conf --save '' --appendonly no --daemonize yes \
        --logfile "$state/redis-cluster-$p.log" --pidfile "$state/redis-cluster-$p.pid")
    fi
  done
  for p in "${cl_ports[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! redis-cli -p "$CLUSTER_BASE" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    for p in "${cl_ports[@]}"; do redis-cli -p "$p" flushall >/dev/null 2>&1 || true; redis-cli -p "$p" cluster reset hard >/dev/null 2>&1 || true; done
    redis-cli --cluster create "${cl_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$state/redis-cluster-create.log" 2>&1
    for _ in $(seq 100); do
      redis-cli -p "$CLUSTER_BASE" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break; sleep 0.1
    done
  fi
  cl_url="redis+cluster://127.0.0.1:${cl_ports[0]},127.0.0.1:${cl_ports[1]},127.0.0.1:${cl_ports[2]}"
  echo "export HERD_TEST_REDIS_CLUSTER_URL=$cl_url" >>"$env_file"
  echo "redis cluster: $cl_url"
fi

# --- PostgreSQL on 127.0.0.1:55432 (trust auth, throwaway cluster)
PG_PORT=${HERD_TEST_PG_PORT:-55432}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$pg_bin" ]; then
  # Outside the checkout: the postgres user must be able to reach it (a clone under /root is not).
  pg_state="${TMPDIR:-/tmp}/herd-test-pg-$PG_PORT"
  mkdir -p "$pg_state"
  pg_data="$pg_state/pgdata"
  run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  if ! "$pg_bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then
    if [ ! -f "$pg_data/PG_VERSION" ]; then
      mkdir -p "$pg_data"
      [ "$(id -u)" = 0 ] && chown -R postgres "$pg_state"
      run_pg "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust >/dev/null
    fi
    [ "$(id -u)" = 0 ] && chown -R postgres "$pg_state"
    run_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_state/postgres.log" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp -c fsync=off -c max_connections=200" -w start >/dev/null
  fi
  echo "export HERD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres" >>"$env_file"
  echo "postgres: postgres://postgres@127.0.0.1:$PG_PORT/postgres"
fi

# --- S3-compatible endpoint (moto) on 127.0.0.1:55000
S3_PORT=${HERD_TEST_S3_PORT:-55000}
venv="$root/.venv"
if [ -x "$venv/bin/moto_server" ]; then
  if ! curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" 2>/dev/null; then
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$state/moto.log" 2>&1 &
    echo $! >"$state/moto.pid"
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break; sleep 0.1; done
  fi
  {
    echo "export HERD_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
  } >>"$env_file"
  echo "s3 (moto): http://127.0.0.1:$S3_PORT"
else
  echo "moto not in $venv (run scripts/test-python.sh); S3 tests will report it" >&2
fi
echo "wrote $env_file"
