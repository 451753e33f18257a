//! The Redis backend (`redis://HOST:PORT[/DB][?prefix=NAME]`).
//!
//! The reliable-queue pattern with leases, every state change one Lua script (atomic in Redis):
//! * `<p>:job:<id>` a hash with the job record (spec JSON, state, attempts, lease token...);
//! * `<p>:q:<queue>:waiting` sorted set, score = -priority (ties: job id, i.e. enqueue order);
//! * `<p>:q:<queue>:running` sorted set, score = lease expiry (ms) — expired members are moved
//!   back to waiting (or to dead after the last attempt) by the next claim, like `XAUTOCLAIM`;
//! * `<p>:q:<queue>:delayed` sorted set, score = retry time — due members move to waiting;
//! * `<p>:q:<queue>:done` / `:dead` sorted sets, score = finish time (for retention);
//! * `<p>:q:<queue>:all` sorted set of every job by creation time (for listing);
//! * `<p>:queues` the set of queue names.
//!
//! The default prefix is `herd`; `?prefix=` keeps several installations (or test runs) apart.
//! Keys are built inside the scripts, so this needs a single Redis (not Redis Cluster).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};

use crate::queue::duration_ms;
use crate::{
    backoff_delay_ms, new_job_id, new_token, Clock, FailOutcome, Failure, Job, JobId, JobOutcome,
    JobSpec, JobState, JobsError, Lease, ListFilter, Progress, Queue, QueueStats,
};

const CLAIM: &str = r#"
local P = ARGV[1]
local now = tonumber(ARGV[2])
local nows = ARGV[2]
local worker = ARGV[3]
local token = ARGV[4]
local expires = ARGV[5]
local nq = tonumber(ARGV[6])
local best_id, best_q, best_score
for i = 1, nq do
  local q = ARGV[6 + i]
  local qk = P .. ':q:' .. q
  local due = redis.call('ZRANGEBYSCORE', qk .. ':delayed', '-inf', now)
  for _, id in ipairs(due) do
    local k = P .. ':job:' .. id
    local prio = tonumber(redis.call('HGET', k, 'priority') or '0')
    redis.call('ZREM', qk .. ':delayed', id)
    redis.call('ZADD', qk .. ':waiting', -prio, id)
    redis.call('HSET', k, 'state', 'waiting')
  end
  local expired = redis.call('ZRANGEBYSCORE', qk .. ':running', '-inf', now)
  for _, id in ipairs(expired) do
    local k = P .. ':job:' .. id
    redis.call('ZREM', qk .. ':running', id)
    local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0')
    local maxa = tonumber(redis.call('HGET', k, 'max_attempts') or '1')
    if attempts >= maxa then
      local last = redis.call('HGET', k, 'last_error') or ''
      redis.call('HSET', k, 'state', 'dead', 'finished_ms', nows, 'updated_ms', nows,
        'last_error', 'lease expired on the last attempt (the worker died or hung); ' .. last)
      redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
      redis.call('ZADD', qk .. ':dead', now, id)
    else
      local prio = tonumber(redis.call('HGET', k, 'priority') or '0')
      redis.call('ZADD', qk .. ':waiting', -prio, id)
      redis.call('HSET', k, 'state', 'waiting')
      redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
    end
  end
  local top = redis.call('ZRANGE', qk .. ':waiting', 0, 0, 'WITHSCORES')
  if top[1] then
    local score = tonumber(top[2])
    if best_id == nil or score < best_score or (score == best_score and top[1] < best_id) then
      best_id = top[1]
      best_q = q
      best_score = score
    end
  end
end
if not best_id then
  return false
end
local qk = P .. ':q:' .. best_q
local k = P .. ':job:' .. best_id
redis.call('ZREM', qk .. ':waiting', best_id)
redis.call('ZADD', qk .. ':running', tonumber(expires), best_id)
redis.call('HINCRBY', k, 'attempts', 1)
redis.call('HSET', k, 'state', 'running', 'worker_id', worker, 'lease_token', token,
  'lease_expires_ms', expires, 'updated_ms', nows)
local out = redis.call('HGETALL', k)
table.insert(out, 'id')
table.insert(out, best_id)
return out
"#;

/// Common prologue: the lease must still be this token's. Returns 0 when lost.
const CHECK_LEASE: &str = r#"
local P = ARGV[1]
local id = ARGV[2]
local k = P .. ':job:' .. id
if redis.call('HGET', k, 'state') ~= 'running' or redis.call('HGET', k, 'lease_token') ~= ARGV[3] then
  return 0
