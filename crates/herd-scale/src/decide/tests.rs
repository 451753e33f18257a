//! decide() on a simulated clock: time only moves when a test says so.

use super::*;
use jiff::SignedDuration;

fn t0() -> Timestamp {
    // A Monday, 12:00 UTC.
    "2026-11-23T12:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0().checked_add(SignedDuration::from_secs(secs)).unwrap()
}

fn policy(text: &str) -> Policy {
    Policy::parse(text, "test.toml").unwrap()
}

const WORKERS: &str = r#"
[[workers]]
queue = "q"
jobs_per_worker = 10
max = 8
cooldown = "60s"
"#;

fn workers(ids: &[(&str, bool)]) -> Vec<WorkerObs> {
    ids.iter()
        .map(|(id, busy)| WorkerObs {
            id: id.to_string(),
            busy: *busy,
        })
        .collect()
}

fn queue(waiting: u64, running: u64, ws: &[(&str, bool)]) -> Observed {
    let mut o = Observed::default();
    o.queues.insert(
        "q".into(),
        QueueObs {
            waiting,
            running,
            workers: workers(ws),
        },
    );
    o
}

fn worker_actions(plan: &Plan) -> Vec<&Action> {
    plan.actions
        .iter()
        .filter(|a| matches!(a, Action::StartWorkers { .. } | Action::StopWorkers { .. }))
        .collect()
}

#[test]
fn scales_from_zero_to_ceil_of_waiting_over_jobs_per_worker() {
    let p = policy(WORKERS);
    let (plan, _) = decide(&queue(35, 0, &[]), &State::default(), &p, t0());
    assert_eq!(
        worker_actions(&plan),
        vec![&Action::StartWorkers {
            queue: "q".into(),
            from: 0,
            to: 4
        }]
    );
    // Nothing waiting: nothing to start.
    let (plan, _) = decide(&queue(0, 0, &[]), &State::default(), &p, t0());
    assert!(worker_actions(&plan).is_empty());
    // One job is enough for one worker.
    let (plan, _) = decide(&queue(1, 0, &[]), &State::default(), &p, t0());
    assert_eq!(
        worker_actions(&plan),
        vec![&Action::StartWorkers {
            queue: "q".into(),
            from: 0,
            to: 1
        }]
    );
}

#[test]
fn desired_workers_are_capped_at_max() {
    let p = policy(WORKERS);
    let (plan, _) = decide(&queue(500, 0, &[("a", false)]), &State::default(), &p, t0());
    assert_eq!(
        worker_actions(&plan),
        vec![&Action::StartWorkers {
            queue: "q".into(),
            from: 1,
            to: 8
        }]
    );
    let d = plan.decisions.iter().find(|d| d.kind == "workers").unwrap();
    assert!(d.reason.contains("capped at max"), "{}", d.reason);
    assert!(d.inputs.contains("waiting=500"), "{}", d.inputs);
}

#[test]
fn to_zero_only_when_empty_nothing_running_and_cooldown_passed() {
    let p = policy(WORKERS);
    let ws = [("w1", false), ("w2", false), ("w3", true), ("w4", true)];
    // t=0: the queue is empty but two jobs still run.
    let (plan, s) = decide(&queue(0, 2, &ws), &State::default(), &p, at(0));
    assert!(worker_actions(&plan).is_empty(), "{:?}", plan.actions);
    let d = plan.decisions.iter().find(|d| d.kind == "workers").unwrap();
    assert!(d.reason.contains("running"), "{}", d.reason);

    // t=10: nothing runs any more; cooldown (60 s since the last activity at t=0) not over.
    let idle = [("w1", false), ("w2", false), ("w3", false), ("w4", false)];
    let (plan, s) = decide(&queue(0, 0, &idle), &s, &p, at(10));
    assert!(worker_actions(&plan).is_empty());
    let (plan, s) = decide(&queue(0, 0, &idle), &s, &p, at(59));
    assert!(worker_actions(&plan).is_empty());
    let d = plan.decisions.iter().find(|d| d.kind == "workers").unwrap();
    assert!(d.reason.contains("cooldown 1s left"), "{}", d.reason);

    // t=60: cooldown over, nothing waiting, nothing running: all four stop.
    let (plan, _) = decide(&queue(0, 0, &idle), &s, &p, at(60));
    match worker_actions(&plan).as_slice() {
        [Action::StopWorkers { from, to, stop, .. }] => {
            assert_eq!((*from, *to), (4, 0));
            assert_eq!(stop.len(), 4);
        }
        other => panic!("expected one stop, got {other:?}"),
    }
}

