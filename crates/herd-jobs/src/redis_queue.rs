//! The Redis backend: `redis://[USER:PASS@]HOST:PORT[/DB][?prefix=NAME]` (`rediss://` for TLS),
//! or a Redis Cluster: `redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT...][?prefix=NAME]`
//! (`rediss+cluster://` for TLS).
//!
//! The reliable-queue pattern with leases, every state change one Lua script (atomic in Redis).
//! Every key starts with the hash tag `{PREFIX}`, so an installation's keys live in one hash slot
//! and the scripts run unchanged on Redis Cluster and cluster-mode managed Redis:
//! * `{p}:job:<id>` a hash with the job record (spec JSON, state, attempts, lease token...);
//! * `{p}:q:<queue>:waiting` sorted set, score = -priority (ties: job id, i.e. enqueue order);
//! * `{p}:q:<queue>:running` sorted set, score = lease expiry (ms) — expired members are moved
//!   back to waiting (or to dead after the last attempt) by the next claim, like `XAUTOCLAIM`;
//! * `{p}:q:<queue>:delayed` sorted set, score = retry time — due members move to waiting;
//! * `{p}:q:<queue>:done` / `:dead` sorted sets, score = finish time (for retention);
//! * `{p}:q:<queue>:all` sorted set of every job by creation time (for listing);
//! * `{p}:queues` the set of queue names.
//!
//! Every key a script touches is passed in `KEYS`, except the job records of the ids a claim
//! settles (expired leases, due retries) and a batch requeue/purge walks: those are only known
//! inside the script and are built from the same `{p}` hash tag, so they are in the same slot.
//! Scans are bounded (`ZRANGEBYSCORE ... LIMIT`): one claim settles at most [`SCAN_LIMIT`]
//! expired or due jobs per queue, purge and requeue work in batches, so a large backlog never
//! blocks Redis in one long script.
//!
//! Time: lease expiries, retry times and finish times come from the Redis server's clock
//! (`TIME` inside the scripts), so workers whose clocks disagree still agree on who holds a
//! lease. Tests may pass their own clock (see [`crate::ConnectOptions`]).
//!
//! The default prefix is `herd`; `?prefix=` keeps several installations (or test runs) apart.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::queue::{claim_past_poison, duration_ms, enqueue_with_fresh_id, ClaimStep, Drawn};
use crate::{
    backoff_delay_ms, new_job_id, new_token, redact_url, Clock, FailOutcome, Failure, Job, JobId,
    JobOutcome, JobSpec, JobState, JobsError, Lease, ListFilter, Progress, Queue, QueueStats,
};

/// How many expired leases or due retries one claim settles per queue, and the batch size of
/// purge and requeue.
pub const SCAN_LIMIT: usize = 256;

/// Helpers every script starts with: `now_ms(override)` (the server's clock unless a test clock
/// passed a time), `s(n)` (a number as an integer string), `priority_of(k)` (a job hash's
/// priority, 0 when unset), `queue_state(k, q)` (false when the job hash does not exist or is
/// another queue's, else true and its state) and `revive(k, id, kdead, kwait, nows)` (a dead
/// job back to waiting with fresh attempts: requeue one, requeue a batch).
const PRELUDE: &str = r#"
local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function s(n) return string.format('%.0f', n) end
local function priority_of(k) return tonumber(redis.call('HGET', k, 'priority') or '0') or 0 end
local function queue_state(k, q)
  local jq = redis.call('HGET', k, 'queue')
  if not jq or jq ~= q then return false end
  return true, redis.call('HGET', k, 'state')
end
local function revive(k, id, kdead, kwait, nows)
  redis.call('ZREM', kdead, id)
  redis.call('ZADD', kwait, -priority_of(k), id)
  redis.call('HSET', k, 'state', 'waiting', 'attempts', 0, 'run_at_ms', nows, 'updated_ms', nows)
  redis.call('HDEL', k, 'finished_ms', 'worker_id')
end
"#;

