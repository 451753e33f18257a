//! The Kubernetes backend: the same decisions, applied as API calls.
//!
//! - workers and serving replicas: a merge patch of the Deployment's `scale` subresource;
//! - before a worker scale-down: `controller.kubernetes.io/pod-deletion-cost` on the worker pods,
//!   -1000 on the idle ones chosen to go and 1000 on the rest, so the ReplicaSet controller
//!   removes idle pods first and leaves pods that hold a lease;
//! - the flexible-pod PodDisruptionBudget: a server-side apply of the whole budget (created on
//!   the first call), so `herd k8s manifests` does not render it and a re-apply of the manifests
//!   or a GitOps sync cannot reset the schedule's value;
//! - every write carries the field manager `herd-autoscaler` (`kubectl get -o yaml
//!   --show-managed-fields` shows which fields the autoscaler owns);
//! - observation: pods listed by label (`app.kubernetes.io/component`, `herd.dev/pool`), pods
//!   being deleted or finished are not counted.
//!
//! Pod labels and names match what [`crate::manifests`] renders.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use tracing::info;

use crate::decide::Action;
use crate::error::{Result, ScaleError};
use crate::policy::{Policy, ServingPool, WorkerPool};

/// The annotation the ReplicaSet controller reads to pick pods to delete on scale-down.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Cost given to idle worker pods chosen to go.
pub const COST_IDLE: &str = "-1000";
/// Cost given to worker pods that stay (busy ones above all).
pub const COST_KEEP: &str = "1000";
/// The label that holds a pod's component (`serve`, `worker`, `autoscaler`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The label that holds the pool (queue name or serving pool name).
pub const POOL_LABEL: &str = "herd.dev/pool";
/// The label that holds a pod's class, `fixed` or `flexible`.
pub const CLASS_LABEL: &str = "herd.dev/class";
/// Default name of the flexible-pod PodDisruptionBudget.
pub const FLEXIBLE_PDB: &str = "herd-flexible";
/// The label that holds the install's name (two installs in one namespace must not collide).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The field manager of every write the autoscaler makes.
pub const FIELD_MANAGER: &str = "herd-autoscaler";

fn write_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}

/// Patches the cluster the client points at.
pub struct KubeBackend {
    client: Client,
    namespace: String,
    flexible_pdb: String,
    instance: Option<String>,
}