#[test]
fn new_activity_restarts_the_cooldown() {
    let p = policy(WORKERS);
    let idle = [("w1", false)];
    let (_, s) = decide(&queue(0, 0, &idle), &State::default(), &p, at(0));
    // A job arrives at t=50 and is picked up by the existing worker.
    let (plan, s) = decide(&queue(0, 1, &[("w1", true)]), &s, &p, at(50));
    assert!(worker_actions(&plan).is_empty());
    // At t=70 the job is done; 60 s have passed since t=0 but not since t=50.
    let (plan, s) = decide(&queue(0, 0, &idle), &s, &p, at(70));
    assert!(worker_actions(&plan).is_empty());
    let (plan, _) = decide(&queue(0, 0, &idle), &s, &p, at(110));
    assert_eq!(worker_actions(&plan).len(), 1);
}

#[test]
fn the_first_tick_counts_as_activity() {
    // An autoscaler that starts next to idle workers waits one cooldown before stopping them.
    let p = policy(WORKERS);
    let (plan, s) = decide(&queue(0, 0, &[("w1", false)]), &State::default(), &p, at(0));
    assert!(worker_actions(&plan).is_empty());
    let (plan, _) = decide(&queue(0, 0, &[("w1", false)]), &s, &p, at(60));
    assert_eq!(worker_actions(&plan).len(), 1);
}

#[test]
fn never_stops_a_worker_holding_a_lease() {
    let p = policy(WORKERS);
    // Five workers, two busy; 10 waiting wants 1 worker. Cooldown since scale-up has passed.
    let ws = [
        ("w1", true),
        ("w2", false),
        ("w3", true),
        ("w4", false),
        ("w5", false),
    ];
    let (plan, _) = decide(&queue(10, 2, &ws), &State::default(), &p, at(0));
    match worker_actions(&plan).as_slice() {
        [Action::StopWorkers {
            from,
            to,
            stop,
            keep,
            ..
        }] => {
            assert_eq!((*from, *to), (5, 2));
            let mut stop = stop.clone();
            stop.sort();
            assert_eq!(stop, vec!["w2", "w4", "w5"]);
            assert_eq!(keep, &vec!["w1".to_string(), "w3".to_string()]);
        }
        other => panic!("expected one stop, got {other:?}"),
    }
    // All busy: nothing can stop even though fewer are wanted.
    let busy = [("w1", true), ("w2", true), ("w3", true)];
    let (plan, _) = decide(&queue(0, 3, &busy), &State::default(), &p, at(0));
    assert!(worker_actions(&plan).is_empty());
}

#[test]
fn a_busy_worker_survives_scale_to_zero_even_if_stats_lag() {
    // The stats say nothing runs, but one worker still holds a lease (the two reads raced).
    let p = policy(WORKERS);
    let ws = [("w1", true), ("w2", false)];
    let (_, s) = decide(&queue(0, 0, &ws), &State::default(), &p, at(0));
    let (plan, _) = decide(&queue(0, 0, &ws), &s, &p, at(120));
    match worker_actions(&plan).as_slice() {
        [Action::StopWorkers { stop, to, .. }] => {
            assert_eq!(stop, &vec!["w2".to_string()]);
            assert_eq!(*to, 1);
        }
        other => panic!("expected one stop, got {other:?}"),
    }
}