/// KEYS: per claimed queue 4 keys (delayed, running, waiting, dead).
/// ARGV: job key prefix, worker, token, lease ms, now override, scan limit.
const CLAIM: &str = r#"
local JP = ARGV[1]
local now = now_ms(ARGV[5])
local nows = s(now)
local limit = tonumber(ARGV[6])
local nq = #KEYS / 4
local best_id, best_i, best_score
for i = 0, nq - 1 do
  local kd, kr, kw, kx = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local due = redis.call('ZRANGEBYSCORE', kd, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local k = JP .. id
    local prio = priority_of(k)
    redis.call('ZREM', kd, id)
    redis.call('ZADD', kw, -prio, id)
    redis.call('HSET', k, 'state', 'waiting')
  end
  local expired = redis.call('ZRANGEBYSCORE', kr, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    local k = JP .. id
    redis.call('ZREM', kr, id)
    local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0') or 0
    local maxa = tonumber(redis.call('HGET', k, 'max_attempts') or '1') or 1
    if attempts >= maxa then
      local last = redis.call('HGET', k, 'last_error') or ''
      redis.call('HSET', k, 'state', 'dead', 'finished_ms', nows, 'updated_ms', nows,
        'last_error', 'lease expired on the last attempt (the worker died or hung); ' .. last)
      redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
      redis.call('ZADD', kx, now, id)
    else
      local prio = priority_of(k)
      redis.call('ZADD', kw, -prio, id)
      redis.call('HSET', k, 'state', 'waiting')
      redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
    end
  end
  local top = redis.call('ZRANGE', kw, 0, 0, 'WITHSCORES')
  if top[1] then
    local score = tonumber(top[2])
    if best_id == nil or score < best_score or (score == best_score and top[1] < best_id) then
      best_id = top[1]
      best_i = i
      best_score = score
    end
  end
end
if not best_id then
  return false
end
local k = JP .. best_id
local expires = now + tonumber(ARGV[4])
redis.call('ZREM', KEYS[4*best_i+3], best_id)
redis.call('ZADD', KEYS[4*best_i+2], expires, best_id)
redis.call('HINCRBY', k, 'attempts', 1)
redis.call('HSET', k, 'state', 'running', 'worker_id', ARGV[2], 'lease_token', ARGV[3],
  'lease_expires_ms', s(expires), 'updated_ms', nows)
local out = redis.call('HGETALL', k)
table.insert(out, 'id')
table.insert(out, best_id)
table.insert(out, '__expires')
table.insert(out, s(expires))
return out
"#;

/// Common prologue: KEYS[1] is the job; ARGV[1] the lease token, ARGV[2] the now override.
/// Returns 0 when the lease is lost.
const CHECK_LEASE: &str = r#"
local k = KEYS[1]
if redis.call('HGET', k, 'state') ~= 'running' or redis.call('HGET', k, 'lease_token') ~= ARGV[1] then
  return 0
end
local now = now_ms(ARGV[2])
local nows = s(now)
"#;

/// KEYS: job, running. ARGV: token, now, lease ms, progress-or-empty. Returns the new expiry.
const RENEW: &str = r#"
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[5])
redis.call('HSET', k, 'lease_expires_ms', s(expires), 'updated_ms', nows)
if ARGV[4] ~= '' then
  redis.call('HSET', k, 'progress', ARGV[4])
end
return expires
"#;

/// KEYS: job, running, done. ARGV: token, now, result, id.
const ACK: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('HSET', k, 'state', 'done', 'finished_ms', nows, 'updated_ms', nows, 'result', ARGV[3])
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
return 1
"#;

/// KEYS: job, running, dead, delayed. ARGV: token, now, message, retryable (1/0), delay ms, id.
/// Returns {2, now} (dead) or {1, run_at} (retry).
const FAIL: &str = r#"
local id = ARGV[6]
redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0') or 0
local maxa = tonumber(redis.call('HGET', k, 'max_attempts') or '1') or 1
if ARGV[4] ~= '1' or attempts >= maxa then
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('HSET', k, 'state', 'dead', 'finished_ms', nows, 'updated_ms', nows, 'last_error', ARGV[3])
  return {2, nows}
end
local run_at = now + tonumber(ARGV[5])
redis.call('ZADD', KEYS[4], run_at, id)
redis.call('HSET', k, 'state', 'delayed', 'run_at_ms', s(run_at), 'updated_ms', nows, 'last_error', ARGV[3])
return {1, s(run_at)}
"#;

/// KEYS: job, running, waiting. ARGV: token, now, id.
const RELEASE: &str = r#"
local id = ARGV[3]
redis.call('ZREM', KEYS[2], id)
local prio = priority_of(k)
redis.call('ZADD', KEYS[3], -prio, id)
local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0') or 0
if attempts > 0 then
  redis.call('HINCRBY', k, 'attempts', -1)
end
redis.call('HSET', k, 'state', 'waiting', 'run_at_ms', nows, 'updated_ms', nows)
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
return 1
"#;

/// KEYS: job, running, dead. ARGV: token, now, reason, id. A claimed job whose record cannot be
/// decoded goes to the dead letter with the reason (the queue keeps flowing).
const BURY: &str = r#"
local id = ARGV[4]
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[3], now, id)
redis.call('HSET', k, 'state', 'dead', 'finished_ms', nows, 'updated_ms', nows, 'last_error', ARGV[3])
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
return 1
"#;

