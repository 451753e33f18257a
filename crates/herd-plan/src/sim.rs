//! The cache simulation: a trace replayed on a simulated clock through herd-core's own eviction
//! code ([`herd_core::policy::Simulator`]), for a range of budgets and both policies.

use herd_core::policy::{Access, Simulator};
use herd_core::EvictionPolicy;
use serde::Serialize;

use crate::models::ModelSpec;
use crate::traffic::Request;

/// What one budget and policy gives over the trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimResult {
    pub policy: String,
    pub budget: u64,
    pub requests: u64,
    /// Requests answered by a resident model or a load already in progress (the server's
    /// `hits` counter counts both).
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: f64,
    /// Loads (one per miss).
    pub loads: u64,
    pub loads_per_hour: f64,
    pub evictions: u64,
    /// Seconds spent loading in all.
    pub load_seconds: f64,
    /// Added latency from cold loads at the 99th percentile, milliseconds.
    pub p99_added_ms: f64,
    /// Requests for a model larger than the budget (never served at that budget).
    pub too_large: u64,
    /// Requests that would wait longer than the server's request timeout (the server answers
    /// them 504; the simulation keeps their loads, as the server does).
    pub timeouts: u64,
}

/// The server's default request timeout (herd-core's `CoreConfig`).
pub fn default_timeout_secs() -> f64 {
    herd_core::CoreConfig::default()
        .request_timeout
        .as_secs_f64()
}

pub fn policy_name(p: EvictionPolicy) -> &'static str {
    match p {
        EvictionPolicy::Gdsf => "gdsf",
        EvictionPolicy::Lru => "lru",
    }
}

/// Replays `trace` through one cache of `budget` bytes.
pub fn simulate(
    models: &[ModelSpec],
    trace: &[Request],
    policy: EvictionPolicy,
    budget: u64,
) -> SimResult {
    let mut sim: Simulator<usize> = Simulator::new(policy, budget);
    let (mut hits, mut misses, mut evictions, mut too_large) = (0u64, 0u64, 0u64, 0u64);
    let mut load_seconds = 0.0;
    let mut added: Vec<f64> = Vec::with_capacity(trace.len());
    for r in trace {
        let m = &models[r.model];
        match sim.access(r.model, m.charge, m.load_secs, r.at) {
            Access::Hit { wait } => {
                hits += 1;
                added.push(wait);
            }
            Access::Miss { evicted, wait } => {
                misses += 1;
                evictions += evicted.len() as u64;
                load_seconds += m.load_secs;
                added.push(wait);
            }
            Access::TooLarge => {
                too_large += 1;
                added.push(f64::INFINITY);
            }
        }
    }
    let n = trace.len() as u64;
    let limit = default_timeout_secs();
    let timeouts = added.iter().filter(|w| **w > limit).count() as u64;
    let span_h = trace
        .last()
        .map(|r| r.at / 3600.0)
        .unwrap_or(0.0)
        .max(1.0 / 3600.0);
    added.sort_by(|a, b| a.total_cmp(b));
    let p99 = if added.is_empty() {
        0.0
    } else {
        added[((added.len() - 1) as f64 * 0.99).round() as usize]
    };
    SimResult {
        policy: policy_name(policy).into(),
        budget,
        requests: n,
        hits,
        misses,
        hit_ratio: hits as f64 / n.max(1) as f64,
        loads: misses,
        loads_per_hour: misses as f64 / span_h,
        evictions,
        load_seconds,
        p99_added_ms: p99 * 1e3,
        too_large,
        timeouts,
    }
}

/// The budgets simulated when the plan names none: shares of the fleet's total charge (never
/// below the largest model), plus `extra` (one machine's budget).
pub fn default_budgets(models: &[ModelSpec], extra: &[u64]) -> Vec<u64> {
    let total: u64 = models.iter().map(|m| m.charge).sum();
    let largest = models.iter().map(|m| m.charge).max().unwrap_or(1);
    let mut v: Vec<u64> = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]
        .iter()
        .map(|s| ((total as f64 * s) as u64).max(largest))
        .chain(extra.iter().map(|b| (*b).min(total).max(largest)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_for_everything_loads_each_model_once() {
        let models: Vec<ModelSpec> = (0..3)
            .map(|i| ModelSpec {
                name: format!("m{i}"),
                charge: 100,
                load_secs: 0.5,
            })
            .collect();
        let trace: Vec<Request> = (0..300)
            .map(|i| Request {
                at: i as f64,
                model: i % 3,
            })
            .collect();
        let r = simulate(&models, &trace, EvictionPolicy::Gdsf, 300);
        assert_eq!((r.hits, r.misses, r.evictions), (297, 3, 0));
        assert_eq!(r.p99_added_ms, 0.0);
        // Room for one: every request is a miss under either policy.
        let r = simulate(&models, &trace, EvictionPolicy::Lru, 100);
        assert_eq!(r.misses, 300);
        assert_eq!(r.p99_added_ms, 500.0);
        assert!((r.load_seconds - 150.0).abs() < 1e-9);
        assert_eq!(default_budgets(&models, &[150]), vec![100, 150, 225, 300]);
    }
}