end
local qk = P .. ':q:' .. redis.call('HGET', k, 'queue')
"#;

const RENEW: &str = r#"
-- ARGV: prefix, id, token, now, expires, progress-or-empty
redis.call('ZADD', qk .. ':running', tonumber(ARGV[5]), id)
redis.call('HSET', k, 'lease_expires_ms', ARGV[5], 'updated_ms', ARGV[4])
if ARGV[6] ~= '' then
  redis.call('HSET', k, 'progress', ARGV[6])
end
return 1
"#;

const ACK: &str = r#"
-- ARGV: prefix, id, token, now, result
redis.call('ZREM', qk .. ':running', id)
redis.call('ZADD', qk .. ':done', tonumber(ARGV[4]), id)
redis.call('HSET', k, 'state', 'done', 'finished_ms', ARGV[4], 'updated_ms', ARGV[4], 'result', ARGV[5])
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
return 1
"#;

const FAIL: &str = r#"
-- ARGV: prefix, id, token, now, message, retryable (1/0), run_at
redis.call('ZREM', qk .. ':running', id)
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0')
local maxa = tonumber(redis.call('HGET', k, 'max_attempts') or '1')
if ARGV[6] ~= '1' or attempts >= maxa then
  redis.call('ZADD', qk .. ':dead', tonumber(ARGV[4]), id)
  redis.call('HSET', k, 'state', 'dead', 'finished_ms', ARGV[4], 'updated_ms', ARGV[4], 'last_error', ARGV[5])
  return 2
end
redis.call('ZADD', qk .. ':delayed', tonumber(ARGV[7]), id)
redis.call('HSET', k, 'state', 'delayed', 'run_at_ms', ARGV[7], 'updated_ms', ARGV[4], 'last_error', ARGV[5])
return 1
"#;

const RELEASE: &str = r#"
-- ARGV: prefix, id, token, now
redis.call('ZREM', qk .. ':running', id)
local prio = tonumber(redis.call('HGET', k, 'priority') or '0')
redis.call('ZADD', qk .. ':waiting', -prio, id)
local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0')
if attempts > 0 then
  redis.call('HINCRBY', k, 'attempts', -1)
end
redis.call('HSET', k, 'state', 'waiting', 'run_at_ms', ARGV[4], 'updated_ms', ARGV[4])
redis.call('HDEL', k, 'lease_token', 'lease_expires_ms')
return 1
"#;

const REQUEUE: &str = r#"
-- ARGV: prefix, queue, id-or-empty, now. Returns {count} or {-1} (not found) or {-2, state}.
local P = ARGV[1]
local qk = P .. ':q:' .. ARGV[2]
local ids
if ARGV[3] ~= '' then
  local k = P .. ':job:' .. ARGV[3]
  local q = redis.call('HGET', k, 'queue')
  if not q or q ~= ARGV[2] then
    return {-1}
  end
  local state = redis.call('HGET', k, 'state')
  if state ~= 'dead' then
    return {-2, state}
  end
  ids = {ARGV[3]}
else
  ids = redis.call('ZRANGE', qk .. ':dead', 0, -1)
end
for _, id in ipairs(ids) do
  local k = P .. ':job:' .. id
  local prio = tonumber(redis.call('HGET', k, 'priority') or '0')
  redis.call('ZREM', qk .. ':dead', id)
  redis.call('ZADD', qk .. ':waiting', -prio, id)
  redis.call('HSET', k, 'state', 'waiting', 'attempts', 0, 'run_at_ms', ARGV[4], 'updated_ms', ARGV[4])
  redis.call('HDEL', k, 'finished_ms', 'worker_id')
end
return {#ids}
"#;

const PURGE: &str = r#"
-- ARGV: prefix, cutoff (exclusive)
local P = ARGV[1]
local n = 0
for _, q in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local qk = P .. ':q:' .. q
  for _, st in ipairs({'done', 'dead'}) do
    local ids = redis.call('ZRANGEBYSCORE', qk .. ':' .. st, '-inf', '(' .. ARGV[2])
    for _, id in ipairs(ids) do
      redis.call('DEL', P .. ':job:' .. id)
      redis.call('ZREM', qk .. ':' .. st, id)
      redis.call('ZREM', qk .. ':all', id)
      n = n + 1
    end
  end
end
return n
"#;

/// The Redis backend.
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    clock: Arc<dyn Clock>,
    claim: Script,
    renew: Script,
    ack: Script,
    fail: Script,
    release: Script,
    requeue: Script,
    purge: Script,
}

