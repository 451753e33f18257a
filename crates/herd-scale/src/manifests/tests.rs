//! Manifests parsed back from their YAML and checked as Kubernetes would read them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::kubernetes::FLEXIBLE_PDB;
use crate::policy::Policy;

fn opts() -> ManifestOptions {
    ManifestOptions {
        queues: vec!["default".into(), "nightly".into()],
        serving_pools: vec!["web".into()],
        ..ManifestOptions::default()
    }
}

/// Renders, writes YAML, and parses every document back.
fn parsed() -> Vec<Value> {
    let objects = opts().render().unwrap();
    let yaml = to_yaml(&objects).unwrap();
    let docs: Vec<Value> = yaml
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
        .collect();
    assert_eq!(docs.len(), objects.len());
    assert_eq!(docs, objects, "YAML must round-trip to the same objects");
    docs
}

fn deployments(docs: &[Value]) -> Vec<Deployment> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect()
}

fn pdbs(docs: &[Value]) -> Vec<PodDisruptionBudget> {
    docs.iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect()
}

fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata.as_ref().unwrap().labels.clone().unwrap()
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn renders_every_part_of_an_installation() {
    let docs = parsed();
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "Namespace/herd",
        "Secret/herd-connections",
        "Secret/herd-tokens",
        "ConfigMap/herd-config",
        "NetworkPolicy/herd-default-deny-ingress",
        "Deployment/herd-serve-web",
        "Service/herd-serve-web",
        "NetworkPolicy/herd-serve-web",
        "ConfigMap/herd-router-web",
        "Deployment/herd-router-web",
        "Service/herd-router-web",
        "NetworkPolicy/herd-router-web",
        "Deployment/herd-worker-default",
        "Deployment/herd-worker-nightly",
        "Deployment/herd-redis",
        "Service/herd-redis",
        "NetworkPolicy/herd-redis",
        "ServiceAccount/herd-autoscaler",
        "Role/herd-autoscaler",
        "RoleBinding/herd-autoscaler",
        "Deployment/herd-autoscaler",
        "PodDisruptionBudget/herd-fixed",
    ] {
        assert!(
            names.contains(&want.to_string()),
            "missing {want} in {names:?}"
        );
    }
    // The budget the autoscaler switches by schedule is not rendered (a re-apply must not
    // undo the schedule); the autoscaler creates it.
    assert!(!names.contains(&"PodDisruptionBudget/herd-flexible".to_string()));
    // No CRD unless asked for.
    assert!(!names.iter().any(|n| n.starts_with("ServiceMonitor/")));
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"], "herd",
                "{}",
                d["metadata"]["name"]
            );
        }
    }
}

#[test]
fn every_pod_is_fixed_or_flexible_with_matching_placement_and_eviction() {
    let docs = parsed();
    let deps = deployments(&docs);
    assert_eq!(deps.len(), 6);
    for d in &deps {
        let name = d.metadata.name.clone().unwrap();
        let spec = d.spec.as_ref().unwrap();
        let t = &spec.template;
        let labels = template_labels(t);
        let class = labels
            .get(CLASS_LABEL)
            .unwrap_or_else(|| panic!("{name}: no class label"));
        let want_class = if name == "herd-autoscaler" {
            "fixed"
        } else {
            "flexible"
        };
        assert_eq!(class, want_class, "{name}");
        let other = if class == "fixed" {
            "flexible"
        } else {
            "fixed"
        };

        // The Deployment's selector must select its own template.
        let sel = spec.selector.match_labels.clone().unwrap();
        assert!(
            matches(&sel, &labels),
            "{name}: selector {sel:?} vs labels {labels:?}"
        );

        // safe-to-evict per class.
        let ann = t.metadata.as_ref().unwrap().annotations.clone().unwrap();
        assert_eq!(
            ann.get(SAFE_TO_EVICT).map(String::as_str),
            Some(if class == "fixed" { "false" } else { "true" }),
            "{name}"
        );

        let pod = t.spec.as_ref().unwrap();
        let aff = pod.affinity.as_ref().unwrap();
        // Required node affinity to this class's node group.
        let terms = &aff
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(expr.key, "herd.dev/node-group");
        assert_eq!(expr.operator, "In");
        assert_eq!(expr.values.as_deref(), Some(&[class.clone()][..]), "{name}");
        // Required anti-affinity against the other class on the same node.
        let anti = aff
            .pod_anti_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        assert_eq!(anti.len(), 1);
        assert_eq!(anti[0].topology_key, "kubernetes.io/hostname");
        let e = &anti[0]
            .label_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0];
        assert_eq!(e.key, CLASS_LABEL);
        assert_eq!(
            e.values.as_deref(),
            Some(&[other.to_string()][..]),
            "{name}"
        );

        // Requests present, memory request == limit, CPU request < limit.
        for c in &pod.containers {
            let r = c.resources.as_ref().unwrap();
            let req = r.requests.as_ref().unwrap();
            let lim = r.limits.as_ref().unwrap();
            assert!(
                req.contains_key("cpu") && req.contains_key("memory"),
                "{name}"
            );
            assert_eq!(
                req["memory"], lim["memory"],
                "{name}: memory request must equal limit"
            );
            assert_ne!(req["cpu"], lim["cpu"], "{name}: CPU request below limit");
        }
    }
}

