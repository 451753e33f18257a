//! `rediss://` end to end: a real `redis-server` with TLS only (Debian's build has it) and a
//! password, its certificate signed by a CA made here with `openssl`; the real `herd job` CLI
//! enqueues and counts through it when the CA is trusted (`SSL_CERT_FILE`, read by rustls'
//! native-certs loader like every other TLS client on the machine), the queue URL passed in
//! `HERD_QUEUE_URL` (never argv). An untrusted certificate and a wrong password are errors at
//! once that show no password.
//!
//! Run: `cargo test -p herd --test redis_tls -- --nocapture`

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{free_port, require, runs, Kill, HERD};

const PASSWORD: &str = "tls-Pa55word";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it (rustls refuses a CA certificate as
/// the server's own).
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
    ca.extend(["-subj", "/CN=herd test CA"]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    csr.extend(["-subj", "/CN=127.0.0.1"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn herd_job(url: &str, ca: Option<&Path>, args: &[&str]) -> (Output, Duration) {
    let mut cmd = Command::new(HERD);
    cmd.arg("job")
        .args(args)
        .env("HERD_QUEUE_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("HERD_CONFIG")
        .env_remove("SSL_CERT_DIR");
    match ca {
        Some(ca) => cmd.env("SSL_CERT_FILE", ca),
        // A bundle without our CA: the server's certificate is untrusted.
        None => cmd.env("SSL_CERT_FILE", "/dev/null"),
    };
    let t = Instant::now();
    let out = cmd.output().expect("run herd job");
    (out, t.elapsed())
}

#[test]
fn rediss_with_a_password_and_a_private_ca() {
    if !require("redis-server", runs("redis-server", &["--version"]))
        || !require("openssl", runs("openssl", &["version"]))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = free_port();
    let _redis = Kill(
        Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "redis-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = dir.path().join("ca.pem");
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}/?prefix=tls");

    let (out, _) = herd_job(&url, Some(&ca), &["enqueue", "command", "--", "echo", "hi"]);
    assert!(
        out.status.success(),
        "enqueue over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = herd_job(&url, Some(&ca), &["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats --json");
    assert!(
        stats.to_string().contains("\"waiting\":1"),
        "one job waits: {stats}"
    );

    let wrong = format!("rediss://:wrong-Pa55@127.0.0.1:{port}/?prefix=tls");
    for (what, url, ca) in [
        ("an untrusted certificate", url.as_str(), None),
        ("a wrong password", wrong.as_str(), Some(ca.as_path())),
    ] {
        let (out, took) = herd_job(url, ca, &["stats"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: must fail");
        assert!(
            !err.contains(PASSWORD) && !err.contains("wrong-Pa55"),
            "{what}: the password is shown: {err}"
        );
        assert!(
            took < Duration::from_secs(60),
            "{what}: the error took {took:?}: {err}"
        );
        eprintln!("{what}: {}", err.trim());
    }
}
