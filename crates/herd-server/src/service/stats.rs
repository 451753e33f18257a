//! Per model version request statistics in the shape of Triton's statistics extension
//! (`GET /v2/models/stats`): counts and cumulative nanoseconds of successes, failures, queueing
//! and compute, and per batch size the executions a model ran.
//!
//! Executions are derived from what each request saw: a request of `r` rows that ran in a batch
//! of `b` rows is `r / b` of that execution, so the shares of all requests of one batch add up
//! to exactly one execution.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use herd_core::Timing;
use parking_lot::Mutex;
use serde::Serialize;

/// `{"count": n, "ns": total}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Duration {
    pub count: u64,
    pub ns: u64,
}

impl Duration {
    fn add(&mut self, d: std::time::Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InferStats {
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
    pub cache_hit: Duration,
    pub cache_miss: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchStats {
    pub batch_size: u64,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

/// One entry of `model_stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last successful inference (0: none yet).
    pub last_inference: u64,
    /// Rows inferred.
    pub inference_count: u64,
    /// Model executions (batches).
    pub execution_count: u64,
    pub inference_stats: InferStats,
    pub batch_stats: Vec<BatchStats>,
}

#[derive(Default)]
struct Acc {
    last_inference: u64,
    rows: u64,
    executions: f64,
    infer: InferStats,
    /// batch size -> (executions, inference ns)
    batches: BTreeMap<u64, (f64, f64)>,
}

/// All versions' statistics.
#[derive(Default)]
pub struct Stats {
    by_key: Mutex<HashMap<(String, String), Acc>>,
}

impl Stats {
    pub fn success(&self, model: &str, version: &str, rows: u64, t: &Timing, batch_rows: usize) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut m = self.by_key.lock();
        let a = m
            .entry((model.to_string(), version.to_string()))
            .or_default();
        a.last_inference = now;
        a.rows += rows;
        a.infer.success.add(t.total);
        a.infer.queue.add(t.queue);
        a.infer.compute_infer.add(t.inference);
        a.infer.compute_input.add(std::time::Duration::ZERO);
        a.infer.compute_output.add(std::time::Duration::ZERO);
        let b = batch_rows.max(1) as u64;
        let share = (rows.max(1) as f64 / b as f64).min(1.0);
        a.executions += share;
        let e = a.batches.entry(b).or_default();
        e.0 += share;
        e.1 += t.inference.as_nanos() as f64 * share;
    }

    pub fn failure(&self, model: &str, version: &str, took: std::time::Duration) {
        let mut m = self.by_key.lock();
        m.entry((model.to_string(), version.to_string()))
            .or_default()
            .infer
            .fail
            .add(took);
    }

    /// Versions that have statistics.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.by_key.lock().keys().cloned().collect()
    }

    /// The statistics of one version (zeros when it never served a request).
    pub fn get(&self, model: &str, version: &str) -> ModelStats {
        let m = self.by_key.lock();
        let mut out = ModelStats {
            name: model.to_string(),
            version: version.to_string(),
            ..ModelStats::default()
        };
        if let Some(a) = m.get(&(model.to_string(), version.to_string())) {
            out.last_inference = a.last_inference;
            out.inference_count = a.rows;
            out.execution_count = a.executions.round() as u64;
            out.inference_stats = a.infer.clone();
            out.batch_stats = a
                .batches
                .iter()
                .map(|(&size, &(execs, ns))| {
                    let count = execs.round() as u64;
                    BatchStats {
                        batch_size: size,
                        compute_input: Duration { count, ns: 0 },
                        compute_infer: Duration {
                            count,
                            ns: ns.round() as u64,
                        },
                        compute_output: Duration { count, ns: 0 },
                    }
                })
                .collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(ms: u64) -> Timing {
        let d = std::time::Duration::from_millis(ms);
        Timing {
            load: std::time::Duration::ZERO,
            queue: d,
            inference: d,
            total: d * 2,
        }
    }

    #[test]
    fn requests_sharing_a_batch_count_as_one_execution() {
        let s = Stats::default();
        // Two requests of 1 and 3 rows ran together in one batch of 4 rows; one more alone.
        s.success("m", "1", 1, &timing(2), 4);
        s.success("m", "1", 3, &timing(2), 4);
        s.success("m", "1", 2, &timing(1), 2);
        s.failure("m", "1", std::time::Duration::from_millis(5));
        let st = s.get("m", "1");
        assert_eq!(st.inference_count, 6);
        assert_eq!(st.execution_count, 2);
        assert_eq!(st.inference_stats.success.count, 3);
        assert_eq!(st.inference_stats.success.ns, 10_000_000);
        assert_eq!(
            st.inference_stats.fail,
            Duration {
                count: 1,
                ns: 5_000_000
            }
        );
        assert_eq!(st.inference_stats.queue.count, 3);
        let sizes: Vec<(u64, u64)> = st
            .batch_stats
            .iter()
            .map(|b| (b.batch_size, b.compute_infer.count))
            .collect();
        assert_eq!(sizes, vec![(2, 1), (4, 1)]);
        assert!(st.last_inference > 0);
        assert_eq!(s.get("other", "1").inference_count, 0);
    }
}
