//! The Kubernetes backend against the exact API calls, through kube's client over a
//! `tower-test` mock service: each test answers the requests one by one and checks method, path,
//! content type and body.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock;

use super::*;
use crate::controller::{Backend, Controller, QueueSource, QueueStats};
use crate::decide::Action;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn backend() -> (KubeBackend, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    (KubeBackend::new(client, "herd", FLEXIBLE_PDB), handle)
}

const POLICY: &str = r#"
[[workers]]
queue = "jobs"
jobs_per_worker = 10
max = 8
cooldown = "0s"

[[serving]]
name = "web"
target_invocations_per_minute = 225
target_memory_utilisation = 0.8
max = 6
"#;

fn policy() -> Policy {
    Policy::parse(POLICY, "test.toml").unwrap()
}

/// One expected request: method, path (with query), and the JSON body for PATCHes.
struct Expect {
    method: Method,
    path_and_query: String,
    body: Option<Value>,
    reply: Value,
}

/// Answers `expected` in order, failing on any difference; returns how many were served.
async fn serve(mut handle: Handle, expected: Vec<Expect>) -> usize {
    let mut n = 0;
    for e in expected {
        let (req, send) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "expected {} {} but the client stopped",
                e.method, e.path_and_query
            )
        });
        assert_eq!(req.method(), &e.method, "request {n}");
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        assert_eq!(pq, e.path_and_query, "request {n}");
        if let Some(want) = e.body {
            // Server-side apply (force=true) for the budget, JSON merge patches elsewhere.
            let kind = if e.path_and_query.contains("force=true") {
                "application/apply-patch+yaml"
            } else {
                "application/merge-patch+json"
            };
            assert_eq!(
                req.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some(kind),
                "request {n} must be {kind}"
            );
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let got: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(got, want, "request {n} body");
        }
        send.send_response(
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&e.reply).unwrap()))
                .unwrap(),
        );
        n += 1;
    }
    n
}

fn scale_reply(name: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": { "name": name, "namespace": "herd" },
        "spec": { "replicas": replicas }, "status": { "replicas": replicas }
    })
}

fn pod(name: &str, extra_meta: Value, phase: &str, ip: Option<&str>) -> Value {
    let mut meta = json!({ "name": name, "namespace": "herd" });
    if let Value::Object(m) = extra_meta {
        for (k, v) in m {
            meta[k] = v;
        }
    }
    let mut status = json!({ "phase": phase });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status })
}

fn pod_list(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": "PodList", "metadata": { "resourceVersion": "1" }, "items": items })
}

fn cost_patch(cost: &str) -> Value {
    json!({ "metadata": { "annotations": { DELETION_COST: cost } } })
}

