//! Eviction scoring, pure: no clocks, no locks, no engines.
//!
//! The model cache ([`crate::Core`]) scores its entries with these functions, and so does the
//! [`Simulator`], which replays a request trace on a simulated clock (used by `herd plan` to
//! predict hit ratio and loads for a budget before anything runs).
//!
//! GreedyDual-Size-Frequency (GDSF): an entry's priority is `L + freq * load_secs / size_mib`,
//! where `L` (the inflation value) becomes the priority of each victim; the lowest priority is
//! evicted first. LRU: the priority is the tick of the last use.

use std::collections::HashMap;
use std::hash::Hash;

use crate::EvictionPolicy;

/// What the policy knows about one cached entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Bytes charged to the entry.
    pub charge: u64,
    /// Uses since it was loaded (at least 1 once loaded).
    pub freq: u64,
    /// The cache's request counter at the last use.
    pub last_used: u64,
    /// Seconds its load took.
    pub load_secs: f64,
}

/// Load times below this count as this much in GDSF's cost term: at the millisecond scale a
/// load's measured time is scheduler and allocator noise, and noise must not decide which of
/// two equally used models stays (it made GDSF runs of the same seeded workload differ by ±7%
/// in hit ratio).
pub const MIN_LOAD_SECS: f64 = 0.01;

/// The priority of an entry under `policy`, with inflation value `clock` (GDSF's `L`).
/// Lower is evicted first.
pub fn priority(policy: EvictionPolicy, clock: f64, u: &Usage) -> f64 {
    match policy {
        EvictionPolicy::Lru => u.last_used as f64,
        EvictionPolicy::Gdsf => {
            let size_mib = (u.charge.max(1) as f64) / (1024.0 * 1024.0);
            clock + (u.freq.max(1) as f64) * u.load_secs.max(MIN_LOAD_SECS) / size_mib.max(1e-3)
        }
    }
}

/// The candidate with the lowest priority (the victim), if any, from `(key, priority,
/// last_used)`. Ties (equal models under GDSF: same size, load cost and uses) go to the least
/// recently used, so the choice never depends on a hash map's iteration order: the same trace
/// gives the same evictions, in the cache and in the [`Simulator`].
pub fn victim<K>(candidates: impl IntoIterator<Item = (K, f64, u64)>) -> Option<(K, f64)> {
    candidates
        .into_iter()
        .reduce(|a, b| {
            if b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)).is_lt() {
                b
            } else {
                a
            }
        })
        .map(|(k, p, _)| (k, p))
}

/// The inflation value after evicting an entry of priority `victim_priority`.
pub fn clock_after_eviction(policy: EvictionPolicy, clock: f64, victim_priority: f64) -> f64 {
    match policy {
        EvictionPolicy::Gdsf => clock.max(victim_priority),
        EvictionPolicy::Lru => clock,
    }
}

/// The outcome of one simulated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Access<K> {
    /// The model was resident (or its load was in progress: the request joined it).
    Hit {
        /// Seconds the request waited for a load in progress (0 when resident).
        wait: f64,
    },
    /// The model was loaded for this request, evicting `evicted`; the request waited `wait`
    /// seconds (for room, when every other model was loading, and for its own load).
    Miss { evicted: Vec<K>, wait: f64 },
    /// The model does not fit in the budget at all.
    TooLarge,
}

struct SimEntry {
    usage: Usage,
    priority: f64,
    pinned: bool,
    /// Simulated time at which its load finishes.
    ready_at: f64,
}

/// The cache's admission and eviction, replayed on a simulated clock. It mirrors
/// [`crate::Core`]: a miss makes room by evicting the lowest-priority idle entry until the
/// charge fits, a hit bumps frequency and recency, requests for a model whose load is still in
/// progress join that load (and count as hits, like the server's counters), and models loading
/// are not evicted: when only loading models are left to evict, the load waits for the first of
/// them to finish (as the server waits for room) and evicts it then. Requests are instantaneous
/// apart from the loads they wait for.
pub struct Simulator<K> {
    policy: EvictionPolicy,
    budget: u64,
    used: u64,
    clock: f64,
    tick: u64,
    entries: HashMap<K, SimEntry>,
}

