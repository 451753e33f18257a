//! `herd k8s manifests`: ready-to-apply YAML for a herd installation.
//!
//! Two classes of pods, kept on separate node groups:
//! - **fixed** (the autoscaler): never evicted by the cluster autoscaler
//!   (`cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`), PDB maxUnavailable 0;
//! - **flexible** (serving and workers): evictable (`"true"`), PDB `herd-flexible` whose
//!   maxUnavailable the autoscaler switches by schedule (0 by day, 1 at night), so whole flexible
//!   nodes can be drained at night.
//!
//! Every pod has required node affinity to its node group (`<node_group_label> In [<group>]`) and
//! required pod anti-affinity against the other class on the same node (`kubernetes.io/hostname`),
//! so fixed and flexible pods never share a node. Memory requests are sized from the model memory
//! budget plus runtime overhead, and equal to the limit (no overcommit); CPU requests are below
//! the limits; together they stay below a node's allocatable so kubelet and system daemons keep
//! their reserve.

use serde_json::{json, Value};

use crate::error::{Result, ScaleError};
use crate::kubernetes::{CLASS_LABEL, COMPONENT_LABEL, FLEXIBLE_PDB, POOL_LABEL};

pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";

/// What to render.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub namespace: String,
    pub image: String,
    /// One worker Deployment per queue.
    pub queues: Vec<String>,
    /// One serving Deployment + Service per pool.
    pub serving_pools: Vec<String>,
    /// Policy TOML for the autoscaler's ConfigMap (a default is generated when `None`).
    pub policy: Option<String>,
    pub redis_url: String,
    pub postgres_url: String,
    /// Node label that names the node group; nodes carry `<label>=fixed` or `<label>=flexible`.
    pub node_group_label: String,
    pub fixed_group: String,
    pub flexible_group: String,
    /// Model memory budget of each serving pod, bytes.
    pub serve_memory_budget: u64,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            namespace: "herd".into(),
            image: "herd:0.1.0".into(),
            queues: vec!["default".into()],
            serving_pools: vec!["default".into()],
            policy: None,
            redis_url: "redis://herd-redis:6379/0".into(),
            postgres_url: "postgres://herd:CHANGE-ME@herd-postgres:5432/herd".into(),
            node_group_label: "herd.dev/node-group".into(),
            fixed_group: "fixed".into(),
            flexible_group: "flexible".into(),
            serve_memory_budget: 2 << 30,
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

fn labels(component: &str, pool: Option<&str>, class: Class) -> Value {
    let mut l = json!({
        NAME_LABEL: "herd",
        COMPONENT_LABEL: component,
        CLASS_LABEL: class.as_str(),
    });
    if let Some(p) = pool {
        l[POOL_LABEL] = json!(p);
    }
    l
}

impl ManifestOptions {
    fn group(&self, class: Class) -> &str {
        match class {
            Class::Fixed => &self.fixed_group,
            Class::Flexible => &self.flexible_group,
        }
    }

