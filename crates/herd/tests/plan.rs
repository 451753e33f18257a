//! `herd plan` end to end (the real binary): every example in `examples/plan/` prints its case
//! study's result, the JSON and HTML forms are whole, and the prediction for the `herd demo`
//! workload (same models, same trace, same budget) is within 5% of what the demo measures.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{runtime_available, HERD};

/// The tests run one at a time: the demo's load times (which GDSF weighs) must not be
/// disturbed by the other tests' processes.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plan")
}

fn plan(args: &[&str]) -> String {
    let out = Command::new(HERD)
        .arg("plan")
        .args(args)
        .output()
        .expect("run herd");
    assert!(
        out.status.success(),
        "herd plan {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn example(name: &str) -> String {
    plan(&[examples().join(name).to_str().unwrap()])
}

/// The saving printed on the row that starts with `row`, in percent.
fn saving(out: &str, row: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no row '{row}' in:\n{out}"));
    line.split_whitespace()
        .last()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap()
}

#[test]
fn embeddings_twelve_per_instance_save_up_to_80_percent() {
    let _serial = serial();
    let out = example("embeddings-80.toml");
    assert!(out.contains("12 fit its budget"), "{out}");
    assert_eq!(saving(&out, "herd, shared machines").round(), 75.0, "{out}");
    assert_eq!(saving(&out, "herd + autoscaling").round(), 80.0, "{out}");
    assert!(out.contains("prices as of 2026-12-01"), "{out}");
}

#[test]
fn three_replicas_save_about_43_percent() {
    let _serial = serial();
    let out = example("replicas-43.toml");
    assert_eq!(saving(&out, "herd + autoscaling").round(), 43.0, "{out}");
}

#[test]
fn autocomplete_models_ten_per_instance_save_66_to_74_percent() {
    let _serial = serial();
    let out = example("autocomplete-292mb.toml");
    assert!(out.contains("serves 10 models"), "{out}");
    assert_eq!(saving(&out, "herd, shared machines").round(), 67.0, "{out}");
    assert_eq!(saving(&out, "herd + autoscaling").round(), 74.0, "{out}");
    // The cache simulation ran both policies; a budget for all 12 models hits almost always.
    assert!(out.contains("gdsf") && out.contains("lru"), "{out}");
}

#[test]
fn night_scale_down_cuts_the_cluster_bill_by_more_than_40_percent() {
    let _serial = serial();
    let out = example("night-scale-down.toml");
    let line = out
        .lines()
        .find(|l| l.starts_with("autoscaling and schedules save"))
        .unwrap_or_else(|| panic!("{out}"));
    let pct: f64 = line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(pct > 40.0 && pct < 41.0, "{line}");
}

#[test]
fn one_and_two_year_comparison_of_self_hosting_cloud_and_platforms() {
    let _serial = serial();
    let out = example("self-host-vs-cloud.toml");
    assert!(
        out.contains("cheapest over 12 months: cloud, herd on shared instances"),
        "{out}"
    );
    assert!(
        out.contains("cheapest over 24 months: self-hosted, herd"),
        "{out}"
    );
}

#[test]
fn json_and_html_reports_are_whole() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let out = plan(&[
        examples().join("autocomplete-292mb.toml").to_str().unwrap(),
        "--json",
        "--html",
        html.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["costs"]["baseline"]["machines"], 12);
    assert_eq!(
        v["costs"]["autoscaled_hourly"].as_array().unwrap().len(),
        168
    );
    assert_eq!(v["simulation"].as_array().unwrap().len(), 8);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 3, "three charts");
    // Self-contained: no script, nothing fetched (the only URL is the SVG namespace).
    assert!(!page.contains("<script") && !page.contains(" src=") && !page.contains("href=\"http"));
    // Budgets whose p99 request waits past the request timeout say so, as the text table does.
    assert!(page.contains("&gt; timeout"), "{page}");
    assert!(page.contains("Inputs: modelled, not published"), "{page}");
    assert!(v["inputs"].as_str().unwrap().starts_with("modelled"), "{v}");
}

/// Each example says where its inputs come from, beside the result it reproduces.
#[test]
fn every_example_says_its_inputs_are_modelled() {
    let _serial = serial();
    for f in std::fs::read_dir(examples()).unwrap() {
        let path = f.unwrap().path();
        if path.file_name().unwrap() == "catalog.toml" {
            continue;
        }
        let out = plan(&[path.to_str().unwrap()]);
        assert!(out.contains("\npublished: "), "{}: {out}", path.display());
        assert!(
            out.contains("\ninputs: modelled, not published"),
            "{}: {out}",
            path.display()
        );
    }
}

#[test]
fn bad_plans_are_refused_with_the_field_named() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[models]\ncount = 3\nsize = \"1GB\"\nload_secs = 1\n[traffic]\nrate = 1\n[machines]\ncatalog = \"nope.toml\"\ntype = \"x\"\n[policy]\nbudget_share = 1.5\n",
    )
    .unwrap();
    let out = Command::new(HERD).arg("plan").arg(&p).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.budget_share"), "{err}");
    std::fs::write(&p, "[models]\ncount = 3\nsurprise = 1\n").unwrap();
    let out = Command::new(HERD).arg("plan").arg(&p).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
}

