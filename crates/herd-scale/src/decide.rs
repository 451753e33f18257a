//! The pure decision: `decide(observed, state, policy, now) -> (plan, new_state)`.
//!
//! No I/O and no clock: the caller passes `now`, so tests drive time by hand. Every pool gets a
//! [`Decision`] (inputs, current, desired, reason) whether or not it changes; changes become
//! [`Action`]s for a backend to apply.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use jiff::Timestamp;
use serde::Serialize;

use crate::policy::{Bounds, Policy, ServingPool, WorkerPool};

/// One worker as seen now: its id (process or pod) and whether it holds a job lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerObs {
    pub id: String,
    pub busy: bool,
}

/// A queue and its workers as seen now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueObs {
    /// Jobs ready to be claimed.
    pub waiting: u64,
    /// Jobs claimed and not finished.
    pub running: u64,
    /// Workers of this pool that are alive (started, not yet asked to stop).
    pub workers: Vec<WorkerObs>,
}

/// One serving instance's `/metrics`; `None` where a value could not be read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceObs {
    pub id: String,
    /// Sum of `herd_infer_requests_total` over all labels (a counter).
    pub requests_total: Option<f64>,
    pub memory_used_bytes: Option<f64>,
    pub memory_budget_bytes: Option<f64>,
}

/// A serving pool as seen now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServingObs {
    pub instances: Vec<InstanceObs>,
}

/// Everything one tick observed. A pool missing here (its observation failed) is left alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    pub queues: BTreeMap<String, QueueObs>,
    pub serving: BTreeMap<String, ServingObs>,
}

/// What a backend must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Start `to - from` workers for `queue`.
    StartWorkers { queue: String, from: u32, to: u32 },
    /// Stop exactly the idle workers in `stop`; `keep` are the others (busy first in line to be
    /// protected), so a backend that cannot pick victims directly can rank them.
    StopWorkers {
        queue: String,
        from: u32,
        to: u32,
        stop: Vec<String>,
        keep: Vec<String>,
    },
    /// Set the serving pool's replica count.
    ScaleServing { pool: String, from: u32, to: u32 },
    /// Set maxUnavailable of the flexible-pod PodDisruptionBudget.
    SetFlexibleMaxUnavailable {
        value: u32,
        schedule: Option<String>,
    },
}

impl Action {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::StartWorkers { .. } => "start_workers",
            Action::StopWorkers { .. } => "stop_workers",
            Action::ScaleServing { .. } => "scale_serving",
            Action::SetFlexibleMaxUnavailable { .. } => "set_flexible_max_unavailable",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::StartWorkers { queue, from, to } => {
                write!(f, "workers[{queue}]: start {} ({from} -> {to})", to - from)
            }
            Action::StopWorkers {
                queue,
                from,
                to,
                stop,
                ..
            } => write!(
                f,
                "workers[{queue}]: stop idle {} ({from} -> {to})",
                stop.join(",")
            ),
            Action::ScaleServing { pool, from, to } => {
                write!(f, "serving[{pool}]: replicas {from} -> {to}")
            }
            Action::SetFlexibleMaxUnavailable { value, schedule } => write!(
                f,
                "pdb[flexible]: maxUnavailable = {value} (schedule: {})",
                schedule.as_deref().unwrap_or("none")
            ),
        }
    }
}

/// The reasoning for one pool this tick, logged and printed by `--dry-run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `workers` or `serving` or `pdb`.
    pub kind: &'static str,
    pub pool: String,
    pub current: u32,
    pub desired: u32,
    /// The inputs, e.g. `waiting=12 running=3 busy=2 jobs_per_worker=10 min=0 max=8`.
    pub inputs: String,
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]: {} -> {} ({}) [{}]",
            self.kind, self.pool, self.current, self.desired, self.reason, self.inputs
        )
    }
}

/// The result of one tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub decisions: Vec<Decision>,
    /// The schedule window open now, if any.
    pub schedule: Option<String>,
}

/// Memory of a worker pool across ticks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerPoolState {
    /// Last tick at which jobs were waiting or running (or the first tick seen).
    pub last_active: Option<Timestamp>,
    /// Last tick at which workers were started.
    pub last_scale_up: Option<Timestamp>,
}