#[test]
fn partial_scale_down_waits_for_cooldown_after_scale_up() {
    let p = policy(WORKERS);
    let (plan, s) = decide(&queue(80, 0, &[]), &State::default(), &p, at(0));
    assert_eq!(worker_actions(&plan).len(), 1);
    let eight: Vec<(String, bool)> = (0..8).map(|i| (format!("w{i}"), false)).collect();
    let eight: Vec<(&str, bool)> = eight.iter().map(|(s, b)| (s.as_str(), *b)).collect();
    // At t=30 only 20 wait: want 2, but the scale-up was 30 s ago.
    let (plan, s) = decide(&queue(20, 0, &eight), &s, &p, at(30));
    assert!(worker_actions(&plan).is_empty());
    let (plan, _) = decide(&queue(20, 0, &eight), &s, &p, at(60));
    match worker_actions(&plan).as_slice() {
        [Action::StopWorkers { from, to, stop, .. }] => {
            assert_eq!((*from, *to), (8, 2));
            assert_eq!(stop.len(), 6);
        }
        other => panic!("expected one stop, got {other:?}"),
    }
}

#[test]
fn unobserved_queue_is_left_alone() {
    let p = policy(WORKERS);
    let (plan, _) = decide(&Observed::default(), &State::default(), &p, t0());
    assert!(worker_actions(&plan).is_empty());
    assert!(plan.decisions[0].reason.contains("not observed"));
}

// ---- serving ----

const SERVING: &str = r#"
[[serving]]
name = "web"
target_invocations_per_minute = 225
target_memory_utilisation = 0.8
stabilisation_window = "300s"
tolerance = 0.1
min = 1
max = 10
"#;

/// `n` instances with cumulative request counters `total_each` and memory `used`/`budget` each.
fn serving(n: usize, total_each: f64, used: f64, budget: f64) -> Observed {
    let mut o = Observed::default();
    o.serving.insert(
        "web".into(),
        ServingObs {
            instances: (0..n)
                .map(|i| InstanceObs {
                    id: format!("s{i}"),
                    requests_total: Some(total_each),
                    memory_used_bytes: Some(used),
                    memory_budget_bytes: Some(budget),
                })
                .collect(),
        },
    );
    o
}

fn serving_action(plan: &Plan) -> Option<(u32, u32)> {
    plan.actions.iter().find_map(|a| match a {
        Action::ScaleServing { from, to, .. } => Some((*from, *to)),
        _ => None,
    })
}

const GB: f64 = 1e9;

#[test]
fn invocation_rate_sizes_the_pool() {
    let p = policy(SERVING);
    // Two instances; in 60 s each served 450 requests: 900/min total, 225 target -> 4.
    let (plan, s) = decide(&serving(2, 0.0, 0.1 * GB, GB), &State::default(), &p, at(0));
    assert_eq!(serving_action(&plan), None, "first sample has no rate yet");
    let (plan, _) = decide(&serving(2, 450.0, 0.1 * GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), Some((2, 4)));
}

#[test]
fn the_larger_of_the_two_signals_wins() {
    let p = policy(SERVING);
    // Invocations want 4 (900/min); memory at 0.4 of budget wants 1: 4 wins.
    let (_, s) = decide(&serving(2, 0.0, 0.4 * GB, GB), &State::default(), &p, at(0));
    let (plan, _) = decide(&serving(2, 450.0, 0.4 * GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), Some((2, 4)));

    // Invocations want 1 (45/min in total); memory at 1.0 of budget is 1.25x target: ceil(2*1.25) = 3.
    let (_, s) = decide(&serving(2, 0.0, GB, GB), &State::default(), &p, at(0));
    let (plan, s2) = decide(&serving(2, 22.5, GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), Some((2, 3)));
    let d = plan.decisions.iter().find(|d| d.kind == "serving").unwrap();
    assert!(d.inputs.contains("by_invocations=1"), "{}", d.inputs);
    assert!(d.inputs.contains("by_memory=3"), "{}", d.inputs);
    assert!(!s2.serving["web"].recommendations.is_empty());
}