    fn affinity(&self, class: Class) -> Value {
        json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{
                        "matchExpressions": [{
                            "key": self.node_group_label,
                            "operator": "In",
                            "values": [self.group(class)],
                        }]
                    }]
                }
            },
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {
                        "matchExpressions": [{
                            "key": CLASS_LABEL,
                            "operator": "In",
                            "values": [class.other().as_str()],
                        }]
                    },
                    "topologyKey": "kubernetes.io/hostname",
                }]
            }
        })
    }

    fn tolerations(&self, class: Class) -> Value {
        // Node groups are often tainted so nothing else lands there; tolerate our own taint.
        json!([{
            "key": self.node_group_label,
            "operator": "Equal",
            "value": self.group(class),
            "effect": "NoSchedule",
        }])
    }

    fn pod_template(&self, labels: Value, class: Class, spec: Value) -> Value {
        let mut spec = spec;
        spec["affinity"] = self.affinity(class);
        spec["tolerations"] = self.tolerations(class);
        json!({
            "metadata": {
                "labels": labels,
                "annotations": { SAFE_TO_EVICT: class.safe_to_evict() },
            },
            "spec": spec,
        })
    }

    fn meta(&self, name: &str, labels: &Value) -> Value {
        json!({ "name": name, "namespace": self.namespace, "labels": labels })
    }

    fn default_policy(&self) -> String {
        let mut p = String::from(
            "# herd autoscaler policy (see `herd autoscale --help`).\n[defaults]\nflexible_max_unavailable = 1\n",
        );
        for q in &self.queues {
            p.push_str(&format!(
                "\n[[workers]]\nqueue = \"{q}\"\njobs_per_worker = 10\nmin = 0\nmax = 20\ncooldown = \"120s\"\n"
            ));
        }
        for s in &self.serving_pools {
            p.push_str(&format!(
                "\n[[serving]]\nname = \"{s}\"\ntarget_invocations_per_minute = 225\ntarget_memory_utilisation = 0.8\nstabilisation_window = \"300s\"\ntolerance = 0.1\nmin = 2\nmax = 20\nmetrics_port = 8080\n"
            ));
        }
        p.push_str(
            "\n[[schedule]]\nname = \"working-hours\"\ndays = [\"weekdays\"]\nwindow = \"08:00-19:00\"\ntimezone = \"UTC\"\nflexible_max_unavailable = 0\n",
        );
        p
    }

    /// Renders every object, in apply order.
    pub fn render(&self) -> Result<Vec<Value>> {
        check_name("namespace", &self.namespace, 63)?;
        for q in &self.queues {
            check_name("queue", q, 63 - "herd-worker-".len())?;
        }
        for s in &self.serving_pools {
            check_name("serving pool", s, 63 - "herd-serve-".len())?;
        }
        if self.image.trim().is_empty() {
            return Err(ScaleError::Manifest("--image must not be empty".into()));
        }
        if self.serve_memory_budget < (16 << 20) {
            return Err(ScaleError::Manifest(
                "the serving memory budget must be at least 16MiB".into(),
            ));
        }
        let policy = self.policy.clone().unwrap_or_else(|| self.default_policy());
        let ns = &self.namespace;
        let mut out = Vec::new();

        out.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": ns, "labels": { NAME_LABEL: "herd" } },
        }));
        out.push(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": self.meta("herd-connections", &json!({ NAME_LABEL: "herd" })),
            "type": "Opaque",
            "stringData": {
                "HERD_REDIS_URL": self.redis_url,
                "HERD_POSTGRES_URL": self.postgres_url,
                "HERD_QUEUE_URL": self.redis_url,
            },
        }));
        out.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": self.meta("herd-config", &json!({ NAME_LABEL: "herd" })),
            "data": {
                "policy.toml": policy,
                "HERD_LOG_JSON": "true",
            },
        }));

        let secret_env = |name: &str| json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": "herd-connections", "key": name } } });
        let pod_name_env = json!({ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } });

        // Serving: flexible. Memory request = budget + 25% + 256Mi runtime overhead, = limit.
        let budget = self.serve_memory_budget;
        let serve_mem = mib(budget + budget / 4 + (256 << 20));
        for pool in &self.serving_pools {
            let name = format!("herd-serve-{pool}");
            let l = labels("serve", Some(pool), Class::Flexible);
            let spec = json!({
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "serve",
                    "image": self.image,
                    "args": ["serve", "--repo", "/models", "--addr", "0.0.0.0:8080",
                             "--memory-budget", format!("{}MiB", budget.div_ceil(1 << 20))],
                    "ports": [{ "name": "http", "containerPort": 8080 }],
                    "env": [secret_env("HERD_POSTGRES_URL"), { "name": "HERD_LOG_JSON", "value": "true" }],
                    "readinessProbe": { "httpGet": { "path": "/v2/health/ready", "port": "http" }, "periodSeconds": 5 },
                    "livenessProbe": { "httpGet": { "path": "/v2/health/live", "port": "http" }, "periodSeconds": 10 },
                    "resources": {
                        "requests": { "cpu": "1", "memory": serve_mem },
                        "limits": { "cpu": "2", "memory": serve_mem },
                    },
                    "volumeMounts": [{ "name": "models", "mountPath": "/models" }],
                }],
                "volumes": [{ "name": "models", "emptyDir": {} }],
            });
            // No `replicas`: the autoscaler owns it, and re-applying must not reset it.
            out.push(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": self.meta(&name, &l),
                "spec": {
                    "selector": { "matchLabels": { COMPONENT_LABEL: "serve", POOL_LABEL: pool } },
                    "template": self.pod_template(l.clone(), Class::Flexible, spec),
                },
            }));
            out.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": self.meta(&name, &l),
                "spec": {
                    "selector": { COMPONENT_LABEL: "serve", POOL_LABEL: pool },
                    "ports": [{ "name": "http", "port": 8080, "targetPort": "http" }],
                },
            }));
        }

        // Workers: flexible, started and stopped by the autoscaler (from zero).
        for q in &self.queues {
            let name = format!("herd-worker-{q}");
            let l = labels("worker", Some(q), Class::Flexible);
            let spec = json!({
                // SIGTERM: stop claiming, finish the job or release its lease within this time.
                "terminationGracePeriodSeconds": 120,
                "containers": [{
                    "name": "worker",
                    "image": self.image,
                    "args": ["worker", "--queue-url", "$(HERD_QUEUE_URL)", "--queue", q,
                             "--worker-id", "$(POD_NAME)"],
                    "env": [pod_name_env, secret_env("HERD_QUEUE_URL"), secret_env("HERD_POSTGRES_URL"),
                            { "name": "HERD_LOG_JSON", "value": "true" }],
                    "resources": {
                        "requests": { "cpu": "500m", "memory": "1Gi" },
                        "limits": { "cpu": "1", "memory": "1Gi" },
                    },
                }],
            });
            out.push(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": self.meta(&name, &l),
                "spec": {
                    "selector": { "matchLabels": { COMPONENT_LABEL: "worker", POOL_LABEL: q } },
                    "template": self.pod_template(l.clone(), Class::Flexible, spec),
                },
            }));
        }

        // Autoscaler: fixed, one replica, RBAC for exactly the calls it makes.
        let al = labels("autoscaler", None, Class::Fixed);
        out.push(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": self.meta("herd-autoscaler", &al),
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": self.meta("herd-autoscaler", &al),
            "rules": [
                { "apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"] },
                { "apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch", "update"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "patch"] },
                { "apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "patch"] },
            ],
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": self.meta("herd-autoscaler", &al),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "herd-autoscaler" },
            "subjects": [{ "kind": "ServiceAccount", "name": "herd-autoscaler", "namespace": ns }],
        }));
        let spec = json!({
            "serviceAccountName": "herd-autoscaler",
            "containers": [{
                "name": "autoscaler",
                "image": self.image,
                "args": ["autoscale", "--policy", "/etc/herd/policy.toml", "--backend", "kubernetes",
                         "--namespace", ns],
                "env": [secret_env("HERD_QUEUE_URL"), { "name": "HERD_LOG_JSON", "value": "true" }],
                "resources": {
                    "requests": { "cpu": "100m", "memory": "128Mi" },
                    "limits": { "cpu": "500m", "memory": "128Mi" },
                },
                "volumeMounts": [{ "name": "config", "mountPath": "/etc/herd", "readOnly": true }],
            }],
            "volumes": [{ "name": "config", "configMap": { "name": "herd-config" } }],
        });
        out.push(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": self.meta("herd-autoscaler", &al),
            "spec": {
                "replicas": 1,
                // Never two autoscalers at once.
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": { COMPONENT_LABEL: "autoscaler" } },
                "template": self.pod_template(al.clone(), Class::Fixed, spec),
            },
        }));

        // Disruption budgets per class.
        out.push(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": self.meta(FLEXIBLE_PDB, &json!({ NAME_LABEL: "herd", CLASS_LABEL: "flexible" })),
            "spec": {
                // The autoscaler sets this by schedule: 0 in working hours, 1 at night.
                "maxUnavailable": 1,
                "selector": { "matchLabels": { NAME_LABEL: "herd", CLASS_LABEL: "flexible" } },
            },
        }));
        out.push(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": self.meta("herd-fixed", &json!({ NAME_LABEL: "herd", CLASS_LABEL: "fixed" })),
            "spec": {
                "maxUnavailable": 0,
                "selector": { "matchLabels": { NAME_LABEL: "herd", CLASS_LABEL: "fixed" } },
            },
        }));
        Ok(out)
    }
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

/// Files for `--out DIR`: `(file name, yaml)`, numbered in apply order.
pub fn files(objects: &[Value]) -> Result<Vec<(String, String)>> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("Object");
        let component = o["metadata"]["labels"][COMPONENT_LABEL].as_str();
        let file = match (kind, component) {
            ("Namespace", _) => "00-namespace.yaml",
            ("Secret", _) | ("ConfigMap", _) => "10-config.yaml",
            (_, Some("serve")) => "20-serve.yaml",
            (_, Some("worker")) => "30-worker.yaml",
            (_, Some("autoscaler")) => "40-autoscaler.yaml",
            ("PodDisruptionBudget", _) => "50-disruption-budgets.yaml",
            _ => "60-other.yaml",
        };
        match groups.iter_mut().find(|(f, _)| f == file) {
            Some((_, v)) => v.push(o.clone()),
            None => groups.push((file.to_string(), vec![o.clone()])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .map(|(f, objs)| Ok((f, to_yaml(&objs)?)))
        .collect()
}

#[cfg(test)]
mod tests;
