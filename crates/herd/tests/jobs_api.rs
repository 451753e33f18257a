//! The jobs API (`/v1/jobs` on `herd serve`) end to end: the real `herd serve` with tokens of
//! two tenants and an admin, a real SQLite queue, the operator's templates file, and the real
//! `herd worker` draining what the API enqueued.
//!
//! * a tenant enqueues batch-infer over its own model and reads the result through the API
//!   (outputs checked against the classifier's independent reference);
//! * another tenant gets 403 for the model and 404 for the job; lists show only one's own jobs;
//! * a client-supplied command line is refused (403), for the admin too; a declared template
//!   runs, with the client's value as one argument; an undeclared template / bad value is 400;
//! * cancel of a waiting job, requeue of the cancelled job.
//!
//! Run: `cargo test -p herd --test jobs_api -- --nocapture`

use std::process::{Command, Stdio};

use herd_onnx::LinearClassifier;
use serde_json::{json, Value};

mod support;
use support::{serve, HERD};

fn sha256(t: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(&url),
            _ => self.http.post(&url),
        };
        req = req.bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn text(&self, path: &str, token: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

fn worker(queue_url: &str, token: &str, extra_env: &[(&str, &str)]) {
    let mut cmd = Command::new(HERD);
    cmd.args(["worker", "--queue-url", queue_url, "--queue", "default"])
        .args(["--idle-exit", "1s", "--poll", "100ms"])
        .env("RUST_LOG", "warn")
        .env("HERD_TOKEN", token);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "herd worker failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_row(clf: &LinearClassifier, x: &[f32], out: &Value) {
    let (labels, probs) = clf.predict(x);
    assert_eq!(out["outputs"]["label"], labels[0], "label of {x:?}: {out}");
    let got: Vec<f64> = out["outputs"]["probabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("probabilities in {out}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (g, w) in got.iter().zip(&probs) {
        assert!((g - f64::from(*w)).abs() < 1e-5, "{got:?} vs {probs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_enqueue_batch_infer_and_templates_through_the_jobs_api() {
    let dir = std::env::temp_dir().join(format!("herd-jobs-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("models");
    let clf = LinearClassifier::random(4, 3, 5);
    for (model, tenant) in [("acme-clf", "acme"), ("globex-clf", "globex")] {
        std::fs::create_dir_all(repo.join(model).join("1")).unwrap();
        std::fs::write(repo.join(model).join("1/model.onnx"), clf.to_onnx(model)).unwrap();
        std::fs::write(
            repo.join(model).join("config.toml"),
            format!("tenant = \"{tenant}\"\n"),
        )
        .unwrap();
    }
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n\
             [[token]]\nsha256 = \"{}\"\ntenant = \"globex\"\n\
             [[token]]\nsha256 = \"{}\"\nadmin = true\n",
            sha256("acme-token"),
            sha256("globex-token"),
            sha256("admin-token")
        ),
    )
    .unwrap();
    let templates = dir.join("templates.toml");
    std::fs::write(
        &templates,
        "[[template]]\nname = \"greet\"\nprogram = \"echo\"\nargs = [\"hello\", \"{who}\"]\n\
         env = { GREETING_SECRET = \"op-secret\" }\nparams = [\"who\"]\ntenants = [\"acme\"]\n\
         timeout_secs = 60\nmax_attempts = 1\n",
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("acme")).unwrap();
    let rows: Vec<[f32; 4]> = (0..6)
        .map(|i| [i as f32 * 0.5, -1.0, 0.25, 1.0 - i as f32])
        .collect();
    std::fs::write(
        data.join("acme/rows.jsonl"),
        rows.iter()
            .enumerate()
            .map(|(i, r)| json!({"id": format!("r{i}"), "input": r}).to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let queue_url = format!("sqlite://{}", dir.join("jobs.db").display());
    let (_server, base) = serve(
        &[
            "--repo",
            repo.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
            "--jobs-queue-url",
            &queue_url,
            "--job-templates",
            templates.to_str().unwrap(),
            "--jobs-data",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let api = Api {
        http: reqwest::Client::new(),
        base,
    };

    // No token: 401.
    let (st, _) = api.call("GET", "/v1/jobs", "nope", None).await;
    assert_eq!(st, 401);

    // acme enqueues batch-infer over its own model.
    let (st, job) = api
        .call(
            "POST",
            "/v1/jobs",
            "acme-token",
            Some(json!({"kind": "batch-infer", "params": {"model": "acme-clf", "input": "rows.jsonl", "batch_size": 4}})),
        )
        .await;
    assert_eq!(st, 202, "{job}");
    let batch_id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "waiting");
    assert_eq!(job["spec"]["owner"], "acme");

    // globex may not use acme's model (403), nor name a server, nor read outside its folder.
    let (st, e) = api
        .call(
            "POST",
            "/v1/jobs",
            "globex-token",
            Some(json!({"kind": "batch-infer", "params": {"model": "acme-clf", "input": "rows.jsonl"}})),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    let (st, e) = api
        .call(
            "POST",
            "/v1/jobs",
            "globex-token",
            Some(json!({"kind": "batch-infer", "params": {"model": "globex-clf", "input": "../acme/rows.jsonl"}})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = api
        .call(
            "POST",
            "/v1/jobs",
            "globex-token",
            Some(json!({"kind": "batch-infer", "params": {"model": "globex-clf", "input": "x.jsonl", "server": "http://127.0.0.1:1"}})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = api
        .call(
            "POST",
            "/v1/jobs",
            "globex-token",
            Some(json!({"kind": "batch-infer", "params": {"model": "no-such-model", "input": "x.jsonl"}})),
        )
        .await;
    assert_eq!(st, 404, "{e}");

    // A client's command line: refused for a tenant and for the admin.
    for token in ["acme-token", "admin-token"] {
        let (st, e) = api
            .call(
                "POST",
                "/v1/jobs",
                token,
                Some(json!({"kind": "command", "params": {"program": "sh", "args": ["-c", "touch /tmp/pwned"]}})),
            )
            .await;
        assert_eq!(st, 403, "{e}");
        assert!(e["error"].as_str().unwrap().contains("template"), "{e}");
    }
    // Templates: acme may run `greet`; globex may not; bad values and unknown names are 400.
    let (st, tjob) = api
        .call(
            "POST",
            "/v1/jobs",
            "acme-token",
            Some(json!({"kind": "template", "params": {"name": "greet", "values": {"who": "world"}}})),
        )
        .await;
    assert_eq!(st, 202, "{tjob}");
    let template_id = tjob["id"].as_str().unwrap().to_string();
    assert_eq!(tjob["spec"]["params"]["args"], json!(["hello", "world"]));
    assert_eq!(
        tjob["spec"]["params"]["env"]["GREETING_SECRET"], "***",
        "the operator's env values are not shown: {tjob}"
    );
    let (st, e) = api
        .call(
            "POST",
            "/v1/jobs",
            "globex-token",
            Some(json!({"kind": "template", "params": {"name": "greet", "values": {"who": "x"}}})),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    for params in [
        json!({"name": "greet", "values": {"who": "$(id)"}}),
        json!({"name": "greet", "values": {}}),
        json!({"name": "rm-everything"}),
    ] {
        let (st, e) = api
            .call(
                "POST",
                "/v1/jobs",
                "acme-token",
                Some(json!({"kind": "template", "params": params})),
            )
            .await;
        assert_eq!(st, 400, "{params}: {e}");
    }

    // A waiting job can be cancelled (and then requeued) by its owner only.
    let (_, c) = api
        .call(
            "POST",
            "/v1/jobs",
            "acme-token",
            Some(json!({"queue": "later", "kind": "template", "params": {"name": "greet", "values": {"who": "later"}}})),
        )
        .await;
    let later = c["id"].as_str().unwrap().to_string();
    let (st, _) = api
        .call(
            "POST",
            &format!("/v1/jobs/{later}/cancel"),
            "globex-token",
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, c) = api
        .call(
            "POST",
            &format!("/v1/jobs/{later}/cancel"),
            "acme-token",
            None,
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["state"], "dead");
    assert!(
        c["last_error"].as_str().unwrap().contains("cancelled"),
        "{c}"
    );
    let (st, _) = api
        .call(
            "POST",
            &format!("/v1/jobs/{later}/cancel"),
            "acme-token",
            None,
        )
        .await;
    assert_eq!(st, 409);
    let (st, c) = api
        .call(
            "POST",
            &format!("/v1/jobs/{later}/requeue"),
            "acme-token",
            None,
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["state"], "waiting");

    // The worker (its own admin token) drains the default queue.
    worker(&queue_url, "admin-token", &[]);

    // acme reads its job and its results; globex cannot see it.
    let (st, job) = api
        .call("GET", &format!("/v1/jobs/{batch_id}"), "acme-token", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["detail"]["ok"], 6, "{job}");
    let (st, _) = api
        .call("GET", &format!("/v1/jobs/{batch_id}"), "globex-token", None)
        .await;
    assert_eq!(st, 404);
    let (st, _) = api
        .text(&format!("/v1/jobs/{batch_id}/results"), "globex-token")
        .await;
    assert_eq!(st, 404);
    let (st, body) = api
        .text(&format!("/v1/jobs/{batch_id}/results"), "acme-token")
        .await;
    assert_eq!(st, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), rows.len());
    for (i, (r, o)) in rows.iter().zip(&lines).enumerate() {
        assert_eq!(o["id"], format!("r{i}"));
        check_row(&clf, r, o);
    }
    // The results are in acme's folder of the jobs data.
    assert!(data.join(format!("acme/results/{batch_id}.jsonl")).exists());

    // The template ran: echo's output is the outcome's tail.
    let (_, tjob) = api
        .call(
            "GET",
            &format!("/v1/jobs/{template_id}"),
            "acme-token",
            None,
        )
        .await;
    assert_eq!(tjob["state"], "done", "{tjob}");
    assert_eq!(
        tjob["result"]["detail"]["output_tail"],
        json!(["hello world"])
    );

    // Lists: acme sees its three jobs; globex none; the admin all of them.
    let (_, l) = api.call("GET", "/v1/jobs", "acme-token", None).await;
    assert_eq!(l["jobs"].as_array().unwrap().len(), 3, "{l}");
    let (_, l) = api.call("GET", "/v1/jobs", "globex-token", None).await;
    assert_eq!(l["jobs"].as_array().unwrap().len(), 0, "{l}");
    let (_, l) = api
        .call("GET", "/v1/jobs?state=done", "admin-token", None)
        .await;
    assert_eq!(l["jobs"].as_array().unwrap().len(), 2, "{l}");
    let (st, _) = api
        .call("GET", "/v1/jobs?state=nope", "admin-token", None)
        .await;
    assert_eq!(st, 400);
    let _ = std::fs::remove_dir_all(&dir);
}
