//! The control loop: observe -> [`decide`] -> log and export -> apply (unless dry-run).
//!
//! The queue side comes in through [`QueueSource`] (the CLI adapts herd-jobs to it), so this crate
//! does not depend on the queue implementation.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{error, info, warn};

use crate::decide::{
    decide, Action, InstanceObs, Observed, Plan, QueueObs, ServingObs, State, WorkerObs,
};
use crate::error::{Result, ScaleError};
use crate::kubernetes::KubeBackend;
use crate::local::LocalBackend;
use crate::metrics_text::scrape;
use crate::policy::Policy;

/// What the autoscaler needs to know about one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub waiting: u64,
    pub running: u64,
    /// Ids of the workers that hold a lease now.
    pub lease_holders: Vec<String>,
}

/// Reads queue stats; implemented by the CLI over herd-jobs.
pub trait QueueSource {
    /// Stats of queue `queue` at `url`.
    fn stats(&self, url: &str, queue: &str) -> impl Future<Output = Result<QueueStats>> + Send;
}

/// Where decisions are applied.
pub enum Backend {
    Local(LocalBackend),
    Kubernetes(KubeBackend),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Kubernetes(_) => "kubernetes",
        }
    }
}

/// One autoscaler: policy, backend, queue source and the state `decide` carries across ticks.
pub struct Controller<Q> {
    pub policy: Policy,
    pub backend: Backend,
    pub queues: Q,
    pub state: State,
    pub dry_run: bool,
    /// Queue URL for pools that name none.
    pub queue_url: Option<String>,
    http: reqwest::Client,
    /// Bearer token sent with every `/metrics` scrape (`--metrics-token-file`); never logged.
    metrics_token: Option<String>,
}