/// Memory of a serving pool across ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServingPoolState {
    /// The previous counter sample per instance, to turn counters into a rate.
    pub last_sample: Option<(Timestamp, BTreeMap<String, f64>)>,
    /// Recommendations of the stabilisation window, oldest first.
    pub recommendations: VecDeque<(Timestamp, u32)>,
}

/// What `decide` remembers between ticks. Start with `State::default()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub workers: BTreeMap<String, WorkerPoolState>,
    pub serving: BTreeMap<String, ServingPoolState>,
    /// The flexible PDB value last decided (None: never, so the first tick sets it).
    pub flexible_max_unavailable: Option<u32>,
}

fn secs_since(now: Timestamp, then: Timestamp) -> f64 {
    now.duration_since(then).as_secs_f64()
}

fn bounds(min: u32, max: u32, over: Option<&Bounds>) -> (u32, u32) {
    let min = over.and_then(|b| b.min).unwrap_or(min);
    let max = over.and_then(|b| b.max).unwrap_or(max);
    // A schedule may raise min above the base max: the larger wins so the result stays valid.
    (min, max.max(min))
}

/// Decides every pool for one tick. Pure: same inputs, same outputs.
pub fn decide(
    observed: &Observed,
    state: &State,
    policy: &Policy,
    now: Timestamp,
) -> (Plan, State) {
    let mut plan = Plan::default();
    let mut next = state.clone();
    let schedule = policy.active_schedule(now);
    plan.schedule = schedule.map(|s| s.spec.name.clone());

    for pool in &policy.workers {
        let over = schedule.and_then(|s| s.spec.workers.get(&pool.queue));
        let Some(obs) = observed.queues.get(&pool.queue) else {
            plan.decisions.push(Decision {
                kind: "workers",
                pool: pool.queue.clone(),
                current: 0,
                desired: 0,
                inputs: "unobserved".into(),
                reason: "queue not observed this tick; leaving the pool alone".into(),
            });
            continue;
        };
        let st = next.workers.entry(pool.queue.clone()).or_default();
        decide_workers(pool, over, obs, st, now, &mut plan);
    }

    for pool in &policy.serving {
        let over = schedule.and_then(|s| s.spec.serving.get(&pool.name));
        let Some(obs) = observed.serving.get(&pool.name) else {
            plan.decisions.push(Decision {
                kind: "serving",
                pool: pool.name.clone(),
                current: 0,
                desired: 0,
                inputs: "unobserved".into(),
                reason: "pool not observed this tick; leaving it alone".into(),
            });
            continue;
        };
        let st = next.serving.entry(pool.name.clone()).or_default();
        decide_serving(pool, over, obs, st, now, &mut plan);
    }

    let pdb = schedule
        .and_then(|s| s.spec.flexible_max_unavailable)
        .unwrap_or(policy.defaults.flexible_max_unavailable);
    let current = state.flexible_max_unavailable;
    plan.decisions.push(Decision {
        kind: "pdb",
        pool: "flexible".into(),
        current: current.unwrap_or(pdb),
        desired: pdb,
        inputs: format!(
            "schedule={} default={}",
            plan.schedule.as_deref().unwrap_or("none"),
            policy.defaults.flexible_max_unavailable
        ),
        reason: if current == Some(pdb) {
            "unchanged".into()
        } else {
            "schedule selects maxUnavailable".into()
        },
    });
    if current != Some(pdb) {
        plan.actions.push(Action::SetFlexibleMaxUnavailable {
            value: pdb,
            schedule: plan.schedule.clone(),
        });
        next.flexible_max_unavailable = Some(pdb);
    }

    (plan, next)
}