impl<K: Clone + Eq + Hash> Simulator<K> {
    pub fn new(policy: EvictionPolicy, budget: u64) -> Self {
        Simulator {
            policy,
            budget,
            used: 0,
            clock: 0.0,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Entries resident or loading now.
    pub fn resident(&self) -> usize {
        self.entries.len()
    }

    /// Loads `key` and keeps it out of eviction (a pinned model). Returns false when it does
    /// not fit beside the other pinned models.
    pub fn pin(&mut self, key: K, charge: u64, load_secs: f64) -> bool {
        match self.access(key.clone(), charge, load_secs, 0.0) {
            Access::TooLarge => false,
            _ => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.pinned = true;
                }
                true
            }
        }
    }

    /// One request for `key` (charged `charge` bytes, taking `load_secs` to load) at simulated
    /// time `now` (seconds, non-decreasing).
    pub fn access(&mut self, key: K, charge: u64, load_secs: f64, now: f64) -> Access<K> {
        self.tick += 1;
        let tick = self.tick;
        let (policy, clock) = (self.policy, self.clock);
        if let Some(e) = self.entries.get_mut(&key) {
            let wait = (e.ready_at - now).max(0.0);
            if wait == 0.0 {
                // A resident model: the real cache counts the use.
                e.usage.freq += 1;
                e.usage.last_used = tick;
                e.priority = priority(policy, clock, &e.usage);
            }
            return Access::Hit { wait };
        }
        if charge > self.budget {
            return Access::TooLarge;
        }
        let mut evicted = Vec::new();
        let mut start = now;
        while self.used + charge > self.budget {
            let v = victim(
                self.entries
                    .iter()
                    .filter(|(_, e)| !e.pinned && e.ready_at <= start)
                    .map(|(k, e)| (k, e.priority, e.usage.last_used)),
            )
            .map(|(k, p)| (k.clone(), p));
            let Some((k, p)) = v else {
                // Only loading (or pinned) models are left: wait for the first load to finish.
                let next = self
                    .entries
                    .values()
                    .filter(|e| !e.pinned && e.ready_at > start)
                    .map(|e| e.ready_at)
                    .min_by(f64::total_cmp);
                match next {
                    Some(t) => {
                        start = t;
                        continue;
                    }
                    // Everything left is pinned: admit over budget rather than drop the request
                    // (the server would answer 503 after its room wait).
                    None => break,
                }
            };
            let e = self.entries.remove(&k).expect("victim exists");
            self.used -= e.usage.charge;
            self.clock = clock_after_eviction(self.policy, self.clock, p);
            evicted.push(k);
        }
        let usage = Usage {
            charge,
            freq: 1,
            last_used: tick,
            load_secs: load_secs.max(0.001),
        };
        let entry = SimEntry {
            priority: priority(self.policy, self.clock, &usage),
            usage,
            pinned: false,
            ready_at: start + load_secs.max(0.0),
        };
        self.used += charge;
        self.entries.insert(key, entry);
        Access::Miss {
            evicted,
            wait: start - now + load_secs.max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn gdsf_priority_grows_with_frequency_and_load_time_and_shrinks_with_size() {
        let base = Usage {
            charge: 10 * MIB,
            freq: 1,
            last_used: 0,
            load_secs: 1.0,
        };
        let p = |u: Usage| priority(EvictionPolicy::Gdsf, 0.0, &u);
        assert!((p(base) - 0.1).abs() < 1e-12);
        assert!(p(Usage { freq: 3, ..base }) > p(base));
        assert!(
            p(Usage {
                load_secs: 2.0,
                ..base
            }) > p(base)
        );
        assert!(
            p(Usage {
                charge: 20 * MIB,
                ..base
            }) < p(base)
        );
        assert_eq!(priority(EvictionPolicy::Gdsf, 5.0, &base), 5.0 + p(base));
        assert_eq!(
            priority(
                EvictionPolicy::Lru,
                5.0,
                &Usage {
                    last_used: 42,
                    ..base
                }
            ),
            42.0
        );
    }

    #[test]
    fn victim_is_the_lowest_and_ties_go_to_the_least_recently_used() {
        assert_eq!(
            victim([("a", 2.0, 1), ("b", 1.0, 5), ("c", 1.0, 3), ("d", 1.5, 0)]),
            Some(("c", 1.0))
        );
        // The order candidates come in does not matter.
        assert_eq!(
            victim([("c", 1.0, 3), ("b", 1.0, 5), ("a", 2.0, 1)]),
            Some(("c", 1.0))
        );
        assert_eq!(victim(Vec::<(u8, f64, u64)>::new()), None);
        assert_eq!(clock_after_eviction(EvictionPolicy::Gdsf, 1.0, 3.0), 3.0);
        assert_eq!(clock_after_eviction(EvictionPolicy::Gdsf, 4.0, 3.0), 4.0);
        assert_eq!(clock_after_eviction(EvictionPolicy::Lru, 1.0, 3.0), 1.0);
    }

    /// Equal models tie under GDSF: which one goes must not depend on a hash map's order (each
    /// map has its own random seed), or the same plan would predict different numbers per run.
    #[test]
    fn the_same_trace_evicts_the_same_models_every_time() {
        let run = || {
            let mut s = Simulator::new(EvictionPolicy::Gdsf, 10 * MIB);
            let mut x: u64 = 7;
            let mut evictions = Vec::new();
            for i in 0..2_000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let model = (x >> 33) % 40;
                if let Access::Miss { evicted, .. } = s.access(model, MIB, 0.02, i as f64) {
                    evictions.extend(evicted);
                }
            }
            evictions
        };
        let first = run();
        assert!(first.len() > 100, "{}", first.len());
        for _ in 0..5 {
            assert_eq!(run(), first);
        }
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut s = Simulator::new(EvictionPolicy::Lru, 2 * MIB);
        assert_eq!(
            s.access("a", MIB, 0.0, 0.0),
            Access::Miss {
                evicted: vec![],
                wait: 0.0
            }
        );
        assert_eq!(
            s.access("b", MIB, 0.0, 1.0),
            Access::Miss {
                evicted: vec![],
                wait: 0.0
            }
        );
        assert_eq!(s.access("a", MIB, 0.0, 2.0), Access::Hit { wait: 0.0 });
        assert_eq!(
            s.access("c", MIB, 0.0, 3.0),
            Access::Miss {
                evicted: vec!["b"],
                wait: 0.0
            }
        );
        assert_eq!(s.used(), 2 * MIB);
    }

    #[test]
    fn gdsf_keeps_the_frequent_model_that_lru_would_drop() {
        // "hot" is used often, then "x" and "y" once each: LRU drops hot, GDSF keeps it.
        let run = |policy| {
            let mut s = Simulator::new(policy, 2 * MIB);
            for t in 0..5 {
                s.access("hot", MIB, 0.1, t as f64);
            }
            s.access("x", MIB, 0.1, 10.0);
            match s.access("y", MIB, 0.1, 11.0) {
                Access::Miss { evicted, .. } => evicted,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(run(EvictionPolicy::Lru), vec!["hot"]);
        assert_eq!(run(EvictionPolicy::Gdsf), vec!["x"]);
    }

    #[test]
    fn requests_during_a_load_join_it_and_loading_models_are_not_evicted() {
        let mut s = Simulator::new(EvictionPolicy::Gdsf, MIB);
        assert!(matches!(s.access("a", MIB, 2.0, 0.0), Access::Miss { .. }));
        assert_eq!(s.access("a", MIB, 2.0, 0.5), Access::Hit { wait: 1.5 });
        // "a" is still loading: "b" waits for it to finish (t=2), evicts it, then loads (2 s).
        assert_eq!(
            s.access("b", MIB, 2.0, 1.0),
            Access::Miss {
                evicted: vec!["a"],
                wait: 3.0
            }
        );
        assert_eq!(s.resident(), 1);
        assert_eq!(s.used(), MIB);
        assert_eq!(s.access("c", 2 * MIB, 0.0, 5.0), Access::TooLarge);
    }

    #[test]
    fn pinned_models_stay() {
        let mut s = Simulator::new(EvictionPolicy::Lru, 2 * MIB);
        assert!(s.pin("p", MIB, 0.0));
        s.access("a", MIB, 0.0, 1.0);
        assert_eq!(
            s.access("b", MIB, 0.0, 2.0),
            Access::Miss {
                evicted: vec!["a"],
                wait: 0.0
            }
        );
        assert_eq!(s.access("p", MIB, 0.0, 3.0), Access::Hit { wait: 0.0 });
    }
}