impl<Q: QueueSource> Controller<Q> {
    pub fn new(
        policy: Policy,
        backend: Backend,
        queues: Q,
        queue_url: Option<String>,
        dry_run: bool,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ScaleError::Observe {
                what: "http client".into(),
                message: e.to_string(),
            })?;
        Ok(Controller {
            policy,
            backend,
            queues,
            state: State::default(),
            dry_run,
            queue_url,
            http,
            metrics_token: None,
        })
    }

    /// Sends `token` as a bearer token when scraping serving instances' `/metrics` (needed when
    /// they run with a tokens file: an admin token or one with `scopes = ["metrics"]`).
    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token;
        self
    }

    /// Observes every pool. A pool whose observation fails is left out (and logged), so
    /// `decide` leaves it alone this tick.
    pub async fn observe(&mut self) -> Observed {
        let mut observed = Observed::default();
        for pool in &self.policy.workers {
            let Some(url) = self.policy.queue_url(pool, self.queue_url.as_deref()) else {
                warn!(target: "herd_scale", queue = %pool.queue, "no queue URL for this pool; set queue_url or pass --queue-url");
                continue;
            };
            let stats = match self.queues.stats(url, &pool.queue).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(target: "herd_scale", queue = %pool.queue, error = %e, "cannot read queue stats; pool left alone this tick");
                    metrics::counter!("herd_scale_observe_errors_total", "kind" => "queue")
                        .increment(1);
                    continue;
                }
            };
            let ids = match &mut self.backend {
                Backend::Local(b) => Ok(b.workers(pool)),
                Backend::Kubernetes(b) => b.workers(pool).await,
            };
            let ids = match ids {
                Ok(ids) => ids,
                Err(e) => {
                    warn!(target: "herd_scale", queue = %pool.queue, error = %e, "cannot list workers; pool left alone this tick");
                    metrics::counter!("herd_scale_observe_errors_total", "kind" => "workers")
                        .increment(1);
                    continue;
                }
            };
            let holders: BTreeSet<&String> = stats.lease_holders.iter().collect();
            observed.queues.insert(
                pool.queue.clone(),
                QueueObs {
                    waiting: stats.waiting,
                    running: stats.running,
                    workers: ids
                        .into_iter()
                        .map(|id| WorkerObs {
                            busy: holders.contains(&id),
                            id,
                        })
                        .collect(),
                },
            );
        }
        for pool in &self.policy.serving {
            let instances = match &mut self.backend {
                Backend::Local(b) => Ok(b.serving_instances(pool)),
                Backend::Kubernetes(b) => b.serving_instances(pool).await,
            };
            let instances = match instances {
                Ok(i) => i,
                Err(e) => {
                    warn!(target: "herd_scale", pool = %pool.name, error = %e, "cannot list serving instances; pool left alone this tick");
                    metrics::counter!("herd_scale_observe_errors_total", "kind" => "serving")
                        .increment(1);
                    continue;
                }
            };
            let token = self.metrics_token.as_deref();
            let scrapes = instances.iter().map(|(id, url)| {
                let http = self.http.clone();
                async move {
                    match url {
                        Some(url) => match scrape(&http, id, url, token).await {
                            Ok(obs) => Ok(obs),
                            Err(e @ ScaleError::MetricsAuth { .. }) => Err(e),
                            Err(e) => {
                                info!(target: "herd_scale", instance = %id, error = %e, "no metrics from instance (starting?)");
                                Ok(InstanceObs { id: id.clone(), ..Default::default() })
                            }
                        },
                        None => Ok(InstanceObs { id: id.clone(), ..Default::default() }),
                    }
                }
            });
            let results = futures::future::join_all(scrapes).await;
            // A refused scrape is a configuration error, not zero load: leave the pool alone.
            let refused: Vec<&ScaleError> =
                results.iter().filter_map(|r| r.as_ref().err()).collect();
            if let Some(first) = refused.first() {
                error!(target: "herd_scale", pool = %pool.name, refused = refused.len(), error = %first, "serving instances refused the /metrics scrape; pool left alone this tick");
                metrics::counter!("herd_scale_observe_errors_total", "kind" => "metrics_auth")
                    .increment(1);
                continue;
            }
            let instances = results.into_iter().filter_map(|r| r.ok()).collect();
            observed
                .serving
                .insert(pool.name.clone(), ServingObs { instances });
        }
        observed
    }

    /// One tick at `now`: observe, decide, log, export, apply. Returns the plan.
    pub async fn tick(&mut self, now: Timestamp) -> Plan {
        let started = std::time::Instant::now();
        let observed = self.observe().await;
        let (plan, mut next) = decide(&observed, &self.state, &self.policy, now);
        record(&plan);
        if !self.dry_run {
            for action in &plan.actions {
                let res = match &mut self.backend {
                    Backend::Local(b) => b.apply(action, &self.policy),
                    Backend::Kubernetes(b) => b.apply(action, &self.policy).await,
                };
                match res {
                    Ok(()) => {
                        metrics::counter!("herd_scale_actions_total", "kind" => action.kind(), "status" => "ok").increment(1);
                    }
                    Err(e) => {
                        warn!(target: "herd_scale", action = %action, error = %e, "action failed; retried next tick");
                        metrics::counter!("herd_scale_actions_total", "kind" => action.kind(), "status" => "error").increment(1);
                        if let Action::SetFlexibleMaxUnavailable { .. } = action {
                            next.flexible_max_unavailable = self.state.flexible_max_unavailable;
                        }
                    }
                }
            }
        }
        self.state = next;
        metrics::counter!("herd_scale_ticks_total").increment(1);
        metrics::histogram!("herd_scale_tick_seconds").record(started.elapsed().as_secs_f64());
        plan
    }

    /// Stops what the local backend started.
    pub async fn shutdown(&mut self) {
        if let Backend::Local(b) = &mut self.backend {
            b.shutdown().await;
        }
    }
}

/// Logs every decision with its inputs and exports the desired/current sizes.
pub fn record(plan: &Plan) {
    for d in &plan.decisions {
        info!(
            target: "herd_scale",
            kind = d.kind,
            pool = %d.pool,
            current = d.current,
            desired = d.desired,
            inputs = %d.inputs,
            reason = %d.reason,
            schedule = plan.schedule.as_deref().unwrap_or("none"),
            "decision"
        );
        let labels = [("kind", d.kind.to_string()), ("pool", d.pool.clone())];
        metrics::gauge!("herd_scale_desired_replicas", &labels).set(f64::from(d.desired));
        metrics::gauge!("herd_scale_current_replicas", &labels).set(f64::from(d.current));
    }
    metrics::counter!("herd_scale_decisions_total").increment(plan.decisions.len() as u64);
}