#[test]
fn tolerance_band_prevents_flapping() {
    let p = policy(SERVING);
    // 4 instances at 236/min each (ratio 1.05): inside the 10% band, stay at 4.
    let (_, s) = decide(&serving(4, 0.0, 0.1 * GB, GB), &State::default(), &p, at(0));
    let (plan, s) = decide(&serving(4, 236.0, 0.1 * GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), None);
    // 4 instances at 270/min each (ratio 1.2): outside the band, ceil(1080/225) = 5.
    let (plan, _) = decide(&serving(4, 236.0 + 270.0, 0.1 * GB, GB), &s, &p, at(120));
    assert_eq!(serving_action(&plan), Some((4, 5)));
    // Memory at 0.84 (ratio 1.05): inside the band as well.
    let (_, s) = decide(
        &serving(4, 0.0, 0.84 * GB, GB),
        &State::default(),
        &p,
        at(0),
    );
    let (plan, _) = decide(&serving(4, 236.0, 0.84 * GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), None);
}

#[test]
fn scale_down_waits_for_the_stabilisation_window() {
    let p = policy(SERVING);
    // Load wants 6 at t=60; the pool goes to 6.
    let (_, s) = decide(&serving(2, 0.0, 0.1 * GB, GB), &State::default(), &p, at(0));
    let (plan, s) = decide(&serving(2, 675.0, 0.1 * GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), Some((2, 6)));
    // Load drops to nothing from t=60 on; six instances now report flat counters.
    let (_, mut s) = decide(&serving(6, 0.0, 0.1 * GB, GB), &s, &p, at(61));
    let mut t = 61;
    while t < 360 {
        t += 30;
        let (plan, next) = decide(&serving(6, 0.0, 0.1 * GB, GB), &s, &p, at(t));
        s = next;
        if t - 60 <= 300 {
            assert_eq!(
                serving_action(&plan),
                None,
                "at t={t} the 6 of t=60 is still in the window"
            );
        }
    }
    // t=391: the recommendation of 6 (t=60) is older than 300 s; down to min.
    let (plan, _) = decide(&serving(6, 0.0, 0.1 * GB, GB), &s, &p, at(391));
    assert_eq!(serving_action(&plan), Some((6, 1)));
}

#[test]
fn scale_down_goes_to_the_highest_recent_recommendation() {
    let p = policy(SERVING);
    // t=0: 8 instances found at start; their size is the first recommendation.
    let (plan, s) = decide(&serving(8, 0.0, 0.1 * GB, GB), &State::default(), &p, at(0));
    assert_eq!(serving_action(&plan), None);
    // t=100: 1125/min -> 5. The 8 of t=0 is in the window: hold.
    let (plan, s) = decide(&serving(8, 234.375, 0.1 * GB, GB), &s, &p, at(100));
    assert_eq!(serving_action(&plan), None);
    // t=200: 675/min -> 3. Hold.
    let (plan, s) = decide(&serving(8, 375.0, 0.1 * GB, GB), &s, &p, at(200));
    assert_eq!(serving_action(&plan), None);
    // t=310: 225/min -> 1. The t=0 entry left the window; the highest left is 5 (t=100).
    let (plan, _) = decide(&serving(8, 426.5625, 0.1 * GB, GB), &s, &p, at(310));
    assert_eq!(serving_action(&plan), Some((8, 5)));
    let d = plan.decisions.iter().find(|d| d.kind == "serving").unwrap();
    assert!(d.inputs.contains("rate_per_min=225.0"), "{}", d.inputs);
}

#[test]
fn counter_reset_counts_the_new_value() {
    let p = policy(SERVING);
    let (_, s) = decide(
        &serving(1, 10_000.0, 0.1 * GB, GB),
        &State::default(),
        &p,
        at(0),
    );
    // The instance restarted: its counter fell to 450 in 60 s. 450/min -> 2 instances.
    let (plan, _) = decide(&serving(1, 450.0, 0.1 * GB, GB), &s, &p, at(60));
    assert_eq!(serving_action(&plan), Some((1, 2)));
}

#[test]
fn empty_serving_pool_is_raised_to_min() {
    let p = policy(SERVING);
    let mut o = Observed::default();
    o.serving.insert("web".into(), ServingObs::default());
    let (plan, _) = decide(&o, &State::default(), &p, at(0));
    assert_eq!(serving_action(&plan), Some((0, 1)));
}

// ---- schedules ----

const SCHEDULED: &str = r#"
[defaults]
flexible_max_unavailable = 1

[[workers]]
queue = "q"
jobs_per_worker = 10
max = 8

