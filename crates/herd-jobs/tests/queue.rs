//! herd-jobs integration tests (one test binary). The queue suite runs every scenario against
//! SQLite (a real file), Redis (a real server from HERD_TEST_REDIS_URL) and a real three-node
//! Redis Cluster (HERD_TEST_REDIS_CLUSTER_URL); see scripts/test-services.sh. Time is a
//! ManualClock: no sleeps.

use std::sync::Arc;
use std::time::Duration;

use herd_jobs::{
    connect_with, CommandParams, ConnectOptions, FailOutcome, Failure, JobKind, JobOutcome,
    JobSpec, JobState, JobsError, ListFilter, ManualClock, Progress, Queue, QueueStats,
};

#[path = "queue/auth.rs"]
mod auth;
#[path = "queue/common.rs"]
mod common;
#[path = "queue/defects.rs"]
mod defects;
#[path = "queue/kill.rs"]
mod kill;
#[path = "queue/worker.rs"]
mod worker;

use common::{postgres_url, redis_cluster_url, redis_url, TestDir};

const T0: i64 = 1_800_000_000_000;

/// One backend under test, with its clock and the temp dir that keeps its file alive.
struct Backend {
    name: &'static str,
    url: String,
    clock: ManualClock,
    _dir: Option<TestDir>,
}