/// (deployment name, template labels, anti-affinity (key, values) on the hostname topology)
type Placement = (String, BTreeMap<String, String>, Vec<(String, Vec<String>)>);

#[test]
fn fixed_pods_never_share_a_node_with_flexible_ones() {
    // For every pair (fixed template, flexible template), at least one of them has a required
    // anti-affinity term whose selector matches the other's labels on kubernetes.io/hostname.
    let docs = parsed();
    let deps = deployments(&docs);
    let classes: Vec<Placement> = deps
        .iter()
        .map(|d| {
            let t = &d.spec.as_ref().unwrap().template;
            let terms = t
                .spec
                .as_ref()
                .unwrap()
                .affinity
                .as_ref()
                .unwrap()
                .pod_anti_affinity
                .as_ref()
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .clone()
                .unwrap();
            let exprs = terms
                .iter()
                .filter(|t| t.topology_key == "kubernetes.io/hostname")
                .flat_map(|t| t.label_selector.clone().unwrap().match_expressions.unwrap())
                .map(|e| (e.key, e.values.unwrap()))
                .collect();
            (d.metadata.name.clone().unwrap(), template_labels(t), exprs)
        })
        .collect();
    let repels = |exprs: &Vec<(String, Vec<String>)>, labels: &BTreeMap<String, String>| {
        exprs
            .iter()
            .any(|(k, vs)| labels.get(k).is_some_and(|v| vs.contains(v)))
    };
    let mut pairs = 0;
    for (an, al, ae) in &classes {
        for (bn, bl, be) in &classes {
            if al[CLASS_LABEL] == "fixed" && bl[CLASS_LABEL] == "flexible" {
                assert!(
                    repels(ae, bl) && repels(be, al),
                    "{an} and {bn} could share a node"
                );
                pairs += 1;
            }
            if al[CLASS_LABEL] == bl[CLASS_LABEL] {
                assert!(!repels(ae, bl), "{an} must not repel its own class ({bn})");
            }
        }
    }
    assert_eq!(pairs, 5);
}

#[test]
fn disruption_budgets_cover_each_class_once() {
    let docs = parsed();
    let rendered = pdbs(&docs);
    assert_eq!(rendered.len(), 1, "only the fixed budget is rendered");
    let fixed = &rendered[0];
    assert_eq!(fixed.metadata.name.as_deref(), Some("herd-fixed"));
    assert_eq!(
        fixed.spec.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(0))
    );
    // The flexible one is the object the autoscaler applies, for the same instance.
    let flexible: PodDisruptionBudget = serde_json::from_value(
        crate::kubernetes::flexible_pdb_object("herd", FLEXIBLE_PDB, Some("herd"), 1),
    )
    .unwrap();
    let by_name: BTreeMap<String, &PodDisruptionBudget> = [fixed, &flexible]
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect();
    for d in deployments(&docs) {
        let labels = template_labels(&d.spec.as_ref().unwrap().template);
        let covering: Vec<&String> = by_name
            .iter()
            .filter(|(_, p)| {
                let sel = p
                    .spec
                    .as_ref()
                    .unwrap()
                    .selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .clone()
                    .unwrap();
                matches(&sel, &labels)
            })
            .map(|(n, _)| n)
            .collect();
        let want = if labels[CLASS_LABEL] == "fixed" {
            "herd-fixed"
        } else {
            FLEXIBLE_PDB
        };
        assert_eq!(covering, vec![want], "{:?}", d.metadata.name);
    }
}