[[schedule]]
name = "working-hours"
days = ["weekdays"]
window = "08:00-19:00"
timezone = "Europe/Berlin"
flexible_max_unavailable = 0
workers.q = { min = 2 }

[[schedule]]
name = "night"
days = ["daily"]
window = "22:00-06:00"
timezone = "Europe/Berlin"
flexible_max_unavailable = 2
"#;

fn pdb_action(plan: &Plan) -> Option<u32> {
    plan.actions.iter().find_map(|a| match a {
        Action::SetFlexibleMaxUnavailable { value, .. } => Some(*value),
        _ => None,
    })
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn schedule_selects_the_disruption_budget_and_changes_it_only_on_transitions() {
    let p = policy(SCHEDULED);
    let o = queue(0, 0, &[]);
    // Monday 10:00 Berlin (09:00Z, CET): working hours -> 0.
    let (plan, s) = decide(&o, &State::default(), &p, ts("2026-11-23T09:00:00Z"));
    assert_eq!(plan.schedule.as_deref(), Some("working-hours"));
    assert_eq!(pdb_action(&plan), Some(0));
    // Still working hours: no repeated patch.
    let (plan, s) = decide(&o, &s, &p, ts("2026-11-23T10:00:00Z"));
    assert_eq!(pdb_action(&plan), None);
    // 20:00 Berlin: no window -> default 1.
    let (plan, s) = decide(&o, &s, &p, ts("2026-11-23T19:00:00Z"));
    assert_eq!(plan.schedule, None);
    assert_eq!(pdb_action(&plan), Some(1));
    // 23:30 Berlin: night -> 2; 01:30 Berlin next day is still the same night (crosses midnight).
    let (plan, s) = decide(&o, &s, &p, ts("2026-11-23T22:30:00Z"));
    assert_eq!(plan.schedule.as_deref(), Some("night"));
    assert_eq!(pdb_action(&plan), Some(2));
    let (plan, _) = decide(&o, &s, &p, ts("2026-11-24T00:30:00Z"));
    assert_eq!(plan.schedule.as_deref(), Some("night"));
    assert_eq!(pdb_action(&plan), None);
}

#[test]
fn schedule_min_applies_in_local_time_across_dst() {
    let p = policy(SCHEDULED);
    let o = queue(0, 0, &[]);
    // Friday 2026-03-27, CET: 08:30 Berlin = 07:30Z -> working hours, min 2 workers.
    let (plan, _) = decide(&o, &State::default(), &p, ts("2026-03-27T07:30:00Z"));
    assert_eq!(
        worker_actions(&plan),
        vec![&Action::StartWorkers {
            queue: "q".into(),
            from: 0,
            to: 2
        }]
    );
    // The same UTC time of day, 06:30Z, before and after the spring change:
    // Friday 2026-03-27 (CET) it is 07:30 in Berlin, closed; Monday 2026-03-30 (CEST) 08:30, open.
    let (plan, _) = decide(&o, &State::default(), &p, ts("2026-03-27T06:30:00Z"));
    assert_eq!(plan.schedule, None);
    assert!(worker_actions(&plan).is_empty());
    let (plan, _) = decide(&o, &State::default(), &p, ts("2026-03-30T06:30:00Z"));
    assert_eq!(plan.schedule.as_deref(), Some("working-hours"));
    assert_eq!(worker_actions(&plan).len(), 1);
}

#[test]
fn night_window_ends_at_local_six_on_the_dst_night() {
    let p = policy(SCHEDULED);
    let o = queue(0, 0, &[]);
    // Sunday 2026-03-29: clocks jump 02:00 -> 03:00. 03:30Z = 05:30 CEST: night.
    let (plan, _) = decide(&o, &State::default(), &p, ts("2026-03-29T03:30:00Z"));
    assert_eq!(plan.schedule.as_deref(), Some("night"));
    // 04:30Z = 06:30 CEST: night is over (a fixed +01:00 offset would say 05:30, still night).
    let (plan, _) = decide(&o, &State::default(), &p, ts("2026-03-29T04:30:00Z"));
    assert_eq!(plan.schedule, None);
    assert_eq!(pdb_action(&plan), Some(1));
}