fn decide_workers(
    pool: &WorkerPool,
    over: Option<&Bounds>,
    obs: &QueueObs,
    st: &mut WorkerPoolState,
    now: Timestamp,
    plan: &mut Plan,
) {
    let (min, max) = bounds(pool.min, pool.max, over);
    let current = obs.workers.len() as u32;
    let busy = obs.workers.iter().filter(|w| w.busy).count() as u32;
    let active = obs.waiting > 0 || obs.running > 0;
    if active || st.last_active.is_none() {
        // The first tick counts as activity: never scale to zero before one full cooldown.
        st.last_active = Some(now);
    }
    let wanted = obs.waiting.div_ceil(u64::from(pool.jobs_per_worker));
    let target = wanted.clamp(u64::from(min), u64::from(max)) as u32;
    let cooldown = pool.cooldown.0.as_secs_f64();
    let inputs = format!(
        "waiting={} running={} workers={} busy={} jobs_per_worker={} min={} max={} cooldown={}s",
        obs.waiting, obs.running, current, busy, pool.jobs_per_worker, min, max, cooldown
    );
    let mut decision = Decision {
        kind: "workers",
        pool: pool.queue.clone(),
        current,
        desired: current,
        inputs,
        reason: String::new(),
    };

    if target > current {
        decision.desired = target;
        decision.reason = if wanted > u64::from(max) {
            format!("ceil(waiting/jobs_per_worker)={wanted}, capped at max")
        } else if target == min && wanted < u64::from(min) {
            "raise to min".into()
        } else {
            format!("ceil(waiting/jobs_per_worker)={wanted}")
        };
        st.last_scale_up = Some(now);
        plan.actions.push(Action::StartWorkers {
            queue: pool.queue.clone(),
            from: current,
            to: target,
        });
    } else if target < current {
        // Only idle workers may be stopped; busy ones finish their job first.
        let idle: Vec<&WorkerObs> = obs.workers.iter().filter(|w| !w.busy).collect();
        let since_active = st.last_active.map_or(f64::INFINITY, |t| secs_since(now, t));
        let since_up = st
            .last_scale_up
            .map_or(f64::INFINITY, |t| secs_since(now, t));
        let blocked = if target == 0 {
            if obs.waiting > 0 || obs.running > 0 {
                Some(format!("not to zero: {} job(s) running", obs.running))
            } else if since_active < cooldown {
                Some(format!(
                    "queue empty; cooldown {:.0}s left before scaling to zero",
                    cooldown - since_active
                ))
            } else {
                None
            }
        } else if since_up < cooldown {
            Some(format!(
                "cooldown {:.0}s left since the last scale-up",
                cooldown - since_up
            ))
        } else {
            None
        };
        match blocked {
            Some(why) => decision.reason = why,
            None if idle.is_empty() => {
                decision.reason = format!("want {target}, but every worker holds a lease");
            }
            None => {
                let excess = (current - target) as usize;
                // Stop the newest idle workers first (ids sort by start order in both backends
                // only loosely, so this is a stable tie-break rather than a promise).
                let mut victims: Vec<String> = idle.iter().map(|w| w.id.clone()).collect();
                victims.sort();
                victims.reverse();
                victims.truncate(excess);
                let stop: BTreeSet<&String> = victims.iter().collect();
                let keep: Vec<String> = obs
                    .workers
                    .iter()
                    .filter(|w| !stop.contains(&w.id))
                    .map(|w| w.id.clone())
                    .collect();
                let to = current - victims.len() as u32;
                decision.desired = to;
                decision.reason = if to == 0 {
                    "queue empty, nothing running, cooldown passed: scale to zero".into()
                } else if to > target {
                    format!(
                        "want {target}; only {} idle worker(s) can stop",
                        victims.len()
                    )
                } else {
                    format!("ceil(waiting/jobs_per_worker)={wanted}")
                };
                plan.actions.push(Action::StopWorkers {
                    queue: pool.queue.clone(),
                    from: current,
                    to,
                    stop: victims,
                    keep,
                });
            }
        }
    } else {
        decision.reason = "at target".into();
    }
    plan.decisions.push(decision);
}

/// Rate of a set of counters between two samples, per minute. Instances only in one sample are
/// ignored; a counter that went down was reset (restart), so its whole new value is the delta.
fn rate_per_minute(
    prev: &(Timestamp, BTreeMap<String, f64>),
    now: Timestamp,
    cur: &BTreeMap<String, f64>,
) -> Option<f64> {
    let dt = secs_since(now, prev.0);
    if dt <= 0.0 {
        return None;
    }
    let mut delta = 0.0;
    let mut any = false;
    for (id, v) in cur {
        if let Some(p) = prev.1.get(id) {
            any = true;
            delta += if v >= p { v - p } else { *v };
        }
    }
    any.then_some(delta / dt * 60.0)
}

