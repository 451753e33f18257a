//! What the integration tests of the `herd` binary share: the binary's path, skipping (loudly, and
//! never under CI) when a prerequisite is missing, loopback ports, child-process guards, and
//! starting a real `herd serve` that reports the address it listens on.
//!
//! Each test file includes it with `mod support;`; not every file uses every helper.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The `herd` binary under test.
pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// Whether this run is CI's (`CI` set): a missing prerequisite then fails instead of skipping.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// The prerequisite `what` is missing: panics under CI, else prints a loud `SKIPPED` line. The
/// caller returns after it.
pub fn skip(what: &str) {
    if under_ci() {
        panic!("{what} is missing; CI must provide it (see .ci/run and scripts/test.sh)");
    }
    eprintln!("SKIPPED: {what} is missing");
}

/// `ok`, or [`skip`] with `what` (for `if !require(..) { return; }`).
pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        skip(what);
    }
    ok
}

/// Whether `cmd ARGS` runs and exits 0 (quietly).
pub fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether the ONNX Runtime library is installed (`herd runtime path` finds it).
pub fn runtime_available() -> bool {
    runs(HERD, &["runtime", "path"])
}

/// [`require`] for the ONNX Runtime library.
pub fn require_runtime() -> bool {
    require(
        "the ONNX Runtime library (run `herd runtime install`)",
        runtime_available(),
    )
}

/// The value of the environment variable `name`, or [`skip`] naming it.
pub fn require_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(&format!(
                "{name} (from `bash scripts/test-services.sh && source .herd/test-env`)"
            ));
            None
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed (and reaped) when the guard is dropped, also on a panic.
pub struct Kill(pub Child);

impl Kill {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to `pid`.
pub fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}

/// A name no other test run uses at the same time (process id and nanoseconds).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// Starts `herd serve ARGS --addr 127.0.0.1:0 --log-json` with `envs` added to its environment
/// and waits (up to 2 minutes) for its "herd is serving" log line; returns the guarded process and
/// its base URL (`http://127.0.0.1:PORT`). Panics with the server's output if it exits first.
pub fn serve<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, &str)]) -> (Kill, String) {
    let mut cmd = Command::new(HERD);
    cmd.arg("serve")
        .args(args)
        .args(["--addr", "127.0.0.1:0", "--log-json"])
        .env_remove("HERD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = Kill(cmd.spawn().expect("spawn herd serve"));
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    // Reads the whole output (so the pipe never fills; bytes that are not UTF-8 are replaced,
    // never an end of reading), reporting the address once.
    std::thread::spawn(move || {
        let mut seen = std::collections::VecDeque::new();
        let mut reader = BufReader::new(stderr);
        let mut raw = Vec::new();
        while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            raw.clear();
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "herd is serving" {
                    if let Some(addr) = v["fields"]["addr"].as_str() {
                        let _ = tx.send(Ok(addr.to_string()));
                    }
                }
            }
            // The last 500 lines are what a failure shows.
            if seen.len() == 500 {
                seen.pop_front();
            }
            seen.push_back(line);
        }
        let _ = tx.send(Err(Vec::from(seen).join("\n")));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(addr)) => (child, format!("http://{addr}")),
        Ok(Err(log)) => panic!("herd serve exited before serving:\n{log}"),
        Err(_) => panic!("herd serve did not report its address within 2 minutes"),
    }
}

/// Runs `herd ARGS`, asserts it exits 0 and returns its standard output.
pub fn herd(args: &[&str]) -> String {
    let out = Command::new(HERD)
        .args(args)
        .env_remove("HERD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herd");
    assert!(
        out.status.success(),
        "herd {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The repository's root (where `.venv`, `scripts` and `examples` are).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A program of the test venv (`scripts/test-python.sh` builds `.venv`).
pub fn venv_bin(name: &str) -> PathBuf {
    root().join(".venv/bin").join(name)
}

/// The venv's python (numpy, onnx, onnxruntime, tokenizers, the MiniLM packages), or [`skip`].
pub fn venv_python() -> Option<PathBuf> {
    let py = venv_bin("python");
    if py.exists() {
        return Some(py);
    }
    skip(&format!(
        "{} (run scripts/test-python.sh to build the venv)",
        py.display()
    ));
    None
}