#[test]
fn manifests_agree_with_the_backend_and_the_policy() {
    let docs = parsed();
    for d in deployments(&docs) {
        let name = d.metadata.name.clone().unwrap();
        let labels = template_labels(&d.spec.as_ref().unwrap().template);
        let sel = if let Some(q) = name.strip_prefix("herd-worker-") {
            crate::kubernetes::worker_selector(Some("herd"), q)
        } else if let Some(p) = name.strip_prefix("herd-serve-") {
            crate::kubernetes::serving_selector(Some("herd"), p)
        } else {
            continue;
        };
        // The backend lists pods with `sel`: every pod of this Deployment must match it.
        for part in sel.split(',') {
            let (k, v) = part.split_once('=').unwrap();
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{name}: {sel}");
        }
        // Autoscaled Deployments leave replicas to the autoscaler.
        assert_eq!(d.spec.as_ref().unwrap().replicas, None, "{name}");
        // A pod of another install must not match (instance is in the selector).
        let mut other = labels.clone();
        other.insert(INSTANCE_LABEL.into(), "other".into());
        assert!(!matches(
            d.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap(),
            &other
        ));
        if name.starts_with("herd-worker-") {
            let c = &d
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0];
            let args = c.args.clone().unwrap();
            assert!(
                args.windows(2).any(|w| w == ["--worker-id", "$(POD_NAME)"]),
                "{args:?}"
            );
        }
    }
    // The policy in the ConfigMap is valid and names the rendered pools.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "herd-config")
        .unwrap();
    let policy = Policy::parse(cm["data"]["policy.toml"].as_str().unwrap(), "configmap").unwrap();
    assert_eq!(policy.workers.len(), 2);
    assert_eq!(policy.workers[1].deployment_name(), "herd-worker-nightly");
    assert_eq!(policy.serving[0].deployment_name(), "herd-serve-web");
    // The Role allows exactly what the backend calls.
    let role = docs.iter().find(|d| d["kind"] == "Role").unwrap();
    let rules = role["rules"].to_string();
    for needed in [
        "deployments/scale",
        "poddisruptionbudgets",
        "\"pods\"",
        "\"patch\"",
        "\"list\"",
        "\"create\"",
    ] {
        assert!(rules.contains(needed), "role lacks {needed}: {rules}");
    }
}

#[test]
fn bad_names_are_rejected_with_a_hint() {
    let bad = ManifestOptions {
        queues: vec!["Nightly_Jobs".into()],
        ..ManifestOptions::default()
    };
    let e = bad.render().unwrap_err().to_string();
    assert!(e.contains("Nightly_Jobs") && e.contains("lowercase"), "{e}");
    let bad = ManifestOptions {
        namespace: "".into(),
        ..ManifestOptions::default()
    };
    assert!(bad.render().is_err());
}

#[test]
fn files_split_by_component_in_apply_order() {
    let objects = opts().render().unwrap();
    let files = files(&objects).unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "00-namespace.yaml",
            "10-config.yaml",
            "15-network-policies.yaml",
            "20-serve.yaml",
            "25-router.yaml",
            "30-worker.yaml",
            "35-redis.yaml",
            "40-autoscaler.yaml",
            "50-disruption-budgets.yaml",
            "kustomization.yaml"
        ]
    );
    let total: usize = files.iter().map(|(_, y)| y.matches("---\n").count()).sum();
    assert_eq!(total, objects.len());
    // The kustomization lists every other file, in order.
    let k = &files.last().unwrap().1;
    let listed: Vec<&str> = k
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(listed, names[..names.len() - 1].to_vec());
}