fn within(predicted: f64, measured: f64, what: &str) {
    let rel = (predicted - measured).abs() / measured.max(1e-9);
    eprintln!(
        "{what}: predicted {predicted:.4}, measured {measured:.4} ({:.1}% apart)",
        rel * 100.0
    );
    assert!(
        rel <= 0.05,
        "{what}: predicted {predicted}, measured {measured}: more than 5% apart"
    );
}

#[test]
fn plan_predicts_the_demo_within_5_percent() {
    let _serial = serial();
    if !runtime_available() {
        let msg = "the ONNX Runtime library is not installed (run `herd runtime install`)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; the plan-vs-demo test needs it");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = d.join("models");
    let rec = d.join("rec");
    let out = Command::new(HERD)
        .args([
            "demo",
            "--models",
            "100",
            "--requests",
            "6000",
            "--concurrency",
            "1",
        ])
        .args(["--policy", "both", "--dir"])
        .arg(&models)
        .arg("--record")
        .arg(&rec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herd demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let measured: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rec.join("result.json")).unwrap()).unwrap();
    let budget = measured["budget_bytes"].as_u64().unwrap();
    std::fs::copy(examples().join("catalog.toml"), d.join("catalog.toml")).unwrap();
    for policy in ["gdsf", "lru"] {
        let p = d.join(format!("plan-{policy}.toml"));
        std::fs::write(
            &p,
            format!(
                "[models]\ndir = \"models\"\n[traffic]\ntrace = \"rec/trace-{policy}.csv\"\n\
                 [machines]\ncatalog = \"catalog.toml\"\ntype = \"local\"\nmemory = \"host\"\n\
                 [simulate]\npolicies = [\"{policy}\"]\nbudgets = [\"{budget}\"]\n"
            ),
        )
        .unwrap();
        let out = plan(&[p.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let sim = &v["simulation"][0];
        assert_eq!(sim["budget"].as_u64(), Some(budget));
        assert_eq!(sim["requests"].as_u64(), Some(6000));
        let m = &measured[policy];
        let hits = m["hits"].as_f64().unwrap();
        let requests = m["requests"].as_f64().unwrap();
        within(
            sim["hit_ratio"].as_f64().unwrap(),
            hits / requests,
            &format!("{policy} hit ratio"),
        );
        within(
            sim["loads"].as_f64().unwrap(),
            m["loads"].as_f64().unwrap(),
            &format!("{policy} loads"),
        );
    }
}

/// `herd plan --channel production`: the models are those of the release the channel points
/// to (not the registry's other models, not the plan file's `[models]`), fetched from the
/// artifact store and measured by loading each once; a channel without a release is refused
/// with the command that makes one. SQLite and a local artifact directory: no services.
#[test]
fn a_registry_channel_is_planned_from_its_release() {
    let _serial = serial();
    if !runtime_available() {
        assert!(
            std::env::var("CI").is_err(),
            "ONNX Runtime is missing under CI"
        );
        eprintln!("SKIPPED: ONNX Runtime not installed (herd runtime install)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let herd = |args: &[&str]| {
        let out = Command::new(HERD)
            .args(args)
            .current_dir(dir)
            .env(
                "HERD_REGISTRY",
                format!("sqlite://{}", dir.join("reg.db").display()),
            )
            .env("HERD_ARTIFACTS", dir.join("artifacts"))
            .env("HERD_ARTIFACT_CACHE", dir.join("cache"))
            .env("HERD_USER", "planner")
            .env_remove("HERD_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Four models in the registry, three in the production release (one of them at v2).
    for (name, dims) in [
        ("acme", vec![8]),
        ("globex", vec![8, 64]),
        ("initech", vec![8]),
        ("draft", vec![8]),
    ] {
        for (v, d) in dims.iter().enumerate() {
            let f = dir.join(format!("{name}-{v}.onnx"));
            std::fs::write(
                &f,
                herd_onnx::LinearClassifier::random(*d, 3, v as u64 + 1).to_onnx(name),
            )
            .unwrap();
            let (ok, _, err) = herd(&["model", "push", name, f.to_str().unwrap(), "--create"]);
            assert!(ok, "push {name}: {err}");
        }
    }
    let (ok, _, err) = herd(&[
        "release",
        "create",
        "--set",
        "acme=1",
        "--set",
        "globex=2",
        "--set",
        "initech=1",
        "--promote",
        "production",
    ]);
    assert!(ok, "{err}");
    // The plan file names a uniform fleet: --channel replaces it.
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[models]\ncount = 50\nsize = \"1GB\"\nload_secs = 1.0\n\
             [traffic]\nrate = 2.0\nsimulate_hours = 0.05\n\
             [machines]\ncatalog = \"{}\"\ntype = \"ml.m5.large\"\n",
            examples().join("catalog.toml").display()
        ),
    )
    .unwrap();
    let (ok, out, err) = herd(&[
        "plan",
        plan.to_str().unwrap(),
        "--channel",
        "production",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("on channel production"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fleet = v["fleet"].as_array().unwrap();
    let names: Vec<&str> = fleet.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "globex", "initech"], "{v}");
    for m in fleet {
        assert!(m["charge"].as_u64().unwrap() > 0, "{m}");
        assert!(m["load_secs"].as_f64().unwrap() > 0.0, "{m}");
    }
    assert_eq!(v["models"], 3);

    let (ok, _, err) = herd(&["plan", plan.to_str().unwrap(), "--channel", "staging"]);
    assert!(!ok);
    assert!(
        err.contains("'staging'") && err.contains("--promote staging"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
