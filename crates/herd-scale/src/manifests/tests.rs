//! Manifests parsed back from their YAML and checked as Kubernetes would read them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
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
        "ConfigMap/herd-config",
        "Deployment/herd-serve-web",
        "Service/herd-serve-web",
        "Deployment/herd-worker-default",
        "Deployment/herd-worker-nightly",
        "ServiceAccount/herd-autoscaler",
        "Role/herd-autoscaler",
        "RoleBinding/herd-autoscaler",
        "Deployment/herd-autoscaler",
        "PodDisruptionBudget/herd-flexible",
        "PodDisruptionBudget/herd-fixed",
    ] {
        assert!(
            names.contains(&want.to_string()),
            "missing {want} in {names:?}"
        );
    }
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
    assert_eq!(deps.len(), 4);
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
    assert_eq!(pairs, 3);
}

#[test]
fn disruption_budgets_cover_each_class_once() {
    let docs = parsed();
    let budgets = pdbs(&docs);
    assert_eq!(budgets.len(), 2);
    let by_name: BTreeMap<String, &PodDisruptionBudget> = budgets
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect();
    let flexible = by_name[FLEXIBLE_PDB].spec.as_ref().unwrap();
    assert_eq!(flexible.max_unavailable, Some(IntOrString::Int(1)));
    let fixed = by_name["herd-fixed"].spec.as_ref().unwrap();
    assert_eq!(fixed.max_unavailable, Some(IntOrString::Int(0)));

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
            crate::kubernetes::worker_selector(q)
        } else if let Some(p) = name.strip_prefix("herd-serve-") {
            crate::kubernetes::serving_selector(p)
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
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
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
            "20-serve.yaml",
            "30-worker.yaml",
            "40-autoscaler.yaml",
            "50-disruption-budgets.yaml"
        ]
    );
    let total: usize = files.iter().map(|(_, y)| y.matches("---\n").count()).sum();
    assert_eq!(total, objects.len());
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
        std::fs::write(dir.join(name), yaml).unwrap();
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
