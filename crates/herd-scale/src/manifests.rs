//! `herd k8s manifests`: ready-to-apply objects for a herd installation that serves a release,
//! built from the typed `k8s-openapi` structs (serialized to JSON values only at the end).
//!
//! What an install is:
//! - **serving** (per pool): `herd serve --channel <channel>` reading the release from the
//!   registry (PostgreSQL URL in the connections Secret, `HERD_REGISTRY`) and fetching artifacts
//!   from the S3-compatible store (`HERD_ARTIFACTS` + `AWS_*` from the Secret) into an
//!   `emptyDir` disk cache (`--artifact-cache`); bearer tokens on (`--tokens`, a Secret mounted as
//!   a file; an empty tokens file refuses every request: closed by default); a startupProbe, a
//!   readinessProbe on `/v2/health/ready`, a preStop sleep so endpoints and the router drop the
//!   pod before its listener closes; topology spread over zones and nodes; no `replicas` (the
//!   autoscaler owns it); a headless Service the router resolves;
//! - **router** (per pool): HAProxy (see [`crate::haproxy`]) hashing on the model, replicas
//!   found through the headless Service's DNS (`server-template` + `resolvers`), its config in a
//!   ConfigMap, a ClusterIP Service as the entry point for clients;
//! - **workers** (per queue): `herd worker` with only the queue URL (no registry password: no job
//!   kind reads the registry);
//! - **Redis** for the queue, with a password (`--requirepass`; the password is in the queue URL);
//! - **autoscaler**: RBAC for exactly its calls; it creates and changes the flexible-pod
//!   PodDisruptionBudget itself (server-side apply, field manager `herd-autoscaler`), so that
//!   budget is *not* in the rendered files and a re-apply or GitOps sync cannot undo the schedule;
//! - **NetworkPolicies**: ingress denied to every pod of the install, then allowed: clients ->
//!   router; router (and the autoscaler, which reads `/metrics`) -> serving; workers and the
//!   autoscaler -> Redis. PostgreSQL and the object store are outside the install (URLs).
//! - every pod meets the Pod Security `restricted` profile (non-root, no privilege escalation,
//!   all capabilities dropped, seccomp RuntimeDefault, read-only root filesystem with `emptyDir`
//!   volumes where something is written), and the Namespace enforces it.
//! - labels: the recommended `app.kubernetes.io/*` set; selectors include `instance`, and every
//!   name starts with the instance, so two installs in one namespace do not collide.
//!
//! Placement (unchanged): two classes of pods on separate node groups. **fixed** (the
//! autoscaler): never evicted by the cluster autoscaler (`safe-to-evict: "false"`), PDB
//! maxUnavailable 0. **flexible** (serving, router, workers, Redis): evictable; the flexible PDB's
//! maxUnavailable is switched by schedule by the autoscaler. Required node affinity to the
//! group, required pod anti-affinity against the other class on the same node. Memory requests
//! equal limits (no overcommit); CPU requests below limits.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    SleepAction, TCPSocketAction, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::error::{Result, ScaleError};
use crate::haproxy::{HaproxyConfig, Servers, READY_PATH};
use crate::kubernetes::{CLASS_LABEL, COMPONENT_LABEL, INSTANCE_LABEL, POOL_LABEL};

pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The port every herd HTTP server listens on inside its pod.
pub const SERVE_PORT: i32 = 8080;
/// Where the serving pod keeps fetched artifacts (an `emptyDir`).
pub const ARTIFACT_CACHE_DIR: &str = "/var/cache/herd/artifacts";
/// Where the tokens Secret is mounted, and the file in it.
pub const TOKENS_DIR: &str = "/etc/herd/tokens";
pub const TOKENS_FILE: &str = "/etc/herd/tokens/tokens.toml";
/// Where the autoscaler finds the token it sends when scraping `/metrics` (the `token` key of
/// the `<instance>-metrics-token` Secret, which a ServiceMonitor uses too).
pub const METRICS_TOKEN_DIR: &str = "/etc/herd-metrics";
pub const METRICS_TOKEN_FILE: &str = "/etc/herd-metrics/token";
pub const METRICS_TOKEN_KEY: &str = "token";
/// Uid/gid of the herd image's user (deploy/Containerfile).
pub const HERD_UID: i64 = 10001;
/// Uid of the `haproxy` user of the official HAProxy image.
pub const HAPROXY_UID: i64 = 99;
/// Uid of the `redis` user of the official Redis image.
pub const REDIS_UID: i64 = 999;