async fn with_timeout<F: std::future::Future>(f: F) -> F::Output {
    // A safety net against a hung mock, not a synchronisation sleep.
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn start_workers_patches_the_deployment_scale() {
    let (b, handle) = backend();
    let p = policy();
    let server = tokio::spawn(serve(
        handle,
        vec![Expect {
            method: Method::PATCH,
            path_and_query: "/apis/apps/v1/namespaces/herd/deployments/herd-worker-jobs/scale?&fieldManager=herd-autoscaler"
                .into(),
            body: Some(json!({ "spec": { "replicas": 3 } })),
            reply: scale_reply("herd-worker-jobs", 3),
        }],
    ));
    let action = Action::StartWorkers {
        queue: "jobs".into(),
        from: 0,
        to: 3,
    };
    with_timeout(b.apply(&action, &p)).await.unwrap();
    assert_eq!(with_timeout(server).await.unwrap(), 1);
}

#[tokio::test]
async fn stop_workers_sets_deletion_costs_then_scales_down() {
    let (b, handle) = backend();
    let p = policy();
    let expected = vec![
        Expect {
            method: Method::PATCH,
            path_and_query: "/api/v1/namespaces/herd/pods/w-busy?&fieldManager=herd-autoscaler".into(),
            body: Some(cost_patch(COST_KEEP)),
            reply: pod("w-busy", json!({}), "Running", None),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/api/v1/namespaces/herd/pods/w-idle-1?&fieldManager=herd-autoscaler".into(),
            body: Some(cost_patch(COST_IDLE)),
            reply: pod("w-idle-1", json!({}), "Running", None),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/api/v1/namespaces/herd/pods/w-idle-2?&fieldManager=herd-autoscaler".into(),
            body: Some(cost_patch(COST_IDLE)),
            reply: pod("w-idle-2", json!({}), "Running", None),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/apis/apps/v1/namespaces/herd/deployments/herd-worker-jobs/scale?&fieldManager=herd-autoscaler"
                .into(),
            body: Some(json!({ "spec": { "replicas": 1 } })),
            reply: scale_reply("herd-worker-jobs", 1),
        },
    ];
    let server = tokio::spawn(serve(handle, expected));
    let action = Action::StopWorkers {
        queue: "jobs".into(),
        from: 3,
        to: 1,
        stop: vec!["w-idle-1".into(), "w-idle-2".into()],
        keep: vec!["w-busy".into()],
    };
    with_timeout(b.apply(&action, &p)).await.unwrap();
    assert_eq!(with_timeout(server).await.unwrap(), 4);
}

#[tokio::test]
async fn pdb_and_serving_patches() {
    let (b, handle) = backend();
    let p = policy();
    let expected = vec![
        Expect {
            method: Method::PATCH,
            path_and_query: "/apis/policy/v1/namespaces/herd/poddisruptionbudgets/herd-flexible?&force=true&fieldManager=herd-autoscaler"
                .into(),
            // Server-side apply of the whole budget: created on the first call, owned by the
            // autoscaler's field manager.
            body: Some(json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": { "name": "herd-flexible", "namespace": "herd",
                              "labels": { "app.kubernetes.io/name": "herd", "herd.dev/class": "flexible",
                                          "app.kubernetes.io/managed-by": "herd-autoscaler" } },
                "spec": { "maxUnavailable": 0,
                          "selector": { "matchLabels": { "app.kubernetes.io/name": "herd", "herd.dev/class": "flexible" } } }
            })),
            reply: json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": { "name": "herd-flexible", "namespace": "herd" },
                "spec": { "maxUnavailable": 0 }
            }),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/apis/apps/v1/namespaces/herd/deployments/herd-serve-web/scale?&fieldManager=herd-autoscaler"
                .into(),
            body: Some(json!({ "spec": { "replicas": 4 } })),
            reply: scale_reply("herd-serve-web", 4),
        },
    ];
    let server = tokio::spawn(serve(handle, expected));
    let pdb = Action::SetFlexibleMaxUnavailable {
        value: 0,
        schedule: Some("working-hours".into()),
    };
    with_timeout(b.apply(&pdb, &p)).await.unwrap();
    let serve_action = Action::ScaleServing {
        pool: "web".into(),
        from: 2,
        to: 4,
    };
    with_timeout(b.apply(&serve_action, &p)).await.unwrap();
    assert_eq!(with_timeout(server).await.unwrap(), 2);
}

#[tokio::test]
async fn listing_skips_terminating_and_finished_pods() {
    let (b, handle) = backend();
    let p = policy();
    let items = vec![
        pod("w1", json!({}), "Running", Some("10.0.0.1")),
        pod(
            "w2",
            json!({ "deletionTimestamp": "2026-11-23T12:00:00Z" }),
            "Running",
            None,
        ),
        pod("w3", json!({}), "Succeeded", None),
        pod("w4", json!({}), "Pending", None),
    ];
    let serve_items = vec![
        pod("s1", json!({}), "Running", Some("10.0.0.7")),
        pod("s2", json!({}), "Pending", None),
    ];
    let expected = vec![
        Expect {
            method: Method::GET,
            path_and_query: "/api/v1/namespaces/herd/pods?&labelSelector=app.kubernetes.io%2Fcomponent%3Dworker%2Cherd.dev%2Fpool%3Djobs".into(),
            body: None,
            reply: pod_list(items),
        },
        Expect {
            method: Method::GET,
            path_and_query: "/api/v1/namespaces/herd/pods?&labelSelector=app.kubernetes.io%2Fcomponent%3Dserve%2Cherd.dev%2Fpool%3Dweb".into(),
            body: None,
            reply: pod_list(serve_items),
        },
    ];
    let server = tokio::spawn(serve(handle, expected));
    let ws = with_timeout(b.workers(&p.workers[0])).await.unwrap();
    assert_eq!(ws, vec!["w1".to_string(), "w4".to_string()]);
    let ss = with_timeout(b.serving_instances(&p.serving[0]))
        .await
        .unwrap();
    assert_eq!(
        ss,
        vec![
            (
                "s1".to_string(),
                Some("http://10.0.0.7:8080/metrics".to_string())
            ),
            ("s2".to_string(), None),
        ]
    );
    assert_eq!(with_timeout(server).await.unwrap(), 2);
}