impl RedisQueue {
    /// Connects to `url` (`redis://HOST:PORT[/DB][?prefix=NAME]`).
    pub async fn open(url: &str, clock: Arc<dyn Clock>) -> Result<Self, JobsError> {
        let (base, prefix) = split_prefix(url)?;
        let client = redis::Client::open(base.as_str()).map_err(|e| JobsError::InvalidUrl {
            url: url.to_string(),
            reason: format!("{e}; expected redis://HOST:PORT[/DB]"),
        })?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(30))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        let with_check = |body: &str| Script::new(&format!("{CHECK_LEASE}\n{body}"));
        Ok(RedisQueue {
            conn,
            prefix,
            clock,
            claim: Script::new(CLAIM),
            renew: with_check(RENEW),
            ack: with_check(ACK),
            fail: with_check(FAIL),
            release: with_check(RELEASE),
            requeue: Script::new(REQUEUE),
            purge: Script::new(PURGE),
        })
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }
    fn qkey(&self, queue: &str, what: &str) -> String {
        format!("{}:q:{queue}:{what}", self.prefix)
    }

    async fn load(&self, id: &str) -> Result<Option<Job>, JobsError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, String> = conn.hgetall(self.job_key(id)).await?;
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
            pipe.hgetall(self.job_key(id));
        }
        let mut conn = self.conn.clone();
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, map) in ids.iter().zip(maps) {
            if !map.is_empty() {
                jobs.push(hash_to_job(id, &map)?);
            }
        }
        Ok(jobs)
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
                    url: url.to_string(),
                    reason: format!(
                        "unknown or invalid parameter '{pair}': the only one is prefix=NAME (letters, digits, - _ . :)"
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

#[async_trait]
impl Queue for RedisQueue {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, spec: JobSpec) -> Result<JobId, JobsError> {
        spec.validate()?;
        let now = self.clock.now_ms();
        let id = new_job_id(now);
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        let fields: Vec<(&str, String)> = vec![
            ("spec", spec_json),
            ("queue", spec.queue.clone()),
            ("state", "waiting".into()),
            ("priority", spec.priority.to_string()),
            ("attempts", "0".into()),
            ("max_attempts", spec.max_attempts.to_string()),
            ("created_ms", now.to_string()),
            ("updated_ms", now.to_string()),
            ("run_at_ms", now.to_string()),
        ];
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(self.job_key(&id), &fields)
            .ignore()
            .zadd(
                self.qkey(&spec.queue, "waiting"),
                &id,
                -i64::from(spec.priority),
            )
            .ignore()
            .zadd(self.qkey(&spec.queue, "all"), &id, now)
            .ignore()
            .sadd(format!("{}:queues", self.prefix), &spec.queue)
            .ignore()
            .query_async(&mut conn)
            .await?;
        metrics::counter!("herd_jobs_enqueued_total", "queue" => spec.queue.clone()).increment(1);
        Ok(id)
    }

    async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        lease: Duration,
    ) -> Result<Option<Lease>, JobsError> {
        if queues.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let token = new_token();
        let expires = now.saturating_add(duration_ms(lease));
        let mut inv = self.claim.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(now)
            .arg(worker_id)
            .arg(&token)
            .arg(expires)
            .arg(queues.len());
        for q in queues {
            inv.arg(q);
        }
        let mut conn = self.conn.clone();
        let out: Value = inv.invoke_async(&mut conn).await?;
        let map: HashMap<String, String> = match out {
            Value::Nil | Value::Boolean(false) => return Ok(None),
            other => redis::from_redis_value(&other)?,
        };
        let Some(id) = map.get("id").cloned() else {
            return Err(JobsError::Corrupt("claim returned no job id".into()));
        };
        let job = hash_to_job(&id, &map)?;
        Ok(Some(Lease {
            job,
            token,
            worker_id: worker_id.to_string(),
            expires_ms: expires,
        }))
    }

    async fn renew(
        &self,
        lease: &mut Lease,
        extend: Duration,
        progress: Option<&Progress>,
    ) -> Result<(), JobsError> {
        let now = self.clock.now_ms();
        let expires = now.saturating_add(duration_ms(extend));
        let progress = progress
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default();
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .renew
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(&lease.job.id)
            .arg(&lease.token)
            .arg(now)
            .arg(expires)
            .arg(progress)
            .invoke_async(&mut conn)
            .await?;
        if ok == 0 {
            return Err(lease_lost(lease));
        }
        lease.expires_ms = expires;
        Ok(())
    }

    async fn ack(&self, lease: &Lease, outcome: &JobOutcome) -> Result<(), JobsError> {
        let now = self.clock.now_ms();
        let result =
            serde_json::to_string(outcome).map_err(|e| JobsError::InvalidSpec(e.to_string()))?;
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .ack
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(&lease.job.id)
            .arg(&lease.token)
            .arg(now)
            .arg(result)
            .invoke_async(&mut conn)
            .await?;
        if ok == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, JobsError> {
        let now = self.clock.now_ms();
        // The lease's attempts equal the stored ones while the token matches (only a claim,
        // which changes the token, changes attempts).
        let delay = backoff_delay_ms(
            &lease.job.spec.backoff,
            lease.job.attempts,
            &mut rand::thread_rng(),
        );
        let run_at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX / 4));
        let mut conn = self.conn.clone();
        let r: i64 = self
            .fail
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(&lease.job.id)
            .arg(&lease.token)
            .arg(now)
            .arg(&failure.message)
            .arg(if failure.retryable { "1" } else { "0" })
            .arg(run_at)
            .invoke_async(&mut conn)
            .await?;
        match r {
            0 => Err(lease_lost(lease)),
            2 => Ok(FailOutcome::Dead),
            _ => Ok(FailOutcome::Retry { run_at_ms: run_at }),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), JobsError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .release
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(&lease.job.id)
            .arg(&lease.token)
            .arg(now)
            .invoke_async(&mut conn)
            .await?;
        if ok == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn requeue_dead(&self, queue: &str, id: Option<&str>) -> Result<u64, JobsError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn.clone();
        let out: Vec<Value> = self
            .requeue
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(queue)
            .arg(id.unwrap_or(""))
            .arg(now)
            .invoke_async(&mut conn)
            .await?;
        let code: i64 = match out.first() {
            Some(v) => redis::from_redis_value(v)?,
            None => return Err(JobsError::Corrupt("requeue returned nothing".into())),
        };
        let id = id.unwrap_or_default().to_string();
        match code {
            -1 => Err(JobsError::NotFound(format!("{id} (in queue {queue})"))),
            -2 => {
                let state: String = match out.get(1) {
                    Some(v) => redis::from_redis_value(v).unwrap_or_default(),
                    None => String::new(),
                };
                Err(JobsError::NotDead { id, state })
            }
            n => Ok(u64::try_from(n).unwrap_or(0)),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Job>, JobsError> {
        let queues = match &filter.queue {
            Some(q) => vec![q.clone()],
            None => self.queues().await?,
        };
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = Vec::new();
        for q in &queues {
            let key = match filter.state {
                None => self.qkey(q, "all"),
                Some(JobState::Waiting) => self.qkey(q, "waiting"),
                Some(JobState::Running) => self.qkey(q, "running"),
                Some(JobState::Delayed) => self.qkey(q, "delayed"),
                Some(JobState::Done) => self.qkey(q, "done"),
                Some(JobState::Dead) => self.qkey(q, "dead"),
            };
            let mut some: Vec<String> = conn.zrange(&key, 0, -1).await?;
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
        let cutoff = self.clock.now_ms().saturating_sub(duration_ms(retention));
        let mut conn = self.conn.clone();
        let n: i64 = self
            .purge
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(cutoff)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, JobsError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn.clone();
        let (waiting, expired, running, delayed, dead, done): (u64, u64, u64, u64, u64, u64) =
            redis::pipe()
                .zcard(self.qkey(queue, "waiting"))
                .zcount(self.qkey(queue, "running"), "-inf", now)
                .zcount(self.qkey(queue, "running"), format!("({now}"), "+inf")
                .zcard(self.qkey(queue, "delayed"))
                .zcard(self.qkey(queue, "dead"))
                .zcard(self.qkey(queue, "done"))
                .query_async(&mut conn)
                .await?;
        Ok(QueueStats {
            waiting: waiting + expired,
            running,
            delayed,
            dead,
            done,
        })
    }

    async fn lease_holders(&self, queue: &str) -> Result<Vec<String>, JobsError> {
        let now = self.clock.now_ms();
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrangebyscore(self.qkey(queue, "running"), format!("({now}"), "+inf")
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.job_key(id), "worker_id");
        }
        let workers: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        let mut workers: Vec<String> = workers.into_iter().flatten().collect();
        workers.sort();
        workers.dedup();
        Ok(workers)
    }

    async fn queues(&self) -> Result<Vec<String>, JobsError> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = conn.smembers(format!("{}:queues", self.prefix)).await?;
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
        let err = split_prefix("redis://h:1?bogus=1").unwrap_err().to_string();
        assert!(err.contains("prefix=NAME"), "{err}");
    }
}