/// KEYS: job, waiting, all, queues. ARGV: now override, queue, priority, max attempts, spec, id.
/// Never overwrites: returns 0 when the id exists (the caller draws a new one), else 1.
const ENQUEUE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local now = now_ms(ARGV[1])
local nows = s(now)
redis.call('HSET', KEYS[1], 'spec', ARGV[5], 'queue', ARGV[2], 'state', 'waiting',
  'priority', ARGV[3], 'attempts', '0', 'max_attempts', ARGV[4],
  'created_ms', nows, 'updated_ms', nows, 'run_at_ms', nows)
redis.call('ZADD', KEYS[2], -tonumber(ARGV[3]), ARGV[6])
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('SADD', KEYS[4], ARGV[2])
return 1
"#;

/// KEYS: job, dead, waiting. ARGV: queue, now override, id.
/// Returns {1} or {-1} (not found) or {-2, state}.
const REQUEUE_ONE: &str = r#"
local k = KEYS[1]
local found, state = queue_state(k, ARGV[1])
if not found then
  return {-1}
end
if state ~= 'dead' then
  return {-2, state}
end
revive(k, ARGV[3], KEYS[2], KEYS[3], s(now_ms(ARGV[2])))
return {1}
"#;

/// KEYS: job, waiting, delayed, running, dead. ARGV: queue, now override, reason, id.
/// Returns {1, previous state} or {-1} (not found) or {-2, state} (done or dead already).
const CANCEL: &str = r#"
local k = KEYS[1]
local found, state = queue_state(k, ARGV[1])
if not found then
  return {-1}
end
if state ~= 'waiting' and state ~= 'delayed' and state ~= 'running' then
  return {-2, state}
end
local now = now_ms(ARGV[2])
local nows = s(now)
local id = ARGV[4]
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZADD', KEYS[5], now, id)
redis.call('HSET', k, 'state', 'dead', 'finished_ms', nows, 'updated_ms', nows, 'last_error', ARGV[3])
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
return {1, state}
"#;

/// KEYS: dead, waiting. ARGV: job key prefix, now override, limit. Returns how many moved.
const REQUEUE_BATCH: &str = r#"
local now = now_ms(ARGV[2])
local nows = s(now)
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
for _, id in ipairs(ids) do
  revive(ARGV[1] .. id, id, KEYS[1], KEYS[2], nows)
end
return #ids
"#;

/// KEYS: done, dead, all. ARGV: job key prefix, retention ms, now override, limit.
/// Removes at most `limit` finished jobs older than the retention; returns how many.
const PURGE_BATCH: &str = r#"
local cutoff = now_ms(ARGV[3]) - tonumber(ARGV[2])
local limit = tonumber(ARGV[4])
local n = 0
for i = 1, 2 do
  if n < limit then
    local ids = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '(' .. s(cutoff), 'LIMIT', 0, limit - n)
    for _, id in ipairs(ids) do
      redis.call('DEL', ARGV[1] .. id)
      redis.call('ZREM', KEYS[i], id)
      redis.call('ZREM', KEYS[3], id)
      n = n + 1
    end
  end
end
return n
"#;

/// KEYS: waiting, running, delayed, dead, done. ARGV: now override.
const STATS: &str = r#"
local now = now_ms(ARGV[1])
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[2], '-inf', now),
  redis.call('ZCOUNT', KEYS[2], '(' .. s(now), '+inf'),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]),
}
"#;

/// KEYS: running. ARGV: job key prefix, now override, limit. Worker ids of unexpired leases.
const HOLDERS: &str = r#"
local now = now_ms(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. s(now), '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local w = redis.call('HGET', ARGV[1] .. id, 'worker_id')
  if w then table.insert(out, w) end
end
return out
"#;

/// A single Redis (through a reconnecting manager) or a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis backend.
pub struct RedisQueue {
    conn: Conn,
    /// `{prefix}`: the hash tag every key starts with.
    base: String,
    /// A test clock, or None for the server's clock.
    clock: Option<Arc<dyn Clock>>,
    cluster: bool,
    claim: Script,
    renew: Script,
    ack: Script,
    fail: Script,
    release: Script,
    bury: Script,
    enqueue: Script,
    requeue_one: Script,
    cancel: Script,
    requeue_batch: Script,
    purge_batch: Script,
    stats: Script,
    holders: Script,
}

/// A Redis URL taken apart: the node URLs, the key prefix, cluster or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisTarget {
    pub nodes: Vec<String>,
    pub prefix: String,
    pub cluster: bool,
}