/// What to render.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub namespace: String,
    /// Name of this install: prefix of every object name and `app.kubernetes.io/instance`.
    pub instance: String,
    /// The herd image (built from deploy/Containerfile).
    pub image: String,
    /// The HAProxy image for the router (2.6 or newer).
    pub router_image: String,
    /// The Redis image for the queue.
    pub redis_image: String,
    /// One worker Deployment per queue.
    pub queues: Vec<String>,
    /// One serving Deployment + router per pool.
    pub serving_pools: Vec<String>,
    /// The registry channel the serving pods serve (`herd serve --channel`).
    pub channel: String,
    /// Policy TOML for the autoscaler's ConfigMap (a default is generated when `None`).
    pub policy: Option<String>,
    /// Registry database (PostgreSQL URL), into the connections Secret as `HERD_REGISTRY`.
    pub registry_url: String,
    /// Artifact store (`s3://bucket/prefix`), `HERD_ARTIFACTS`.
    pub artifacts_url: String,
    /// S3-compatible endpoint (MinIO: `http://minio:9000`); `None` for AWS.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    /// Password of the install's Redis (also put into the queue URL).
    pub redis_password: String,
    /// Contents of the tokens file (TOML, `herd token new`); the default has no token, so every
    /// request is refused until tokens are added.
    pub tokens: String,
    /// The bearer token the autoscaler (and a ServiceMonitor) send to serving pods' `/metrics`:
    /// an admin token or one with `scopes = ["metrics"]` in `tokens` (`herd token new --scope
    /// metrics`). The default is a placeholder the servers refuse, and the autoscaler says so.
    pub metrics_token: String,
    /// Node label that names the node group; nodes carry `<label>=fixed` or `<label>=flexible`.
    pub node_group_label: String,
    pub fixed_group: String,
    pub flexible_group: String,
    /// Model memory budget of each serving pod, bytes.
    pub serve_memory_budget: u64,
    /// Size limit of each serving pod's artifact disk cache, bytes.
    pub artifact_cache_size: u64,
    /// Replicas the router can route to per pool (`server-template` slots).
    pub router_slots: u32,
    /// HAProxy pods per pool.
    pub router_replicas: i32,
    /// Cluster DNS domain (for the headless Service names the router resolves).
    pub cluster_domain: String,
    /// Also render a Prometheus-operator ServiceMonitor per serving pool (a CRD: needs the operator).
    pub service_monitor: bool,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            namespace: "herd".into(),
            instance: "herd".into(),
            image: "herd:0.1.0".into(),
            router_image: "haproxy:2.6".into(),
            redis_image: "redis:7.2".into(),
            queues: vec!["default".into()],
            serving_pools: vec!["default".into()],
            channel: "production".into(),
            policy: None,
            registry_url: "postgres://herd:CHANGE-ME@herd-postgres:5432/herd".into(),
            artifacts_url: "s3://herd-artifacts/models".into(),
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: "CHANGE-ME".into(),
            s3_secret_access_key: "CHANGE-ME".into(),
            redis_password: "CHANGE-ME".into(),
            tokens: "# Add tokens with `herd token new --tenant NAME` (no token: every request is refused).\ntoken = []\n".into(),
            metrics_token: "CHANGE-ME".into(),
            node_group_label: "herd.dev/node-group".into(),
            fixed_group: "fixed".into(),
            flexible_group: "flexible".into(),
            serve_memory_budget: 2 << 30,
            artifact_cache_size: 10 << 30,
            router_slots: 32,
            router_replicas: 2,
            cluster_domain: "cluster.local".into(),
            service_monitor: false,
        }
    }
}

/// A pod class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Fixed,
    Flexible,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Fixed => "fixed",
            Class::Flexible => "flexible",
        }
    }
    fn other(self) -> Class {
        match self {
            Class::Fixed => Class::Flexible,
            Class::Flexible => Class::Fixed,
        }
    }
    /// The value of `cluster-autoscaler.kubernetes.io/safe-to-evict` for this class.
    pub fn safe_to_evict(self) -> &'static str {
        match self {
            Class::Fixed => "false",
            Class::Flexible => "true",
        }
    }
}

/// A DNS-1123 label: lowercase alphanumerics and '-', 1..=63, alphanumeric at both ends.
fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ScaleError::Manifest(format!(
            "{what} '{name}' is not a valid Kubernetes name: use lowercase letters, digits and '-', at most {max} characters"
        )))
    }
}

fn mib(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1 << 20))
}

fn q(s: impl Into<String>) -> Quantity {
    Quantity(s.into())
}

fn s(v: &str) -> String {
    v.to_string()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

/// Percent-encodes a URL userinfo part (RFC 3986 unreserved characters pass).
fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: s(name),
        value: Some(s(value)),
        ..Default::default()
    }
}

fn resources(cpu_req: &str, cpu_lim: &str, mem: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [(s("cpu"), q(cpu_req)), (s("memory"), q(mem))]
                .into_iter()
                .collect(),
        ),
        limits: Some(
            [(s("cpu"), q(cpu_lim)), (s("memory"), q(mem))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    }
}