fn kerr(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ScaleError {
    let what = what.into();
    move |source| ScaleError::Kube { what, source }
}

fn instance_part(instance: Option<&str>) -> String {
    instance
        .map(|i| format!("{INSTANCE_LABEL}={i},"))
        .unwrap_or_default()
}

/// Label selector of a worker pool's pods (`instance`: the install, when several share a namespace).
pub fn worker_selector(instance: Option<&str>, queue: &str) -> String {
    format!(
        "{}{COMPONENT_LABEL}=worker,{POOL_LABEL}={queue}",
        instance_part(instance)
    )
}

/// Label selector of a serving pool's pods.
pub fn serving_selector(instance: Option<&str>, pool: &str) -> String {
    format!(
        "{}{COMPONENT_LABEL}=serve,{POOL_LABEL}={pool}",
        instance_part(instance)
    )
}

fn counts(p: &Pod) -> bool {
    if p.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
}

impl KubeBackend {
    /// A backend over an existing client (tests pass a mocked one).
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        flexible_pdb: impl Into<String>,
    ) -> Self {
        KubeBackend {
            client,
            namespace: namespace.into(),
            flexible_pdb: flexible_pdb.into(),
            instance: None,
        }
    }

    /// Restricts the backend to one install (`app.kubernetes.io/instance`), as rendered by
    /// `herd k8s manifests --instance`.
    pub fn with_instance(mut self, instance: Option<String>) -> Self {
        self.instance = instance;
        self
    }

    /// Configures a client from the environment: in-cluster service account, else kubeconfig.
    /// `namespace` defaults to the client's (the pod's namespace in a cluster).
    pub async fn connect(namespace: Option<String>, flexible_pdb: String) -> Result<Self> {
        let client = Client::try_default()
            .await
            .map_err(|e| ScaleError::KubeConfig(e.to_string()))?;
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        Ok(KubeBackend::new(client, ns, flexible_pdb))
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Names of the live worker pods of a pool.
    pub async fn workers(&self, pool: &WorkerPool) -> Result<Vec<String>> {
        let sel = worker_selector(self.instance.as_deref(), &pool.queue);
        let list = self
            .pods()
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(kerr(format!("list pods {sel}")))?;
        Ok(list
            .items
            .iter()
            .filter(|p| counts(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect())
    }

    /// Live serving pods of a pool: `(name, metrics url once the pod has an IP)`.
    pub async fn serving_instances(
        &self,
        pool: &ServingPool,
    ) -> Result<Vec<(String, Option<String>)>> {
        let sel = serving_selector(self.instance.as_deref(), &pool.name);
        let list = self
            .pods()
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(kerr(format!("list pods {sel}")))?;
        Ok(list
            .items
            .iter()
            .filter(|p| counts(p))
            .filter_map(|p| {
                let name = p.metadata.name.clone()?;
                let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
                Some((
                    name,
                    ip.map(|ip| format!("http://{ip}:{}/metrics", pool.metrics_port)),
                ))
            })
            .collect())
    }

    async fn scale(&self, deployment: &str, replicas: u32) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = json!({ "spec": { "replicas": replicas } });
        api.patch_scale(deployment, &write_params(), &Patch::Merge(&patch))
            .await
            .map_err(kerr(format!("patch deployments/{deployment}/scale")))?;
        info!(target: "herd_scale", deployment, replicas, "patched scale");
        Ok(())
    }

    async fn deletion_cost(&self, pod: &str, cost: &str) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": { DELETION_COST: cost } } });
        self.pods()
            .patch(pod, &write_params(), &Patch::Merge(&patch))
            .await
            .map_err(kerr(format!("annotate pods/{pod}")))?;
        Ok(())
    }

    /// Applies one action.
    pub async fn apply(&self, action: &Action, policy: &Policy) -> Result<()> {
        match action {
            Action::StartWorkers { queue, to, .. } => {
                let dep = worker_deployment(policy, queue)?;
                self.scale(&dep, *to).await
            }
            Action::StopWorkers {
                queue,
                to,
                stop,
                keep,
                ..
            } => {
                let dep = worker_deployment(policy, queue)?;
                for pod in keep {
                    self.deletion_cost(pod, COST_KEEP).await?;
                }
                for pod in stop {
                    self.deletion_cost(pod, COST_IDLE).await?;
                }
                self.scale(&dep, *to).await
            }
            Action::ScaleServing { pool, to, .. } => {
                let dep = policy
                    .serving
                    .iter()
                    .find(|p| &p.name == pool)
                    .map(|p| p.deployment_name())
                    .ok_or_else(|| ScaleError::Process(format!("no serving pool '{pool}'")))?;
                self.scale(&dep, *to).await
            }
            Action::SetFlexibleMaxUnavailable { value, .. } => {
                let api: Api<PodDisruptionBudget> =
                    Api::namespaced(self.client.clone(), &self.namespace);
                let patch = flexible_pdb_object(
                    &self.namespace,
                    &self.flexible_pdb,
                    self.instance.as_deref(),
                    *value,
                );
                api.patch(
                    &self.flexible_pdb,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map_err(kerr(format!(
                    "patch poddisruptionbudgets/{}",
                    self.flexible_pdb
                )))?;
                info!(target: "herd_scale", pdb = %self.flexible_pdb, max_unavailable = value, "patched PDB");
                Ok(())
            }
        }
    }
}

/// The flexible-pod budget as the autoscaler owns it: every pod of class `flexible` (of one
/// install, when `instance` is set), `maxUnavailable` from the schedule.
pub fn flexible_pdb_object(
    namespace: &str,
    name: &str,
    instance: Option<&str>,
    max_unavailable: u32,
) -> serde_json::Value {
    let mut sel = json!({ "app.kubernetes.io/name": "herd", CLASS_LABEL: "flexible" });
    let mut labels = sel.clone();
    labels["app.kubernetes.io/managed-by"] = json!(FIELD_MANAGER);
    if let Some(i) = instance {
        sel[INSTANCE_LABEL] = json!(i);
        labels[INSTANCE_LABEL] = json!(i);
    }
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": { "maxUnavailable": max_unavailable, "selector": { "matchLabels": sel } },
    })
}

fn worker_deployment(policy: &Policy, queue: &str) -> Result<String> {
    policy
        .workers
        .iter()
        .find(|p| p.queue == queue)
        .map(|p| p.deployment_name())
        .ok_or_else(|| ScaleError::Process(format!("no worker pool '{queue}'")))
}

#[cfg(test)]
mod tests;