#[tokio::test]
async fn api_errors_are_reported_not_panicked() {
    let (b, mut handle) = backend();
    let p = policy();
    let server = tokio::spawn(async move {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .status(403)
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "deployments.apps \"herd-worker-jobs\" is forbidden", "reason": "Forbidden", "code": 403
                    }))
                    .unwrap(),
                ))
                .unwrap(),
        );
    });
    let action = Action::StartWorkers {
        queue: "jobs".into(),
        from: 0,
        to: 2,
    };
    let err = with_timeout(b.apply(&action, &p))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("patch deployments/herd-worker-jobs/scale"),
        "{err}"
    );
    assert!(err.contains("forbidden"), "{err}");
    with_timeout(server).await.unwrap();
}

struct FixedQueue(QueueStats);

impl QueueSource for FixedQueue {
    async fn stats(&self, _url: &str, _queue: &str) -> crate::Result<QueueStats> {
        Ok(self.0.clone())
    }
}

/// A whole tick: list worker pods, see which hold leases, keep the busy one, scale down the
/// idle ones, and set the PDB of the (absent) schedule's default.
#[tokio::test]
async fn a_tick_keeps_lease_holders_and_removes_idle_pods_first() {
    let (b, handle) = backend();
    let p = Policy::parse(
        "[defaults]\nqueue_url = \"redis://127.0.0.1:1/0\"\n[[workers]]\nqueue = \"jobs\"\njobs_per_worker = 10\nmax = 8\ncooldown = \"0s\"\n",
        "tick.toml",
    )
    .unwrap();
    let stats = QueueStats {
        waiting: 5,
        running: 1,
        lease_holders: vec!["w-b".into()],
    };
    let mut c = Controller::new(p, Backend::Kubernetes(b), FixedQueue(stats), None, false).unwrap();
    let items = vec![
        pod("w-a", json!({}), "Running", None),
        pod("w-b", json!({}), "Running", None),
        pod("w-c", json!({}), "Running", None),
    ];
    let expected = vec![
        Expect {
            method: Method::GET,
            path_and_query: "/api/v1/namespaces/herd/pods?&labelSelector=app.kubernetes.io%2Fcomponent%3Dworker%2Cherd.dev%2Fpool%3Djobs".into(),
            body: None,
            reply: pod_list(items),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/api/v1/namespaces/herd/pods/w-b?&fieldManager=herd-autoscaler".into(),
            body: Some(cost_patch(COST_KEEP)),
            reply: pod("w-b", json!({}), "Running", None),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/api/v1/namespaces/herd/pods/w-c?&fieldManager=herd-autoscaler".into(),
            body: Some(cost_patch(COST_IDLE)),
            reply: pod("w-c", json!({}), "Running", None),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/api/v1/namespaces/herd/pods/w-a?&fieldManager=herd-autoscaler".into(),
            body: Some(cost_patch(COST_IDLE)),
            reply: pod("w-a", json!({}), "Running", None),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/apis/apps/v1/namespaces/herd/deployments/herd-worker-jobs/scale?&fieldManager=herd-autoscaler".into(),
            body: Some(json!({ "spec": { "replicas": 1 } })),
            reply: scale_reply("herd-worker-jobs", 1),
        },
        Expect {
            method: Method::PATCH,
            path_and_query: "/apis/policy/v1/namespaces/herd/poddisruptionbudgets/herd-flexible?&force=true&fieldManager=herd-autoscaler".into(),
            body: Some(crate::kubernetes::flexible_pdb_object("herd", "herd-flexible", None, 1)),
            reply: json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": { "name": "herd-flexible", "namespace": "herd" },
                "spec": { "maxUnavailable": 1 }
            }),
        },
    ];
    let server = tokio::spawn(serve(handle, expected));
    let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
    let plan = with_timeout(c.tick(now)).await;
    assert_eq!(plan.actions.len(), 2, "{:?}", plan.actions);
    assert_eq!(with_timeout(server).await.unwrap(), 6);
    assert_eq!(c.state.flexible_max_unavailable, Some(1));
}