/// The container half of the restricted profile.
fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec![s("ALL")]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: s("RuntimeDefault"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod half of the restricted profile, for the image's user `uid`.
fn restricted_pod(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: s("RuntimeDefault"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str, limit: Option<u64>) -> Volume {
    Volume {
        name: s(name),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: limit.map(|b| q(mib(b))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A volume of the Secret `secret`, files readable by owner and group only (0440).
fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: s(name),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: s(name),
        mount_path: s(path),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(s(path)),
            port: IntOrString::String(s("http")),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(s(name)),
        container_port: p,
        ..Default::default()
    }
}

fn to_value<T: serde::Serialize>(o: &T) -> Result<Value> {
    serde_json::to_value(o).map_err(|e| ScaleError::Manifest(format!("cannot serialize: {e}")))
}

impl ManifestOptions {
    fn group(&self, class: Class) -> &str {
        match class {
            Class::Fixed => &self.fixed_group,
            Class::Flexible => &self.flexible_group,
        }
    }

    /// `<instance>-<suffix>`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.instance)
    }

    /// Labels that select a component's pods (stable: never change them on upgrade).
    pub fn selector(&self, component: &str, pool: Option<&str>) -> BTreeMap<String, String> {
        let mut l = map(&[
            (NAME_LABEL, "herd"),
            (INSTANCE_LABEL, &self.instance),
            (COMPONENT_LABEL, component),
        ]);
        if let Some(p) = pool {
            l.insert(s(POOL_LABEL), s(p));
        }
        l
    }

    fn labels(
        &self,
        component: &str,
        pool: Option<&str>,
        class: Option<Class>,
    ) -> BTreeMap<String, String> {
        let mut l = self.selector(component, pool);
        l.insert(s(PART_OF_LABEL), s("herd"));
        l.insert(s(MANAGED_BY_LABEL), s("herd"));
        l.insert(s(VERSION_LABEL), s(env!("CARGO_PKG_VERSION")));
        if let Some(c) = class {
            l.insert(s(CLASS_LABEL), s(c.as_str()));
        }
        l
    }

    fn install_labels(&self) -> BTreeMap<String, String> {
        map(&[
            (NAME_LABEL, "herd"),
            (INSTANCE_LABEL, &self.instance),
            (PART_OF_LABEL, "herd"),
            (MANAGED_BY_LABEL, "herd"),
        ])
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(s(name)),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        }
    }

    fn affinity(&self, class: Class) -> Affinity {
        Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: self.node_group_label.clone(),
                            operator: s("In"),
                            values: Some(vec![s(self.group(class))]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: s(CLASS_LABEL),
                            operator: s("In"),
                            values: Some(vec![s(class.other().as_str())]),
                        }]),
                        ..Default::default()
                    }),
                    topology_key: s("kubernetes.io/hostname"),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tolerations(&self, class: Class) -> Vec<Toleration> {
        // Node groups are often tainted so nothing else lands there; tolerate our own taint.
        vec![Toleration {
            key: Some(self.node_group_label.clone()),
            operator: Some(s("Equal")),
            value: Some(s(self.group(class))),
            effect: Some(s("NoSchedule")),
            ..Default::default()
        }]
    }

    /// A Deployment of `spec` pods with the class's placement and the restricted profile.
    #[allow(clippy::too_many_arguments)]
    fn deployment(
        &self,
        name: &str,
        component: &str,
        pool: Option<&str>,
        class: Class,
        replicas: Option<i32>,
        strategy: Option<DeploymentStrategy>,
        mut spec: PodSpec,
    ) -> Deployment {
        let labels = self.labels(component, pool, Some(class));
        spec.affinity = Some(self.affinity(class));
        spec.tolerations = Some(self.tolerations(class));
        spec.automount_service_account_token = Some(spec.service_account_name.is_some());
        for c in &mut spec.containers {
            c.security_context = Some(restricted_container());
            c.image_pull_policy = Some(s("IfNotPresent"));
        }
        Deployment {
            metadata: self.meta(name, labels.clone()),
            spec: Some(DeploymentSpec {
                replicas,
                strategy,
                selector: LabelSelector {
                    match_labels: Some(self.selector(component, pool)),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        annotations: Some(map(&[(SAFE_TO_EVICT, class.safe_to_evict())])),
                        ..Default::default()
                    }),
                    spec: Some(spec),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn secret_env(&self, name: &str) -> EnvVar {
        EnvVar {
            name: s(name),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: self.name("connections"),
                    key: s(name),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The queue URL the workers and the autoscaler use (the password inside).
    pub fn queue_url(&self) -> String {
        format!(
            "redis://:{}@{}:6379/0",
            pct(&self.redis_password),
            self.name("redis")
        )
    }

    /// The DNS name of a pool's headless serving Service.
    pub fn serving_service_host(&self, pool: &str) -> String {
        format!(
            "{}.{}.svc.{}",
            self.name(&format!("serve-{pool}")),
            self.namespace,
            self.cluster_domain
        )
    }

    /// The HAProxy configuration of a pool's router.
    pub fn router_config(&self, pool: &str) -> Result<String> {
        HaproxyConfig {
            bind: format!("0.0.0.0:{SERVE_PORT}"),
            servers: Servers::Dns {
                service: self.serving_service_host(pool),
                port: SERVE_PORT as u16,
                slots: self.router_slots,
            },
            log_stdout: true,
            ..Default::default()
        }
        .render()
    }

    fn default_policy(&self) -> String {
        let mut p = String::from(
            "# herd autoscaler policy (see `herd autoscale --help`).\n[defaults]\nflexible_max_unavailable = 1\n",
        );
        for q in &self.queues {
            p.push_str(&format!(
                "\n[[workers]]\nqueue = \"{q}\"\ndeployment = \"{}\"\njobs_per_worker = 10\nmin = 0\nmax = 20\ncooldown = \"120s\"\n",
                self.name(&format!("worker-{q}"))
            ));
        }
        for s in &self.serving_pools {
            p.push_str(&format!(
                "\n[[serving]]\nname = \"{s}\"\ndeployment = \"{}\"\ntarget_invocations_per_minute = 225\ntarget_memory_utilisation = 0.8\nstabilisation_window = \"300s\"\ntolerance = 0.1\nmin = 2\nmax = {}\nmetrics_port = {SERVE_PORT}\n",
                self.name(&format!("serve-{s}")),
                self.router_slots.min(20),
            ));
        }
        p.push_str(
            "\n[[schedule]]\nname = \"working-hours\"\ndays = [\"weekdays\"]\nwindow = \"08:00-19:00\"\ntimezone = \"UTC\"\nflexible_max_unavailable = 0\n",
        );
        p
    }

    fn validate(&self) -> Result<()> {
        check_name("namespace", &self.namespace, 63)?;
        check_name("instance", &self.instance, 30)?;
        for q in &self.queues {
            check_name("queue", q, 63 - self.instance.len() - "-worker-".len())?;
        }
        for p in &self.serving_pools {
            check_name(
                "serving pool",
                p,
                63 - self.instance.len() - "-router-".len(),
            )?;
        }
        for (what, v) in [
            ("--image", &self.image),
            ("--router-image", &self.router_image),
            ("--redis-image", &self.redis_image),
            ("--channel", &self.channel),
            ("--registry-url", &self.registry_url),
            ("--artifacts-url", &self.artifacts_url),
            ("--redis-password", &self.redis_password),
            ("the metrics token", &self.metrics_token),
        ] {
            if v.trim().is_empty() {
                return Err(ScaleError::Manifest(format!("{what} must not be empty")));
            }
        }
        if !self.artifacts_url.starts_with("s3://") {
            return Err(ScaleError::Manifest(format!(
                "--artifacts-url '{}' must be s3://bucket[/prefix]: serving pods fetch from an S3-compatible store",
                self.artifacts_url
            )));
        }
        if self.serve_memory_budget < (16 << 20) {
            return Err(ScaleError::Manifest(
                "the serving memory budget must be at least 16MiB".into(),
            ));
        }
        if self.artifact_cache_size < (64 << 20) {
            return Err(ScaleError::Manifest(
                "the artifact cache must be at least 64MiB".into(),
            ));
        }
        if self.router_replicas < 1 {
            return Err(ScaleError::Manifest(
                "--router-replicas must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Renders every object, in apply order.
    pub fn render(&self) -> Result<Vec<Value>> {
        self.validate()?;
        let policy = self.policy.clone().unwrap_or_else(|| self.default_policy());
        let ns = &self.namespace;
        let mut out: Vec<Value> = Vec::new();

        // The namespace enforces the restricted Pod Security profile on everything in it.
        out.push(to_value(&Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(map(&[
                    (NAME_LABEL, "herd"),
                    (PART_OF_LABEL, "herd"),
                    ("pod-security.kubernetes.io/enforce", "restricted"),
                    ("pod-security.kubernetes.io/enforce-version", "latest"),
                    ("pod-security.kubernetes.io/warn", "restricted"),
                    ("pod-security.kubernetes.io/audit", "restricted"),
                ])),
                ..Default::default()
            },
            ..Default::default()
        })?);

        // Connections: each pod reads only the keys it needs (secretKeyRef per variable).
        let mut conn = BTreeMap::new();
        conn.insert(s("HERD_REGISTRY"), self.registry_url.clone());
        conn.insert(s("HERD_ARTIFACTS"), self.artifacts_url.clone());
        conn.insert(s("AWS_ACCESS_KEY_ID"), self.s3_access_key_id.clone());
        conn.insert(
            s("AWS_SECRET_ACCESS_KEY"),
            self.s3_secret_access_key.clone(),
        );
        conn.insert(s("AWS_DEFAULT_REGION"), self.s3_region.clone());
        if let Some(ep) = &self.s3_endpoint {
            conn.insert(s("AWS_ENDPOINT_URL"), ep.clone());
        }
        conn.insert(s("HERD_QUEUE_URL"), self.queue_url());
        conn.insert(s("REDIS_PASSWORD"), self.redis_password.clone());
        out.push(to_value(&Secret {
            metadata: self.meta(&self.name("connections"), self.install_labels()),
            type_: Some(s("Opaque")),
            string_data: Some(conn),
            ..Default::default()
        })?);
        out.push(to_value(&Secret {
            metadata: self.meta(&self.name("tokens"), self.install_labels()),
            type_: Some(s("Opaque")),
            string_data: Some(
                [(s("tokens.toml"), self.tokens.clone())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        })?);
        // The /metrics token of the autoscaler (a file) and of an optional ServiceMonitor.
        out.push(to_value(&Secret {
            metadata: self.meta(&self.name("metrics-token"), self.install_labels()),
            type_: Some(s("Opaque")),
            string_data: Some(
                [(s(METRICS_TOKEN_KEY), self.metrics_token.trim().to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        })?);
        out.push(to_value(&ConfigMap {
            metadata: self.meta(&self.name("config"), self.install_labels()),
            data: Some([(s("policy.toml"), policy)].into_iter().collect()),
            ..Default::default()
        })?);

        // Ingress is denied to every pod of the install unless a policy below allows it.
        out.push(to_value(&NetworkPolicy {
            metadata: self.meta(&self.name("default-deny-ingress"), self.install_labels()),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(map(&[
                        (NAME_LABEL, "herd"),
                        (INSTANCE_LABEL, &self.instance),
                    ])),
                    ..Default::default()
                }),
                policy_types: Some(vec![s("Ingress")]),
                ingress: None,
                ..Default::default()
            }),
        })?);

        let budget = self.serve_memory_budget;
        // Memory request = budget + 25% + 256Mi runtime overhead, = limit.
        let serve_mem = mib(budget + budget / 4 + (256 << 20));
        for pool in &self.serving_pools {
            out.extend(self.serving(pool, &serve_mem)?);
        }
        for queue in &self.queues {
            out.push(to_value(&self.worker(queue))?);
        }
        out.extend(self.redis()?);
        out.extend(self.autoscaler(ns)?);

        // The fixed class never loses a pod to a voluntary disruption. (The flexible budget is
        // created and switched by the autoscaler: not rendered, so a re-apply cannot undo it.)
        let fixed_sel = map(&[
            (NAME_LABEL, "herd"),
            (INSTANCE_LABEL, &self.instance),
            (CLASS_LABEL, "fixed"),
        ]);
        let mut l = self.install_labels();
        l.insert(s(CLASS_LABEL), s("fixed"));
        out.push(to_value(&PodDisruptionBudget {
            metadata: self.meta(&self.name("fixed"), l),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(0)),
                selector: Some(LabelSelector {
                    match_labels: Some(fixed_sel),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })?);

        if self.service_monitor {
            for pool in &self.serving_pools {
                // A CRD of the Prometheus operator: not in k8s-openapi, so plain JSON.
                out.push(serde_json::json!({
                    "apiVersion": "monitoring.coreos.com/v1",
                    "kind": "ServiceMonitor",
                    "metadata": self.meta(&self.name(&format!("serve-{pool}")), self.labels("serve", Some(pool), None)),
                    "spec": {
                        "selector": { "matchLabels": self.selector("serve", Some(pool)) },
                        // /metrics needs a token with the metrics scope: the same Secret as the
                        // autoscaler's.
                        "endpoints": [{
                            "port": "http",
                            "path": "/metrics",
                            "interval": "30s",
                            "authorization": {
                                "type": "Bearer",
                                "credentials": { "name": self.name("metrics-token"), "key": METRICS_TOKEN_KEY },
                            },
                        }],
                    },
                }));
            }
        }
        Ok(out)
    }

    fn serving(&self, pool: &str, serve_mem: &str) -> Result<Vec<Value>> {
        let name = self.name(&format!("serve-{pool}"));
        let budget_mib = self.serve_memory_budget.div_ceil(1 << 20);
        // Exactly the flags and variables `herd serve` reads (crates/herd serve + registry args).
        let args = vec![
            s("serve"),
            s("--channel"),
            self.channel.clone(),
            s("--addr"),
            format!("0.0.0.0:{SERVE_PORT}"),
            s("--memory-budget"),
            format!("{budget_mib}MiB"),
            s("--artifact-cache"),
            s(ARTIFACT_CACHE_DIR),
            s("--tokens"),
            s(TOKENS_FILE),
            // After the preStop sleep: readiness 503 while still answering, so the router's
            // checks (1s, fall 2) take the pod out of the ring before the listener closes.
            s("--drain-delay"),
            s("5"),
        ];
        let mut env = vec![
            self.secret_env("HERD_REGISTRY"),
            self.secret_env("HERD_ARTIFACTS"),
            self.secret_env("AWS_ACCESS_KEY_ID"),
            self.secret_env("AWS_SECRET_ACCESS_KEY"),
            self.secret_env("AWS_DEFAULT_REGION"),
        ];
        if self.s3_endpoint.is_some() {
            env.push(self.secret_env("AWS_ENDPOINT_URL"));
        }
        env.push(env_var_static("HERD_NO_AUTO_INSTALL", "true"));
        env.push(env_var_static("HERD_LOG_JSON", "true"));
        let container = Container {
            name: s("serve"),
            image: Some(self.image.clone()),
            args: Some(args),
            ports: Some(vec![port("http", SERVE_PORT)]),
            env: Some(env),
            // Up to 3 minutes to start (the runtime, the channel's first fetch).
            startup_probe: Some(http_probe("/v2/health/live", 2, 90)),
            readiness_probe: Some(http_probe(READY_PATH, 2, 1)),
            liveness_probe: Some(http_probe("/v2/health/live", 10, 3)),
            // Endpoints and the router's checks drop the pod before SIGTERM closes the listener.
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(SleepAction { seconds: 5 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: Some(resources("1", "2", serve_mem)),
            volume_mounts: Some(vec![
                mount("artifact-cache", ARTIFACT_CACHE_DIR, false),
                mount("tokens", TOKENS_DIR, true),
                mount("tmp", "/tmp", false),
            ]),
            ..Default::default()
        };
        let sel = self.selector("serve", Some(pool));
        let spread = |key: &str| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: s(key),
            when_unsatisfiable: s("ScheduleAnyway"),
            label_selector: Some(LabelSelector {
                match_labels: Some(sel.clone()),
                ..Default::default()
            }),
            match_label_keys: Some(vec![s("pod-template-hash")]),
            ..Default::default()
        };
        let spec = PodSpec {
            // preStop 5s + drain delay 5s + the request timeout (30s) + margin.
            termination_grace_period_seconds: Some(50),
            security_context: Some(restricted_pod(HERD_UID)),
            containers: vec![container],
            topology_spread_constraints: Some(vec![
                spread("topology.kubernetes.io/zone"),
                spread("kubernetes.io/hostname"),
            ]),
            volumes: Some(vec![
                empty_dir("artifact-cache", Some(self.artifact_cache_size)),
                secret_volume("tokens", self.name("tokens")),
                empty_dir("tmp", Some(256 << 20)),
            ]),
            ..Default::default()
        };
        // No `replicas`: the autoscaler owns it, and re-applying must not reset it.
        let dep = self.deployment(
            &name,
            "serve",
            Some(pool),
            Class::Flexible,
            None,
            None,
            spec,
        );
        // Headless: the router resolves one A record per ready pod.
        let svc = Service {
            metadata: self.meta(&name, self.labels("serve", Some(pool), None)),
            spec: Some(ServiceSpec {
                cluster_ip: Some(s("None")),
                selector: Some(sel.clone()),
                ports: Some(vec![ServicePort {
                    name: Some(s("http")),
                    port: SERVE_PORT,
                    target_port: Some(IntOrString::String(s("http"))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Only the router (and the autoscaler, for /metrics) reach serving pods.
        let mut from = vec![
            self.peer("router", Some(pool)),
            self.peer("autoscaler", None),
        ];
        if self.service_monitor {
            // Prometheus scrapes from its own namespace.
            from.push(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(map(&[("app.kubernetes.io/name", "prometheus")])),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let np_serve = self.allow(&name, "serve", Some(pool), Some(from), SERVE_PORT);

        // The router.
        let rname = self.name(&format!("router-{pool}"));
        let rcfg = ConfigMap {
            metadata: self.meta(&rname, self.labels("router", Some(pool), None)),
            data: Some(
                [(s("haproxy.cfg"), self.router_config(pool)?)]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        };
        let rcontainer = Container {
            name: s("haproxy"),
            image: Some(self.router_image.clone()),
            command: Some(vec![
                s("haproxy"),
                s("-db"),
                s("-f"),
                s("/usr/local/etc/haproxy/haproxy.cfg"),
            ]),
            ports: Some(vec![port("http", SERVE_PORT)]),
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::String(s("http")),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            resources: Some(resources("250m", "1", "256Mi")),
            volume_mounts: Some(vec![
                mount("config", "/usr/local/etc/haproxy", true),
                mount("tmp", "/tmp", false),
            ]),
            ..Default::default()
        };
        let rspec = PodSpec {
            termination_grace_period_seconds: Some(30),
            security_context: Some(restricted_pod(HAPROXY_UID)),
            containers: vec![rcontainer],
            volumes: Some(vec![
                Volume {
                    name: s("config"),
                    config_map: Some(ConfigMapVolumeSource {
                        name: rname.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                empty_dir("tmp", Some(64 << 20)),
            ]),
            ..Default::default()
        };
        let rdep = self.deployment(
            &rname,
            "router",
            Some(pool),
            Class::Flexible,
            Some(self.router_replicas),
            None,
            rspec,
        );
        let rsvc = Service {
            metadata: self.meta(&rname, self.labels("router", Some(pool), None)),
            spec: Some(ServiceSpec {
                selector: Some(self.selector("router", Some(pool))),
                ports: Some(vec![ServicePort {
                    name: Some(s("http")),
                    port: SERVE_PORT,
                    target_port: Some(IntOrString::String(s("http"))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Clients reach the router from anywhere (the tokens guard the serving pods).
        let np_router = self.allow(&rname, "router", Some(pool), None, SERVE_PORT);
        Ok(vec![
            to_value(&dep)?,
            to_value(&svc)?,
            to_value(&np_serve)?,
            to_value(&rcfg)?,
            to_value(&rdep)?,
            to_value(&rsvc)?,
            to_value(&np_router)?,
        ])
    }

    fn peer(&self, component: &str, pool: Option<&str>) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(self.selector(component, pool)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Allows ingress to a component's pods on `port` from `from` (`None`: from anywhere).
    fn allow(
        &self,
        name: &str,
        component: &str,
        pool: Option<&str>,
        from: Option<Vec<NetworkPolicyPeer>>,
        port: i32,
    ) -> NetworkPolicy {
        NetworkPolicy {
            metadata: self.meta(name, self.labels(component, pool, None)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(self.selector(component, pool)),
                    ..Default::default()
                }),
                policy_types: Some(vec![s("Ingress")]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from,
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(port)),
                        protocol: Some(s("TCP")),
                        ..Default::default()
                    }]),
                }]),
                ..Default::default()
            }),
        }
    }

    fn worker(&self, queue: &str) -> Deployment {
        let name = self.name(&format!("worker-{queue}"));
        let pod_name_env = EnvVar {
            name: s("POD_NAME"),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: s("metadata.name"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container {
            name: s("worker"),
            image: Some(self.image.clone()),
            args: Some(vec![
                s("worker"),
                s("--queue"),
                s(queue),
                s("--worker-id"),
                s("$(POD_NAME)"),
            ]),
            // Only the queue: no registry or object store credentials.
            env: Some(vec![
                pod_name_env,
                self.secret_env("HERD_QUEUE_URL"),
                env_var_static("HERD_NO_AUTO_INSTALL", "true"),
                env_var_static("HERD_LOG_JSON", "true"),
            ]),
            resources: Some(resources("500m", "1", "1Gi")),
            volume_mounts: Some(vec![mount("tmp", "/tmp", false)]),
            ..Default::default()
        };
        let spec = PodSpec {
            // SIGTERM: stop claiming, finish the job or release its lease within this time.
            termination_grace_period_seconds: Some(120),
            security_context: Some(restricted_pod(HERD_UID)),
            containers: vec![container],
            volumes: Some(vec![empty_dir("tmp", Some(1 << 30))]),
            ..Default::default()
        };
        self.deployment(
            &name,
            "worker",
            Some(queue),
            Class::Flexible,
            None,
            None,
            spec,
        )
    }

    fn redis(&self) -> Result<Vec<Value>> {
        let name = self.name("redis");
        let container = Container {
            name: s("redis"),
            image: Some(self.redis_image.clone()),
            command: Some(vec![
                s("redis-server"),
                s("--requirepass"),
                s("$(REDIS_PASSWORD)"),
                s("--dir"),
                s("/data"),
                s("--appendonly"),
                s("yes"),
            ]),
            env: Some(vec![self.secret_env("REDIS_PASSWORD")]),
            ports: Some(vec![port("redis", 6379)]),
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::String(s("redis")),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            resources: Some(resources("250m", "1", "512Mi")),
            volume_mounts: Some(vec![mount("data", "/data", false)]),
            ..Default::default()
        };
        let spec = PodSpec {
            security_context: Some(restricted_pod(REDIS_UID)),
            containers: vec![container],
            volumes: Some(vec![empty_dir("data", Some(2 << 30))]),
            ..Default::default()
        };
        let dep = self.deployment(
            &name,
            "redis",
            None,
            Class::Flexible,
            Some(1),
            Some(DeploymentStrategy {
                type_: Some(s("Recreate")),
                ..Default::default()
            }),
            spec,
        );
        let svc = Service {
            metadata: self.meta(&name, self.labels("redis", None, None)),
            spec: Some(ServiceSpec {
                selector: Some(self.selector("redis", None)),
                ports: Some(vec![ServicePort {
                    name: Some(s("redis")),
                    port: 6379,
                    target_port: Some(IntOrString::String(s("redis"))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Only workers and the autoscaler reach the queue.
        let from = vec![self.peer("autoscaler", None), {
            NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(map(&[
                        (NAME_LABEL, "herd"),
                        (INSTANCE_LABEL, &self.instance),
                        (COMPONENT_LABEL, "worker"),
                    ])),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }];
        let np = self.allow(&name, "redis", None, Some(from), 6379);
        Ok(vec![to_value(&dep)?, to_value(&svc)?, to_value(&np)?])
    }

    fn autoscaler(&self, ns: &str) -> Result<Vec<Value>> {
        let name = self.name("autoscaler");
        let l = self.labels("autoscaler", None, Some(Class::Fixed));
        let sa = ServiceAccount {
            metadata: self.meta(&name, l.clone()),
            ..Default::default()
        };
        let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
            api_groups: Some(groups.iter().map(|g| s(g)).collect()),
            resources: Some(resources.iter().map(|r| s(r)).collect()),
            verbs: verbs.iter().map(|v| s(v)).collect(),
            ..Default::default()
        };
        let role = Role {
            metadata: self.meta(&name, l.clone()),
            rules: Some(vec![
                rule(&["apps"], &["deployments"], &["get", "list"]),
                rule(
                    &["apps"],
                    &["deployments/scale"],
                    &["get", "patch", "update"],
                ),
                rule(&[""], &["pods"], &["get", "list", "patch"]),
                // Server-side apply of the flexible budget creates it the first time.
                rule(
                    &["policy"],
                    &["poddisruptionbudgets"],
                    &["get", "create", "patch"],
                ),
            ]),
        };
        let binding = RoleBinding {
            metadata: self.meta(&name, l.clone()),
            role_ref: RoleRef {
                api_group: s("rbac.authorization.k8s.io"),
                kind: s("Role"),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: s("ServiceAccount"),
                name: name.clone(),
                namespace: Some(s(ns)),
                ..Default::default()
            }]),
        };
        let container = Container {
            name: s("autoscaler"),
            image: Some(self.image.clone()),
            args: Some(vec![
                s("autoscale"),
                s("--policy"),
                s("/etc/herd/policy.toml"),
                s("--backend"),
                s("kubernetes"),
                s("--namespace"),
                s(ns),
                s("--instance"),
                self.instance.clone(),
                s("--flexible-pdb"),
                self.name("flexible"),
                s("--metrics-token-file"),
                s(METRICS_TOKEN_FILE),
            ]),
            env: Some(vec![
                self.secret_env("HERD_QUEUE_URL"),
                env_var_static("HERD_LOG_JSON", "true"),
            ]),
            resources: Some(resources("100m", "500m", "128Mi")),
            volume_mounts: Some(vec![
                mount("config", "/etc/herd", true),
                mount("metrics-token", METRICS_TOKEN_DIR, true),
                mount("tmp", "/tmp", false),
            ]),
            ..Default::default()
        };
        let spec = PodSpec {
            service_account_name: Some(name.clone()),
            security_context: Some(restricted_pod(HERD_UID)),
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: s("config"),
                    config_map: Some(ConfigMapVolumeSource {
                        name: self.name("config"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                secret_volume("metrics-token", self.name("metrics-token")),
                empty_dir("tmp", Some(64 << 20)),
            ]),
            ..Default::default()
        };
        let dep = self.deployment(
            &name,
            "autoscaler",
            None,
            Class::Fixed,
            Some(1),
            // Never two autoscalers at once.
            Some(DeploymentStrategy {
                type_: Some(s("Recreate")),
                ..Default::default()
            }),
            spec,
        );
        Ok(vec![
            to_value(&sa)?,
            to_value(&role)?,
            to_value(&binding)?,
            to_value(&dep)?,
        ])
    }
}

fn env_var_static(name: &str, value: &str) -> EnvVar {
    env(name, value)
}

/// Multi-document YAML of `objects`.
pub fn to_yaml(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        let doc = serde_saphyr::to_string(o)
            .map_err(|e| ScaleError::Manifest(format!("cannot render YAML: {e}")))?;
        out.push_str("---\n");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Files for `--out DIR`: `(file name, yaml)`, numbered in apply order, then
/// `kustomization.yaml` listing them.
pub fn files(objects: &[Value]) -> Result<Vec<(String, String)>> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("Object");
        let component = o["metadata"]["labels"][COMPONENT_LABEL].as_str();
        let file = match (kind, component) {
            ("Namespace", _) => "00-namespace.yaml",
            ("NetworkPolicy", _) => "15-network-policies.yaml",
            ("ServiceMonitor", _) => "60-service-monitors.yaml",
            (_, Some("serve")) => "20-serve.yaml",
            (_, Some("router")) => "25-router.yaml",
            (_, Some("worker")) => "30-worker.yaml",
            (_, Some("redis")) => "35-redis.yaml",
            (_, Some("autoscaler")) => "40-autoscaler.yaml",
            ("PodDisruptionBudget", _) => "50-disruption-budgets.yaml",
            ("Secret", _) | ("ConfigMap", _) => "10-config.yaml",
            _ => "70-other.yaml",
        };
        match groups.iter_mut().find(|(f, _)| f == file) {
            Some((_, v)) => v.push(o.clone()),
            None => groups.push((file.to_string(), vec![o.clone()])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(String, String)> = groups
        .into_iter()
        .map(|(f, objs)| Ok((f, to_yaml(&objs)?)))
        .collect::<Result<_>>()?;
    let mut k = String::from(
        "# kubectl apply -k DIR (or point a GitOps tool at DIR)\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for (f, _) in &out {
        k.push_str(&format!("  - {f}\n"));
    }
    out.push(("kustomization.yaml".to_string(), k));
    Ok(out)
}

#[cfg(test)]
mod tests;