/// Parses `redis://`, `rediss://`, `redis+cluster://` and `rediss+cluster://` URLs.
pub(crate) fn parse_url(url: &str) -> Result<RedisTarget, JobsError> {
    let invalid = |reason: String| JobsError::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let (base, prefix) = split_prefix(url)?;
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| invalid("no scheme".into()))?;
    let (node_scheme, cluster) = match scheme {
        "redis" => ("redis", false),
        "rediss" => ("rediss", false),
        "redis+cluster" => ("redis", true),
        "rediss+cluster" => ("rediss", true),
        other => {
            return Err(invalid(format!(
                "unknown scheme '{other}': use redis://, rediss://, redis+cluster:// or rediss+cluster://"
            )))
        }
    };
    if !cluster {
        return Ok(RedisTarget {
            nodes: vec![base],
            prefix,
            cluster,
        });
    }
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('/') {
        return Err(invalid(
            "a cluster URL has no database number (Redis Cluster only has database 0)".into(),
        ));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.trim().is_empty())
        .map(|h| match userinfo {
            Some(u) => format!("{node_scheme}://{u}@{}", h.trim()),
            None => format!("{node_scheme}://{}", h.trim()),
        })
        .collect();
    if nodes.is_empty() {
        return Err(invalid(
            "no nodes: use redis+cluster://HOST:PORT[,HOST:PORT...]".into(),
        ));
    }
    Ok(RedisTarget {
        nodes,
        prefix,
        cluster,
    })
}