/// `kubectl apply --dry-run=client` needs an API server for discovery even in client mode
/// (checked with kubectl v1.32: it fails with "unable to recognize ... connection refused" and
/// no flag avoids it). So this runs only when kubectl reaches a cluster.
#[test]
fn kubectl_client_dry_run_accepts_the_manifests() {
    let kubectl = std::process::Command::new("kubectl")
        .args(["version", "--request-timeout=3s", "-o", "json"])
        .output();
    let reachable = match &kubectl {
        Err(_) => {
            eprintln!("SKIPPED: kubectl not installed");
            return;
        }
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains("serverVersion"),
    };
    if !reachable {
        eprintln!(
            "SKIPPED: kubectl is installed but reaches no cluster; `kubectl apply --dry-run=client` needs API discovery. Set KUBECONFIG to a cluster to run this check."
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("herd-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, yaml) in files(&opts().render().unwrap()).unwrap() {
        if name != "kustomization.yaml" {
            std::fs::write(dir.join(name), yaml).unwrap();
        }
    }
    let out = std::process::Command::new("kubectl")
        .args(["apply", "--dry-run=client", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "kubectl rejected the manifests:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod_specs(docs: &[Value]) -> Vec<(String, k8s_openapi::api::core::v1::PodSpec)> {
    deployments(docs)
        .into_iter()
        .map(|d| {
            (
                d.metadata.name.clone().unwrap(),
                d.spec.unwrap().template.spec.unwrap(),
            )
        })
        .collect()
}

/// The Pod Security Standards "restricted" profile (v1.31), rule by rule, over every pod spec.
/// A pod may set a field at pod or container level; the effective value is what counts.
#[test]
fn every_pod_meets_the_restricted_pod_security_profile() {
    let docs = parsed();
    let specs = pod_specs(&docs);
    assert_eq!(specs.len(), 6);
    const ALLOWED_VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for (name, pod) in &specs {
        let psc = pod.security_context.clone().unwrap_or_default();
        // Baseline: no host namespaces, no hostPath, no host ports, no privileged.
        assert_ne!(pod.host_network, Some(true), "{name}");
        assert_ne!(pod.host_pid, Some(true), "{name}");
        assert_ne!(pod.host_ipc, Some(true), "{name}");
        for v in pod.volumes.clone().unwrap_or_default() {
            let v = serde_json::to_value(&v).unwrap();
            let kinds: Vec<&String> = v
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "name")
                .collect();
            assert_eq!(kinds.len(), 1, "{name}: {v}");
            assert!(
                ALLOWED_VOLUMES.contains(&kinds[0].as_str()),
                "{name}: volume type {} is not allowed",
                kinds[0]
            );
        }
        let all: Vec<&k8s_openapi::api::core::v1::Container> = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .collect();
        for c in all {
            let sc = c.security_context.clone().unwrap_or_default();
            let who = format!("{name}/{}", c.name);
            assert_ne!(sc.privileged, Some(true), "{who}");
            for p in c.ports.clone().unwrap_or_default() {
                assert!(p.host_port.is_none(), "{who}: hostPort");
            }
            // Restricted: no privilege escalation.
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{who}");
            // Restricted: must run as non-root (container or pod level), never uid 0.
            let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
            assert_eq!(non_root, Some(true), "{who}: runAsNonRoot");
            let uid = sc.run_as_user.or(psc.run_as_user);
            assert!(uid.is_some_and(|u| u != 0), "{who}: runAsUser {uid:?}");
            // Restricted: seccomp RuntimeDefault or Localhost, set at one of the levels.
            let seccomp = sc
                .seccomp_profile
                .clone()
                .or(psc.seccomp_profile.clone())
                .map(|p| p.type_);
            assert!(
                matches!(
                    seccomp.as_deref(),
                    Some("RuntimeDefault") | Some("Localhost")
                ),
                "{who}: seccomp {seccomp:?}"
            );
            // Restricted: drop ALL, add at most NET_BIND_SERVICE.
            let caps = sc.capabilities.clone().unwrap_or_default();
            assert_eq!(
                caps.drop.as_deref(),
                Some(&["ALL".to_string()][..]),
                "{who}"
            );
            for a in caps.add.unwrap_or_default() {
                assert_eq!(a, "NET_BIND_SERVICE", "{who}");
            }
            // Ours (stricter than the profile): read-only root, writable volumes where needed.
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{who}");
            let mounts: Vec<String> = c
                .volume_mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.mount_path)
                .collect();
            if c.name != "redis" {
                assert!(
                    mounts.contains(&"/tmp".to_string()),
                    "{who}: a writable /tmp"
                );
            }
        }
    }
    // And the namespace enforces the profile.
    let ns = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

/// Which pods may open a connection to `target`'s pods on `port`, by the rendered policies.
fn allowed_sources(
    docs: &[Value],
    target: &BTreeMap<String, String>,
    port: i32,
    candidates: &[(String, BTreeMap<String, String>)],
) -> Vec<String> {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let policies: Vec<NetworkPolicy> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect();
    let selecting: Vec<&NetworkPolicy> = policies
        .iter()
        .filter(|p| {
            let sel = p
                .spec
                .as_ref()
                .unwrap()
                .pod_selector
                .clone()
                .unwrap_or_default();
            matches(&sel.match_labels.unwrap_or_default(), target)
        })
        .collect();
    assert!(!selecting.is_empty(), "no policy isolates {target:?}");
    let mut out = Vec::new();
    for (name, labels) in candidates {
        let ok = selecting.iter().any(|p| {
            p.spec
                .as_ref()
                .unwrap()
                .ingress
                .iter()
                .flatten()
                .any(|rule| {
                    let port_ok = rule.ports.as_ref().is_none_or(|ps| {
                        ps.iter().any(|pp| pp.port == Some(IntOrString::Int(port)))
                    });
                    let from_ok = match &rule.from {
                        None => true,
                        Some(peers) => peers.iter().any(|peer| {
                            peer.namespace_selector.is_none()
                                && peer.pod_selector.as_ref().is_some_and(|s| {
                                    matches(&s.match_labels.clone().unwrap_or_default(), labels)
                                })
                        }),
                    };
                    port_ok && from_ok
                })
        });
        if ok {
            out.push(name.clone());
        }
    }
    out.sort();
    out
}

#[test]
fn network_policies_let_only_the_router_reach_serving_and_only_workers_reach_redis() {
    let docs = parsed();
    let pods: Vec<(String, BTreeMap<String, String>)> = deployments(&docs)
        .iter()
        .map(|d| {
            (
                d.metadata.name.clone().unwrap(),
                template_labels(&d.spec.as_ref().unwrap().template),
            )
        })
        .collect();
    let labels_of = |n: &str| pods.iter().find(|(m, _)| m == n).unwrap().1.clone();
    // Serving pods: the router of the pool, and the autoscaler (it reads /metrics).
    assert_eq!(
        allowed_sources(&docs, &labels_of("herd-serve-web"), SERVE_PORT, &pods),
        vec!["herd-autoscaler", "herd-router-web"]
    );
    // Redis: workers and the autoscaler only (not serving, not the router).
    assert_eq!(
        allowed_sources(&docs, &labels_of("herd-redis"), 6379, &pods),
        vec![
            "herd-autoscaler",
            "herd-worker-default",
            "herd-worker-nightly"
        ]
    );
    // The router takes clients from anywhere; workers and the autoscaler take nothing.
    assert_eq!(
        allowed_sources(&docs, &labels_of("herd-router-web"), SERVE_PORT, &pods).len(),
        pods.len()
    );
    for n in ["herd-worker-default", "herd-autoscaler"] {
        assert!(
            allowed_sources(&docs, &labels_of(n), SERVE_PORT, &pods).is_empty(),
            "{n}"
        );
    }
}

#[test]
fn serving_pods_serve_the_channel_with_tokens_and_workers_hold_no_registry_secret() {
    let docs = parsed();
    for (name, pod) in pod_specs(&docs) {
        let c = &pod.containers[0];
        let env: Vec<String> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect();
        let args = c.args.clone().unwrap_or_default();
        if name.starts_with("herd-serve-") {
            assert_eq!(&args[..3], &["serve", "--channel", "production"]);
            assert!(
                args.windows(2).any(|w| w == ["--tokens", TOKENS_FILE]),
                "{args:?}"
            );
            assert!(args
                .windows(2)
                .any(|w| w == ["--artifact-cache", ARTIFACT_CACHE_DIR]));
            assert!(args.windows(2).any(|w| w == ["--addr", "0.0.0.0:8080"]));
            assert!(args.windows(2).any(|w| w == ["--drain-delay", "5"]));
            for v in [
                "HERD_REGISTRY",
                "HERD_ARTIFACTS",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            ] {
                assert!(env.contains(&v.to_string()), "{name}: {v}");
            }
            assert!(!env.contains(&"HERD_POSTGRES_URL".to_string()));
            let p = c
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(p.path.as_deref(), Some("/v2/health/ready"));
            assert!(c.startup_probe.is_some());
            assert!(c
                .lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .sleep
                .is_some());
            assert!(pod.topology_spread_constraints.as_ref().unwrap().len() >= 2);
        }
        if name.starts_with("herd-worker-") {
            assert!(env.contains(&"HERD_QUEUE_URL".to_string()));
            for v in [
                "HERD_REGISTRY",
                "HERD_ARTIFACTS",
                "AWS_SECRET_ACCESS_KEY",
                "HERD_POSTGRES_URL",
            ] {
                assert!(!env.contains(&v.to_string()), "{name} must not get {v}");
            }
        }
    }
    // The queue URL carries the Redis password, percent-encoded.
    let o = ManifestOptions {
        redis_password: "p@ss/w:rd".into(),
        ..opts()
    };
    assert_eq!(o.queue_url(), "redis://:p%40ss%2Fw%3Ard@herd-redis:6379/0");
    // The default tokens file has no token: every request is refused until tokens are added.
    let tokens = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "herd-tokens")
        .unwrap();
    let t: toml::Value =
        toml::from_str(tokens["stringData"]["tokens.toml"].as_str().unwrap()).unwrap();
    assert_eq!(t["token"].as_array().unwrap().len(), 0);
}

#[test]
fn two_installs_in_one_namespace_do_not_collide() {
    let a = opts().render().unwrap();
    let b = ManifestOptions {
        instance: "canary".into(),
        ..opts()
    }
    .render()
    .unwrap();
    let key = |d: &Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
    let names_a: std::collections::BTreeSet<String> = a
        .iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(key)
        .collect();
    for d in b.iter().filter(|d| d["kind"] != "Namespace") {
        assert!(
            !names_a.contains(&key(d)),
            "{} exists in both installs",
            key(d)
        );
    }
    // No Deployment of one install selects pods of the other.
    let (da, db) = (deployments(&a), deployments(&b));
    for x in &da {
        for y in &db {
            let sx = x
                .spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .clone()
                .unwrap();
            let ly = template_labels(&y.spec.as_ref().unwrap().template);
            assert!(
                !matches(&sx, &ly),
                "{:?} selects {:?}",
                x.metadata.name,
                y.metadata.name
            );
        }
    }
}

#[test]
fn service_monitor_is_optional() {
    let o = ManifestOptions {
        service_monitor: true,
        ..opts()
    };
    let docs = o.render().unwrap();
    let sm: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    assert_eq!(sm.len(), 1);
    assert_eq!(sm[0]["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn the_autoscaler_and_the_service_monitor_read_the_metrics_token_secret() {
    let o = ManifestOptions {
        service_monitor: true,
        metrics_token: "  herd_abc\n".into(),
        ..opts()
    };
    let docs = o.render().unwrap();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == o.name("metrics-token"))
        .expect("metrics token Secret");
    assert_eq!(secret["stringData"][METRICS_TOKEN_KEY], "herd_abc");
    let dep: Deployment = deployments(&docs)
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some(o.name("autoscaler").as_str()))
        .unwrap();
    let spec = dep.spec.unwrap().template.spec.unwrap();
    let c = &spec.containers[0];
    let args = c.args.clone().unwrap();
    let i = args
        .iter()
        .position(|a| a == "--metrics-token-file")
        .expect("--metrics-token-file");
    assert_eq!(args[i + 1], METRICS_TOKEN_FILE);
    let m = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "metrics-token")
        .expect("mount");
    assert_eq!(
        format!("{}/{METRICS_TOKEN_KEY}", m.mount_path),
        METRICS_TOKEN_FILE
    );
    assert_eq!(m.read_only, Some(true));
    let v = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "metrics-token")
        .unwrap();
    assert_eq!(
        v.secret.unwrap().secret_name.as_deref(),
        Some(o.name("metrics-token").as_str())
    );
    // Serving pods do not get it.
    for d in deployments(&docs) {
        let s = d.spec.unwrap().template.spec.unwrap();
        let has = s.volumes.unwrap_or_default().iter().any(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                == Some(o.name("metrics-token").as_str())
        });
        assert_eq!(has, d.metadata.name == Some(o.name("autoscaler")));
    }
    let sms: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    assert!(!sms.is_empty());
    for sm in sms {
        let cred = &sm["spec"]["endpoints"][0]["authorization"];
        assert_eq!(cred["type"], "Bearer");
        assert_eq!(cred["credentials"]["name"], o.name("metrics-token"));
        assert_eq!(cred["credentials"]["key"], METRICS_TOKEN_KEY);
    }
    let empty = ManifestOptions {
        metrics_token: " ".into(),
        ..opts()
    };
    assert!(empty.render().is_err());
}