impl Backend {
    async fn open(&self) -> Arc<dyn Queue> {
        connect_with(
            &self.url,
            ConnectOptions::with_clock(Arc::new(self.clock.clone())),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: connect {}: {e}", self.name, self.url))
    }
}

/// SQLite always; Redis, the Redis Cluster and PostgreSQL when their URLs are set (a fresh key
/// prefix or database per call).
async fn backends(test: &str) -> Vec<Backend> {
    let dir = TestDir::new(test);
    let mut out = vec![Backend {
        name: "sqlite",
        url: format!("sqlite://{}", dir.path().join("jobs.db").display()),
        clock: ManualClock::new(T0),
        _dir: Some(dir),
    }];
    if let Some(url) = redis_url(test) {
        let prefix = format!("t-{test}-{:08x}", rand::random::<u32>());
        out.push(Backend {
            name: "redis",
            url: format!("{url}?prefix={prefix}"),
            clock: ManualClock::new(T0),
            _dir: None,
        });
    }
    if let Some(url) = redis_cluster_url(test) {
        let prefix = format!("t-{test}-{:08x}", rand::random::<u32>());
        out.push(Backend {
            name: "redis-cluster",
            url: format!("{url}?prefix={prefix}"),
            clock: ManualClock::new(T0),
            _dir: None,
        });
    }
    if let Some(url) = postgres_url(test).await {
        out.push(Backend {
            name: "postgres",
            url,
            clock: ManualClock::new(T0),
            _dir: None,
        });
    }
    out
}

fn cmd_spec(queue: &str, tag: &str) -> JobSpec {
    JobSpec::new(
        queue,
        JobKind::Command(CommandParams {
            program: "echo".into(),
            args: vec![tag.into()],
            ..Default::default()
        }),
    )
}

fn tag_of(spec: &JobSpec) -> String {
    match &spec.kind {
        JobKind::Command(c) => c.args.first().cloned().unwrap_or_default(),
        JobKind::BatchInfer(b) => b.input.clone(),
    }
}

const LEASE: Duration = Duration::from_secs(10);

fn q(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn enqueue_claim_ack_roundtrip() {
    for b in backends("roundtrip").await {
        let queue = b.open().await;
        let id = queue.enqueue(cmd_spec("default", "a")).await.unwrap();
        let st = queue.stats("default").await.unwrap();
        assert_eq!(
            st,
            QueueStats {
                waiting: 1,
                ..Default::default()
            },
            "{}",
            b.name
        );

        let lease = queue
            .claim("w1", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .expect("a job to claim");
        assert_eq!(lease.job.id, id, "{}", b.name);
        assert_eq!(lease.job.attempts, 1);
        assert_eq!(lease.job.state, JobState::Running);
        assert_eq!(lease.expires_ms, T0 + 10_000);
        assert!(queue
            .claim("w2", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            queue.lease_holders("default").await.unwrap(),
            vec!["w1".to_string()]
        );
        assert_eq!(queue.stats("default").await.unwrap().running, 1);

        b.clock.advance_ms(500);
        let outcome = JobOutcome {
            location: Some("/tmp/x".into()),
            detail: serde_json::json!({"exit_code": 0}),
        };
        queue.ack(&lease, &outcome).await.unwrap();
        let job = queue.show(&id).await.unwrap().expect("job kept");
        assert_eq!(job.state, JobState::Done, "{}", b.name);
        assert_eq!(job.result.as_ref(), Some(&outcome));
        assert_eq!(job.finished_ms, Some(T0 + 500));
        assert_eq!(tag_of(&job.spec), "a");
        assert_eq!(
            queue.stats("default").await.unwrap(),
            QueueStats {
                done: 1,
                ..Default::default()
            },
            "{}",
            b.name
        );
        assert!(queue.lease_holders("default").await.unwrap().is_empty());
        // A second ack with the same lease is refused: done exactly once.
        assert!(matches!(
            queue.ack(&lease, &outcome).await,
            Err(JobsError::LeaseLost { .. })
        ));
        assert!(queue.show("j-nope").await.unwrap().is_none());
        assert_eq!(queue.queues().await.unwrap(), vec!["default".to_string()]);
    }
}

#[tokio::test]
async fn priority_then_fifo_across_queues() {
    for b in backends("priority").await {
        let queue = b.open().await;
        let mut spec = cmd_spec("a", "low-1");
        queue.enqueue(spec.clone()).await.unwrap();
        b.clock.advance_ms(1);
        spec = cmd_spec("b", "high");
        spec.priority = 5;
        queue.enqueue(spec).await.unwrap();
        b.clock.advance_ms(1);
        queue.enqueue(cmd_spec("a", "low-2")).await.unwrap();
        b.clock.advance_ms(1);
        queue.enqueue(cmd_spec("other", "never")).await.unwrap();

        let mut order = Vec::new();
        while let Some(l) = queue.claim("w", &q(&["a", "b"]), LEASE).await.unwrap() {
            order.push(tag_of(&l.job.spec));
        }
        assert_eq!(order, vec!["high", "low-1", "low-2"], "{}", b.name);
        assert_eq!(queue.stats("other").await.unwrap().waiting, 1);
        assert!(queue.claim("w", &[], LEASE).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn expired_lease_is_claimable_again_and_the_old_holder_is_fenced() {
    for b in backends("expire").await {
        let queue = b.open().await;
        let id = queue.enqueue(cmd_spec("default", "x")).await.unwrap();
        let old = queue
            .claim("w1", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        b.clock.advance_ms(9_999);
        assert!(queue
            .claim("w2", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .is_none());
        b.clock.advance_ms(1);
        // Expired: counted as waiting, no longer a lease holder.
        let st = queue.stats("default").await.unwrap();
        assert_eq!((st.waiting, st.running), (1, 0), "{}", b.name);
        assert!(queue.lease_holders("default").await.unwrap().is_empty());

        let new = queue
            .claim("w2", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .expect("reclaimed");
        assert_eq!(new.job.id, id);
        assert_eq!(new.job.attempts, 2, "{}", b.name);
        assert_ne!(new.token, old.token);
        let mut old = old;
        for r in [
            queue.ack(&old, &JobOutcome::default()).await.map(|_| ()),
            queue
                .fail(&old, &Failure::retryable("late"))
                .await
                .map(|_| ()),
            queue.release(&old).await,
            queue.renew(&mut old, LEASE, None).await,
        ] {
            assert!(
                matches!(r, Err(JobsError::LeaseLost { .. })),
                "{}: {r:?}",
                b.name
            );
        }
        queue.ack(&new, &JobOutcome::default()).await.unwrap();
        assert_eq!(
            queue.show(&id).await.unwrap().unwrap().state,
            JobState::Done
        );
    }
}

#[tokio::test]
async fn renew_extends_the_lease_and_stores_progress() {
    for b in backends("renew").await {
        let queue = b.open().await;
        let id = queue.enqueue(cmd_spec("default", "x")).await.unwrap();
        let mut lease = queue
            .claim("w1", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        b.clock.advance_ms(8_000);
        let p = Progress {
            done: 3,
            total: Some(10),
            message: Some("rows".into()),
        };
        queue.renew(&mut lease, LEASE, Some(&p)).await.unwrap();
        assert_eq!(lease.expires_ms, T0 + 18_000);
        b.clock.advance_ms(5_000); // past the first expiry, before the renewed one
        assert!(
            queue
                .claim("w2", &q(&["default"]), LEASE)
                .await
                .unwrap()
                .is_none(),
            "{}",
            b.name
        );
        assert_eq!(
            queue.lease_holders("default").await.unwrap(),
            vec!["w1".to_string()]
        );
        let job = queue.show(&id).await.unwrap().unwrap();
        assert_eq!(job.progress, Some(p), "{}", b.name);
        assert_eq!(job.lease_expires_ms, Some(T0 + 18_000));
        assert_eq!(job.worker_id.as_deref(), Some("w1"));
    }
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_then_requeue() {
    for b in backends("retry").await {
        let queue = b.open().await;
        let mut spec = cmd_spec("default", "flaky");
        spec.max_attempts = 3;
        spec.backoff = herd_jobs::Backoff {
            base_ms: 1_000,
            max_ms: 60_000,
        };
        let id = queue.enqueue(spec).await.unwrap();
        for attempt in 1..=2u32 {
            let lease = queue
                .claim("w", &q(&["default"]), LEASE)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(lease.job.attempts, attempt);
            let now = herd_jobs::Clock::now_ms(&b.clock);
            let out = queue
                .fail(&lease, &Failure::retryable(format!("boom {attempt}")))
                .await
                .unwrap();
            let FailOutcome::Retry { run_at_ms } = out else {
                panic!("{}: attempt {attempt} should retry, got {out:?}", b.name);
            };
            let full = 1_000i64 << (attempt - 1);
            let delay = run_at_ms - now;
            assert!(
                delay >= full / 2 && delay <= full,
                "{}: delay {delay} for attempt {attempt}",
                b.name
            );
            let job = queue.show(&id).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Delayed);
            assert_eq!(
                job.last_error.as_deref(),
                Some(format!("boom {attempt}").as_str())
            );
            assert_eq!(queue.stats("default").await.unwrap().delayed, 1);
            // Not before its time...
            b.clock.set_ms(run_at_ms - 1);
            assert!(
                queue
                    .claim("w", &q(&["default"]), LEASE)
                    .await
                    .unwrap()
                    .is_none(),
                "{}",
                b.name
            );
            // ...and at its time.
            b.clock.set_ms(run_at_ms);
        }
        let lease = queue
            .claim("w", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.job.attempts, 3);
        assert_eq!(
            queue
                .fail(&lease, &Failure::retryable("boom 3"))
                .await
                .unwrap(),
            FailOutcome::Dead
        );
        let st = queue.stats("default").await.unwrap();
        assert_eq!(
            st,
            QueueStats {
                dead: 1,
                ..Default::default()
            },
            "{}",
            b.name
        );
        b.clock.advance_ms(10_000_000);
        assert!(queue
            .claim("w", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .is_none());

        // Requeue: only dead jobs, only existing ones.
        let other = queue.enqueue(cmd_spec("default", "fine")).await.unwrap();
        assert!(matches!(
            queue.requeue_dead("default", Some(&other)).await,
            Err(JobsError::NotDead { .. })
        ));
        assert!(matches!(
            queue.requeue_dead("default", Some("j-missing")).await,
            Err(JobsError::NotFound(_))
        ));
        assert_eq!(queue.requeue_dead("default", Some(&id)).await.unwrap(), 1);
        let job = queue.show(&id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Waiting, 0),
            "{}",
            b.name
        );
        assert_eq!(queue.stats("default").await.unwrap().waiting, 2);
    }
}

#[tokio::test]
async fn permanent_failure_goes_straight_to_dead_and_requeue_all_works() {
    for b in backends("permanent").await {
        let queue = b.open().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let mut spec = cmd_spec("default", &format!("p{i}"));
            spec.max_attempts = 5;
            ids.push(queue.enqueue(spec).await.unwrap());
            b.clock.advance_ms(1);
        }
        while let Some(lease) = queue.claim("w", &q(&["default"]), LEASE).await.unwrap() {
            let out = queue
                .fail(&lease, &Failure::permanent("program 'nope' not found"))
                .await
                .unwrap();
            assert_eq!(out, FailOutcome::Dead, "{}", b.name);
        }
        let dead = queue
            .list(&ListFilter {
                state: Some(JobState::Dead),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 3, "{}", b.name);
        assert!(dead.iter().all(|j| j.attempts == 1));
        assert_eq!(queue.requeue_dead("default", None).await.unwrap(), 3);
        assert_eq!(queue.stats("default").await.unwrap().waiting, 3);
    }
}

#[tokio::test]
async fn cancel_moves_waiting_delayed_and_running_jobs_to_dead_and_fences_the_worker() {
    for b in backends("cancel").await {
        let queue = b.open().await;
        let waiting = queue.enqueue(cmd_spec("default", "w")).await.unwrap();
        b.clock.advance_ms(1);
        let running = queue.enqueue(cmd_spec("default", "r")).await.unwrap();
        b.clock.advance_ms(1);
        let delayed = queue.enqueue(cmd_spec("other", "d")).await.unwrap();
        // Claim `running` (oldest first: take `waiting`, give it back, then take the next).
        let first = queue
            .claim("w1", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.job.id, waiting, "{}", b.name);
        queue.release(&first).await.unwrap();
        queue.cancel(&waiting, "cancelled: test").await.unwrap();
        let mut lease = queue
            .claim("w1", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.job.id, running, "{}", b.name);
        let d = queue
            .claim("w2", &q(&["other"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            queue.fail(&d, &Failure::retryable("later")).await.unwrap(),
            FailOutcome::Retry { .. }
        ));

        assert_eq!(
            queue.cancel(&running, "cancelled by acme").await.unwrap(),
            JobState::Running,
            "{}",
            b.name
        );
        assert_eq!(
            queue.cancel(&delayed, "cancelled").await.unwrap(),
            JobState::Delayed,
            "{}",
            b.name
        );
        // The worker that held the running job is fenced: it cannot renew or ack.
        assert!(
            matches!(
                queue.renew(&mut lease, LEASE, None).await,
                Err(JobsError::LeaseLost { .. })
            ),
            "{}",
            b.name
        );
        assert!(matches!(
            queue.ack(&lease, &JobOutcome::default()).await,
            Err(JobsError::LeaseLost { .. })
        ));
        for id in [&waiting, &running, &delayed] {
            let job = queue.show(id).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Dead, "{}: {job:?}", b.name);
            assert!(job.last_error.unwrap().starts_with("cancelled"));
        }
        assert_eq!(
            queue.stats("default").await.unwrap(),
            QueueStats {
                dead: 2,
                ..Default::default()
            },
            "{}",
            b.name
        );
        // Nothing is claimable, even after the delay would have passed.
        b.clock.advance_ms(3_600_000);
        assert!(queue
            .claim("w3", &q(&["default", "other"]), LEASE)
            .await
            .unwrap()
            .is_none());
        // Finished jobs cannot be cancelled; unknown ids are not found; requeue brings one back.
        assert!(matches!(
            queue.cancel(&running, "again").await,
            Err(JobsError::NotCancellable { .. })
        ));
        assert!(matches!(
            queue.cancel("j000000000000nope", "x").await,
            Err(JobsError::NotFound(_))
        ));
        assert_eq!(
            queue.requeue_dead("default", Some(&running)).await.unwrap(),
            1
        );
        let again = queue
            .claim("w3", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.job.id, running, "{}", b.name);
    }
}

#[tokio::test]
async fn release_gives_the_job_back_without_using_an_attempt() {
    for b in backends("release").await {
        let queue = b.open().await;
        let mut spec = cmd_spec("default", "r");
        spec.max_attempts = 1;
        let id = queue.enqueue(spec).await.unwrap();
        let lease = queue
            .claim("w1", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        queue.release(&lease).await.unwrap();
        let job = queue.show(&id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Waiting, 0),
            "{}",
            b.name
        );
        let lease2 = queue
            .claim("w2", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .expect("at once");
        assert_eq!(lease2.job.attempts, 1);
        assert!(matches!(
            queue.release(&lease).await,
            Err(JobsError::LeaseLost { .. })
        ));
    }
}

#[tokio::test]
async fn expired_lease_on_the_last_attempt_goes_to_dead() {
    for b in backends("lastexpire").await {
        let queue = b.open().await;
        let mut spec = cmd_spec("default", "crashes-worker");
        spec.max_attempts = 2;
        let id = queue.enqueue(spec).await.unwrap();
        for _ in 0..2 {
            queue
                .claim("w", &q(&["default"]), LEASE)
                .await
                .unwrap()
                .expect("claim");
            b.clock.advance_ms(10_001);
        }
        assert!(
            queue
                .claim("w", &q(&["default"]), LEASE)
                .await
                .unwrap()
                .is_none(),
            "{}",
            b.name
        );
        let job = queue.show(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Dead, "{}", b.name);
        assert!(job.last_error.unwrap_or_default().contains("lease expired"));
    }
}

#[tokio::test]
async fn purge_removes_finished_jobs_older_than_retention_only() {
    for b in backends("purge").await {
        let queue = b.open().await;
        let old_done = queue.enqueue(cmd_spec("default", "old")).await.unwrap();
        let l = queue
            .claim("w", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        queue.ack(&l, &JobOutcome::default()).await.unwrap();
        let old_dead = queue.enqueue(cmd_spec("default", "dead")).await.unwrap();
        let l = queue
            .claim("w", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        queue.fail(&l, &Failure::permanent("x")).await.unwrap();
        b.clock.advance_ms(3_600_000);
        let new_done = queue.enqueue(cmd_spec("default", "new")).await.unwrap();
        let l = queue
            .claim("w", &q(&["default"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        queue.ack(&l, &JobOutcome::default()).await.unwrap();
        let waiting = queue.enqueue(cmd_spec("default", "waiting")).await.unwrap();
        b.clock.advance_ms(1_000);

        let removed = queue.purge(Duration::from_secs(1800)).await.unwrap();
        assert_eq!(removed, 2, "{}", b.name);
        assert!(queue.show(&old_done).await.unwrap().is_none());
        assert!(queue.show(&old_dead).await.unwrap().is_none());
        assert!(queue.show(&new_done).await.unwrap().is_some());
        assert!(queue.show(&waiting).await.unwrap().is_some());
        let all = queue.list(&ListFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2, "{}", b.name);
        assert_eq!(
            queue.stats("default").await.unwrap(),
            QueueStats {
                waiting: 1,
                done: 1,
                ..Default::default()
            }
        );
    }
}

#[tokio::test]
async fn list_filters_and_orders_newest_first() {
    for b in backends("list").await {
        let queue = b.open().await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                queue
                    .enqueue(cmd_spec(
                        if i % 2 == 0 { "even" } else { "odd" },
                        &i.to_string(),
                    ))
                    .await
                    .unwrap(),
            );
            b.clock.advance_ms(10);
        }
        let all = queue.list(&ListFilter::default()).await.unwrap();
        let got: Vec<_> = all.iter().map(|j| j.id.clone()).collect();
        let mut want = ids.clone();
        want.reverse();
        assert_eq!(got, want, "{}", b.name);
        let even = queue
            .list(&ListFilter {
                queue: Some("even".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(even.len(), 3);
        let limited = queue
            .list(&ListFilter {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(limited.len(), 2);
        assert_eq!(limited[0].id, ids[4]);
        queue
            .claim("w", &q(&["odd"]), LEASE)
            .await
            .unwrap()
            .unwrap();
        let running = queue
            .list(&ListFilter {
                state: Some(JobState::Running),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(running.len(), 1, "{}", b.name);
        assert_eq!(running[0].spec.queue, "odd");
        assert_eq!(
            queue.queues().await.unwrap(),
            vec!["even".to_string(), "odd".to_string()]
        );
    }
}

#[tokio::test]
async fn invalid_specs_are_refused_with_a_reason() {
    for b in backends("invalid").await {
        let queue = b.open().await;
        let err = queue.enqueue(cmd_spec("no spaces", "x")).await.unwrap_err();
        assert!(err.to_string().contains("queue name"), "{}: {err}", b.name);
        let mut spec = cmd_spec("ok", "x");
        spec.max_attempts = 0;
        let err = queue.enqueue(spec).await.unwrap_err();
        assert!(
            err.to_string().contains("max_attempts"),
            "{}: {err}",
            b.name
        );
        assert!(queue.list(&ListFilter::default()).await.unwrap().is_empty());
    }
}

/// Many claimers on separate connections (for SQLite: separate pools, like separate processes)
/// race for the same jobs; each job is handed out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_share_a_job() {
    for b in backends("concurrent").await {
        let setup = b.open().await;
        let n = 60;
        for i in 0..n {
            setup
                .enqueue(cmd_spec("default", &i.to_string()))
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for w in 0..6 {
            let queue = b.open().await;
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(l) = queue
                    .claim(&format!("w{w}"), &q(&["default"]), LEASE)
                    .await
                    .unwrap()
                {
                    queue.ack(&l, &JobOutcome::default()).await.unwrap();
                    got.push(l.job.id);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!((total, all.len()), (n, n), "{}", b.name);
        assert_eq!(setup.stats("default").await.unwrap().done, n as u64);
    }
}