impl RedisQueue {
    /// Connects to `url` (see the module docs for the forms). `clock`: a test clock, or None for
    /// the Redis server's clock.
    pub async fn open(url: &str, clock: Option<Arc<dyn Clock>>) -> Result<Self, JobsError> {
        let target = parse_url(url)?;
        let invalid = |e: redis::RedisError| {
            JobsError::InvalidUrl {
            url: redact_url(url),
            reason: format!("{e}; expected redis://[USER:PASS@]HOST:PORT[/DB] or redis+cluster://HOST:PORT,HOST:PORT"),
        }
        };
        let conn = if target.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(target.nodes.clone())
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(Duration::from_secs(30))
                .retries(3)
                .build()
                .map_err(invalid)?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(target.nodes[0].as_str()).map_err(invalid)?;
            // One direct connection first: a refused connection or a wrong password is reported
            // at once (the connection manager retries a failed handshake for minutes).
            match tokio::time::timeout(
                Duration::from_secs(10),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} did not answer within 10 s", redact_url(url)),
                    ))
                    .into())
                }
            }
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(5))
                .set_response_timeout(Duration::from_secs(30))
                .set_number_of_retries(3);
            Conn::Single(ConnectionManager::new_with_config(client, cfg).await?)
        };
        let lease_script = |body: &str| Script::new(&format!("{PRELUDE}\n{CHECK_LEASE}\n{body}"));
        let script = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Ok(RedisQueue {
            conn,
            base: format!("{{{}}}", target.prefix),
            clock,
            cluster: target.cluster,
            claim: script(CLAIM),
            renew: lease_script(RENEW),
            ack: lease_script(ACK),
            fail: lease_script(FAIL),
            release: lease_script(RELEASE),
            bury: lease_script(BURY),
            enqueue: script(ENQUEUE),
            requeue_one: script(REQUEUE_ONE),
            cancel: script(CANCEL),
            requeue_batch: script(REQUEUE_BATCH),
            purge_batch: script(PURGE_BATCH),
            stats: script(STATS),
            holders: script(HOLDERS),
        })
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn job_prefix(&self) -> String {
        format!("{}:job:", self.base)
    }
    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.base)
    }
    fn qkey(&self, queue: &str, what: &str) -> String {
        format!("{}:q:{queue}:{what}", self.base)
    }
    fn queues_key(&self) -> String {
        format!("{}:queues", self.base)
    }
    /// The test clock's time, or "" (the scripts then read the server's `TIME`).
    fn now_arg(&self) -> String {
        match &self.clock {
            Some(c) => c.now_ms().to_string(),
            None => String::new(),
        }
    }

    async fn load(&self, id: &str) -> Result<Option<Job>, JobsError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.job_key(id))
            .query_async(&mut conn)
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        hash_to_job(id, &map).map(Some)
    }

    async fn load_many(&self, ids: &[String]) -> Result<Vec<Job>, JobsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.job_key(id));
        }
        let mut conn = self.conn.clone();
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, map) in ids.iter().zip(maps) {
            if map.is_empty() {
                continue;
            }
            match hash_to_job(id, &map) {
                Ok(j) => jobs.push(j),
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "skipping an unreadable job record")
                }
            }
        }
        Ok(jobs)
    }

    /// One claim; a poison job it takes is buried (BURY, with the claim's token) and reported
    /// as [`ClaimStep::Buried`].
    async fn claim_once(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<ClaimStep, JobsError> {
        let token = new_token();
        let mut inv = self.claim.prepare_invoke();
        for q in queues {
            inv.key(self.qkey(q, "delayed"))
                .key(self.qkey(q, "running"))
                .key(self.qkey(q, "waiting"))
                .key(self.qkey(q, "dead"));
        }
        inv.arg(self.job_prefix())
            .arg(worker_id)
            .arg(&token)
            .arg(duration_ms(lease))
            .arg(self.now_arg())
            .arg(SCAN_LIMIT);
        let mut conn = self.conn.clone();
        let out: Value = inv.invoke_async(&mut conn).await?;
        let map: HashMap<String, String> = match out {
            Value::Nil | Value::Boolean(false) => return Ok(ClaimStep::Done(None)),
            other => redis::from_redis_value(&other)?,
        };
        let Some(id) = map.get("id").cloned() else {
            return Err(JobsError::Corrupt("claim returned no job id".into()));
        };
        let expires = map
            .get("__expires")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        match hash_to_job(&id, &map) {
            Ok(job) => Ok(ClaimStep::Done(Some(Lease {
                job,
                token,
                worker_id: worker_id.to_string(),
                expires_ms: expires,
            }))),
            Err(e) => {
                let queue = map.get("queue").cloned().unwrap_or_default();
                let reason = format!("undecodable job record, moved to the dead letter: {e}");
                tracing::error!(job_id = %id, queue = %queue, error = %e, "poison job: moving it to the dead letter");
                if queues.contains(&queue) {
                    self.bury(&id, &queue, &token, &reason).await?;
                    Ok(ClaimStep::Buried)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Moves a claimed job whose record does not decode to the dead letter.
    async fn bury(
        &self,
        id: &str,
        queue: &str,
        token: &str,
        reason: &str,
    ) -> Result<(), JobsError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .bury
            .key(self.job_key(id))
            .key(self.qkey(queue, "running"))
            .key(self.qkey(queue, "dead"))
            .arg(token)
            .arg(self.now_arg())
            .arg(reason)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Splits `?prefix=NAME` off a Redis URL.
fn split_prefix(url: &str) -> Result<(String, String), JobsError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), "herd".to_string()));
    };
    let mut prefix = "herd".to_string();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("prefix", v))
                if !v.is_empty()
                    && v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) =>
            {
                prefix = v.to_string()
            }
            _ => {
                return Err(JobsError::InvalidUrl {
                    url: redact_url(url),
                    reason: format!(
                        "unknown or invalid parameter '{}': the only one is prefix=NAME (letters, digits, - _ . :)",
                        pair.split_once('=').map(|(k, _)| k).unwrap_or(pair)
                    ),
                })
            }
        }
    }
    Ok((base.to_string(), prefix))
}

fn hash_to_job(id: &str, map: &HashMap<String, String>) -> Result<Job, JobsError> {
    let get = |k: &str| map.get(k).map(String::as_str);
    let int =
        |k: &str| -> Option<i64> { get(k).and_then(|v| v.parse::<f64>().ok()).map(|f| f as i64) };
    let spec: JobSpec = serde_json::from_str(get("spec").unwrap_or("null"))
        .map_err(|e| JobsError::Corrupt(format!("job {id}: spec: {e}")))?;
    let state = JobState::from_str(get("state").unwrap_or(""))
        .map_err(|e| JobsError::Corrupt(format!("job {id}: {e}")))?;
    let result = match get("result") {
        Some(r) => Some(
            serde_json::from_str(r)
                .map_err(|e| JobsError::Corrupt(format!("job {id}: result: {e}")))?,
        ),
        None => None,
    };
    Ok(Job {
        id: id.to_string(),
        spec,
        state,
        attempts: u32::try_from(int("attempts").unwrap_or(0)).unwrap_or(0),
        created_ms: int("created_ms").unwrap_or(0),
        updated_ms: int("updated_ms").unwrap_or(0),
        run_at_ms: int("run_at_ms").unwrap_or(0),
        finished_ms: int("finished_ms"),
        worker_id: get("worker_id").map(str::to_string),
        lease_expires_ms: int("lease_expires_ms"),
        last_error: get("last_error").map(str::to_string),
        result,
        progress: get("progress").and_then(|p| serde_json::from_str::<Progress>(p).ok()),
    })
}