fn decide_serving(
    pool: &ServingPool,
    over: Option<&Bounds>,
    obs: &ServingObs,
    st: &mut ServingPoolState,
    now: Timestamp,
    plan: &mut Plan,
) {
    let (min, max) = bounds(pool.min, pool.max, over);
    let current = obs.instances.len() as u32;
    let tol = pool.tolerance;

    // Signal 1: invocations per instance per minute.
    let counters: BTreeMap<String, f64> = obs
        .instances
        .iter()
        .filter_map(|i| i.requests_total.map(|v| (i.id.clone(), v)))
        .collect();
    if st.last_sample.is_none() && st.recommendations.is_empty() {
        // First sight of the pool: its current size counts as a recommendation, so a restarted
        // autoscaler waits one full window before scaling down what it found.
        st.recommendations.push_back((now, current.clamp(min, max)));
    }
    let rate = st
        .last_sample
        .as_ref()
        .and_then(|prev| rate_per_minute(prev, now, &counters));
    st.last_sample = Some((now, counters));
    let by_invocations = rate.map(|r| {
        if current == 0 {
            (r / pool.target_invocations_per_minute).ceil() as u32
        } else {
            let ratio = r / f64::from(current) / pool.target_invocations_per_minute;
            if (ratio - 1.0).abs() <= tol {
                current
            } else {
                (r / pool.target_invocations_per_minute).ceil() as u32
            }
        }
    });

    // Signal 2: memory used / budget, like the HPA's utilisation.
    let (used, budget) = obs
        .instances
        .iter()
        .filter_map(|i| Some((i.memory_used_bytes?, i.memory_budget_bytes?)))
        .fold((0.0, 0.0), |(u, b), (iu, ib)| (u + iu, b + ib));
    let utilisation = (budget > 0.0).then(|| used / budget);
    let by_memory = utilisation.filter(|_| current > 0).map(|u| {
        let ratio = u / pool.target_memory_utilisation;
        if (ratio - 1.0).abs() <= tol {
            current
        } else {
            (f64::from(current) * ratio).ceil() as u32
        }
    });

    let raw = match (by_invocations, by_memory) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => current,
    };
    let recommendation = raw.clamp(min, max);

    // Stabilisation: scale up at once, scale down to the highest recommendation of the window.
    let window = pool.stabilisation_window.0.as_secs_f64();
    st.recommendations.push_back((now, recommendation));
    while let Some(&(t, _)) = st.recommendations.front() {
        if secs_since(now, t) > window {
            st.recommendations.pop_front();
        } else {
            break;
        }
    }
    let highest = st
        .recommendations
        .iter()
        .map(|&(_, r)| r)
        .max()
        .unwrap_or(recommendation);
    let desired = if recommendation > current {
        recommendation
    } else if current > highest {
        highest
    } else {
        current
    }
    .clamp(min, max);

    let inputs = format!(
        "instances={current} rate_per_min={} target_per_instance={} memory_utilisation={} target_utilisation={} by_invocations={} by_memory={} tolerance={tol} min={min} max={max}",
        rate.map_or("n/a".into(), |r| format!("{r:.1}")),
        pool.target_invocations_per_minute,
        utilisation.map_or("n/a".into(), |u| format!("{u:.3}")),
        pool.target_memory_utilisation,
        by_invocations.map_or("n/a".into(), |v| v.to_string()),
        by_memory.map_or("n/a".into(), |v| v.to_string()),
    );
    let reason = if desired == current {
        if raw > max && desired == max {
            format!("the signals want {raw}; capped at max")
        } else if recommendation < current {
            format!("stabilising: highest recommendation in the last {window:.0}s is {highest}")
        } else {
            "within tolerance / at target".into()
        }
    } else if desired > current {
        if current < min {
            "raise to min".into()
        } else {
            "larger of the two signals".into()
        }
    } else {
        format!("scale down to the highest recommendation of the last {window:.0}s")
    };
    plan.decisions.push(Decision {
        kind: "serving",
        pool: pool.name.clone(),
        current,
        desired,
        inputs,
        reason,
    });
    if desired != current {
        plan.actions.push(Action::ScaleServing {
            pool: pool.name.clone(),
            from: current,
            to: desired,
        });
    }
}

#[cfg(test)]
mod tests;