fn lease_lost(lease: &Lease) -> JobsError {
    JobsError::LeaseLost {
        job_id: lease.job.id.clone(),
    }
}

fn int_of(v: Option<&Value>) -> Result<i64, JobsError> {
    match v {
        Some(v) => {
            // Scripts return integers or integer strings.
            if let Ok(n) = redis::from_redis_value::<i64>(v) {
                return Ok(n);
            }
            let s: String = redis::from_redis_value(v)?;
            s.parse::<f64>()
                .map(|f| f as i64)
                .map_err(|_| JobsError::Corrupt(format!("script returned '{s}', not a number")))
        }
        None => Err(JobsError::Corrupt("script returned nothing".into())),
    }
}

#[async_trait]
impl Queue for RedisQueue {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, spec: JobSpec) -> Result<JobId, JobsError> {
        spec.validate()?;
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        // An id that exists already is never overwritten: ENQUEUE checks and writes in one script.
        let (spec, spec_json) = (&spec, &spec_json);
        enqueue_with_fresh_id(&spec.queue, || async move {
            let now = match &self.clock {
                Some(c) => c.now_ms(),
                None => crate::SystemClock.now_ms(),
            };
            let id = new_job_id(now);
            let mut conn = self.conn.clone();
            let created: i64 = self
                .enqueue
                .key(self.job_key(&id))
                .key(self.qkey(&spec.queue, "waiting"))
                .key(self.qkey(&spec.queue, "all"))
                .key(self.queues_key())
                .arg(self.now_arg())
                .arg(&spec.queue)
                .arg(spec.priority)
                .arg(spec.max_attempts)
                .arg(spec_json)
                .arg(&id)
                .invoke_async(&mut conn)
                .await?;
            Ok(Drawn {
                id,
                inserted: created == 1,
            })
        })
        .await
    }

    async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError> {
        // A poison job (a record that does not decode) is buried and the claim goes on.
        claim_past_poison(queues, || self.claim_once(worker_id, queues, lease)).await
    }

    async fn renew(
        &self,
        lease: &mut Lease,
        extend: Duration,
        progress: Option<&Progress>,
    ) -> Result<(), JobsError> {
        let progress = progress
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default();
        let mut conn = self.conn.clone();
        let out: Value = self
            .renew
            .key(self.job_key(&lease.job.id))
            .key(self.qkey(&lease.job.spec.queue, "running"))
            .arg(&lease.token)
            .arg(self.now_arg())
            .arg(duration_ms(extend))
            .arg(progress)
            .arg(&lease.job.id)
            .invoke_async(&mut conn)
            .await?;
        let expires = int_of(Some(&out))?;
        if expires == 0 {
            return Err(lease_lost(lease));
        }
        lease.expires_ms = expires;
        Ok(())
    }

    async fn ack(&self, lease: &Lease, outcome: &JobOutcome) -> Result<(), JobsError> {
        let result =
            serde_json::to_string(outcome).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        let q = &lease.job.spec.queue;
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .ack
            .key(self.job_key(&lease.job.id))
            .key(self.qkey(q, "running"))
            .key(self.qkey(q, "done"))
            .arg(&lease.token)
            .arg(self.now_arg())
            .arg(result)
            .arg(&lease.job.id)
            .invoke_async(&mut conn)
            .await?;
        if ok == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, JobsError> {
        // The lease's attempts equal the stored ones while the token matches (only a claim,
        // which changes the token, changes attempts).
        let delay = backoff_delay_ms(
            &lease.job.spec.backoff,
            lease.job.attempts,
            &mut rand::thread_rng(),
        );
        let q = &lease.job.spec.queue;
        let mut conn = self.conn.clone();
        let out: Value = self
            .fail
            .key(self.job_key(&lease.job.id))
            .key(self.qkey(q, "running"))
            .key(self.qkey(q, "dead"))
            .key(self.qkey(q, "delayed"))
            .arg(&lease.token)
            .arg(self.now_arg())
            .arg(&failure.message)
            .arg(if failure.retryable { "1" } else { "0" })
            .arg(delay)
            .arg(&lease.job.id)
            .invoke_async(&mut conn)
            .await?;
        let items: Vec<Value> = match out {
            Value::Int(0) => return Err(lease_lost(lease)),
            other => redis::from_redis_value(&other)?,
        };
        match int_of(items.first())? {
            2 => Ok(FailOutcome::Dead),
            _ => Ok(FailOutcome::Retry {
                run_at_ms: int_of(items.get(1))?,
            }),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), JobsError> {
        let q = &lease.job.spec.queue;
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .release
            .key(self.job_key(&lease.job.id))
            .key(self.qkey(q, "running"))
            .key(self.qkey(q, "waiting"))
            .arg(&lease.token)
            .arg(self.now_arg())
            .arg(&lease.job.id)
            .invoke_async(&mut conn)
            .await?;
        if ok == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn requeue_dead(&self, queue: &str, id: Option<&str>) -> Result<u64, JobsError> {
        let mut conn = self.conn.clone();
        if let Some(id) = id {
            let out: Vec<Value> = self
                .requeue_one
                .key(self.job_key(id))
                .key(self.qkey(queue, "dead"))
                .key(self.qkey(queue, "waiting"))
                .arg(queue)
                .arg(self.now_arg())
                .arg(id)
                .invoke_async(&mut conn)
                .await?;
            return match int_of(out.first())? {
                -1 => Err(JobsError::NotFound(format!("{id} (in queue {queue})"))),
                -2 => {
                    let state: String = match out.get(1) {
                        Some(v) => redis::from_redis_value(v).unwrap_or_default(),
                        None => String::new(),
                    };
                    Err(JobsError::NotDead {
                        id: id.to_string(),
                        state,
                    })
                }
                n => Ok(u64::try_from(n).unwrap_or(0)),
            };
        }
        let mut total = 0u64;
        loop {
            let n: i64 = self
                .requeue_batch
                .key(self.qkey(queue, "dead"))
                .key(self.qkey(queue, "waiting"))
                .arg(self.job_prefix())
                .arg(self.now_arg())
                .arg(SCAN_LIMIT)
                .invoke_async(&mut conn)
                .await?;
            total += u64::try_from(n).unwrap_or(0);
            if n < SCAN_LIMIT as i64 {
                return Ok(total);
            }
        }
    }

    async fn cancel(&self, id: &str, reason: &str) -> Result<JobState, JobsError> {
        let mut conn = self.conn.clone();
        // A job's queue never changes: read it, then pass every key of that queue in KEYS (the
        // script checks the queue again).
        let queue: Option<String> = redis::cmd("HGET")
            .arg(self.job_key(id))
            .arg("queue")
            .query_async(&mut conn)
            .await?;
        let Some(queue) = queue else {
            return Err(JobsError::NotFound(id.to_string()));
        };
        let out: Vec<Value> = self
            .cancel
            .key(self.job_key(id))
            .key(self.qkey(&queue, "waiting"))
            .key(self.qkey(&queue, "delayed"))
            .key(self.qkey(&queue, "running"))
            .key(self.qkey(&queue, "dead"))
            .arg(&queue)
            .arg(self.now_arg())
            .arg(reason)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        let state: String = match out.get(1) {
            Some(v) => redis::from_redis_value(v).unwrap_or_default(),
            None => String::new(),
        };
        match int_of(out.first())? {
            -1 => Err(JobsError::NotFound(id.to_string())),
            -2 => Err(JobsError::NotCancellable {
                id: id.to_string(),
                state,
            }),
            _ => JobState::from_str(&state).map_err(|e| JobsError::Corrupt(e.to_string())),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError> {
        let queues = match &filter.queue {
            Some(q) => vec![q.clone()],
            None => self.queues().await?,
        };
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = Vec::new();
        let limit = filter.limit.max(1) as isize;
        for q in &queues {
            let (key, newest_first) = match filter.state {
                None => (self.qkey(q, "all"), true),
                // Waiting is ordered by priority, then age: take the next ones to run.
                Some(JobState::Waiting) => (self.qkey(q, "waiting"), false),
                Some(JobState::Running) => (self.qkey(q, "running"), true),
                Some(JobState::Delayed) => (self.qkey(q, "delayed"), true),
                Some(JobState::Done) => (self.qkey(q, "done"), true),
                Some(JobState::Dead) => (self.qkey(q, "dead"), true),
            };
            let cmd = if newest_first { "ZREVRANGE" } else { "ZRANGE" };
            let mut some: Vec<String> = redis::cmd(cmd)
                .arg(&key)
                .arg(0)
                .arg(limit - 1)
                .query_async(&mut conn)
                .await?;
            ids.append(&mut some);
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(filter.limit);
        let mut jobs = self.load_many(&ids).await?;
        // A job could change state between the two reads; keep the filter honest.
        if let Some(st) = filter.state {
            jobs.retain(|j| j.state == st);
        }
        Ok(jobs)
    }

    async fn show(&self, id: &str) -> Result<Option<Job>, JobsError> {
        self.load(id).await
    }

    async fn purge(&self, retention: Duration) -> Result<u64, JobsError> {
        let mut conn = self.conn.clone();
        let mut total = 0u64;
        for q in self.queues().await? {
            loop {
                let n: i64 = self
                    .purge_batch
                    .key(self.qkey(&q, "done"))
                    .key(self.qkey(&q, "dead"))
                    .key(self.qkey(&q, "all"))
                    .arg(self.job_prefix())
                    .arg(duration_ms(retention))
                    .arg(self.now_arg())
                    .arg(SCAN_LIMIT)
                    .invoke_async(&mut conn)
                    .await?;
                total += u64::try_from(n).unwrap_or(0);
                if n < SCAN_LIMIT as i64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError> {
        let mut conn = self.conn.clone();
        let v: Vec<u64> = self
            .stats
            .key(self.qkey(queue, "waiting"))
            .key(self.qkey(queue, "running"))
            .key(self.qkey(queue, "delayed"))
            .key(self.qkey(queue, "dead"))
            .key(self.qkey(queue, "done"))
            .arg(self.now_arg())
            .invoke_async(&mut conn)
            .await?;
        let [waiting, expired, running, delayed, dead, done] = v[..] else {
            return Err(JobsError::Corrupt(format!(
                "stats returned {} numbers, not 6",
                v.len()
            )));
        };
        Ok(QueueStats {
            waiting: waiting + expired,
            running,
            delayed,
            dead,
            done,
        })
    }

    async fn lease_holders(&self, queue: &str) -> Result<Vec<String>, JobsError> {
        let mut conn = self.conn.clone();
        let mut workers: Vec<String> = self
            .holders
            .key(self.qkey(queue, "running"))
            .arg(self.job_prefix())
            .arg(self.now_arg())
            .arg(10_000)
            .invoke_async(&mut conn)
            .await?;
        workers.sort();
        workers.dedup();
        Ok(workers)
    }

    async fn queues(&self) -> Result<Vec<String>, JobsError> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.queues_key())
            .query_async(&mut conn)
            .await?;
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_split_from_the_url() {
        assert_eq!(
            split_prefix("redis://127.0.0.1:6379/2").unwrap(),
            ("redis://127.0.0.1:6379/2".to_string(), "herd".to_string())
        );
        assert_eq!(
            split_prefix("redis://127.0.0.1:6379?prefix=t1").unwrap(),
            ("redis://127.0.0.1:6379".to_string(), "t1".to_string())
        );
        let err = split_prefix("redis://:hunter2@h:1?bogus=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix=NAME"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn cluster_urls_name_every_node_with_the_credentials() {
        let t = parse_url("redis+cluster://u:pw@127.0.0.1:7001,127.0.0.1:7002/?prefix=x").unwrap();
        assert!(t.cluster);
        assert_eq!(t.prefix, "x");
        assert_eq!(
            t.nodes,
            vec![
                "redis://u:pw@127.0.0.1:7001".to_string(),
                "redis://u:pw@127.0.0.1:7002".to_string()
            ]
        );
        let t = parse_url("rediss+cluster://h1:1").unwrap();
        assert_eq!(t.nodes, vec!["rediss://h1:1".to_string()]);
        let t = parse_url("rediss://:pw@h:6380/3").unwrap();
        assert!(!t.cluster);
        assert_eq!(t.nodes, vec!["rediss://:pw@h:6380/3".to_string()]);
        let err = parse_url("redis+cluster://:pw@h1:1/2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database"), "{err}");
        assert!(!err.contains(":pw@"), "{err}");
    }
}
