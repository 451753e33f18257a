//! The rendered HAProxy configuration, checked and run by the real HAProxy (Debian's package).
//!
//! - `haproxy -c` accepts every rendered variant (fixed servers, DNS discovery, round robin);
//! - the model is found in the path, the `x-herd-model` header and the JSON body of
//!   `/v1/embeddings`, and the three land on the same replica;
//! - the ring: a scale-up from 3 to 4 replicas moves only the models the new replica takes, and
//!   a scale-down from 3 to 2 moves only the removed replica's models (consistent hashing), with
//!   the mapping computed by HAProxy itself (the `x-herd-replica` header of each answer).
//!
//! The replicas are tiny HTTP servers in this test (the routing test with real `herd serve`
//! processes is `crates/herd/tests/routing.rs`). Needs `haproxy` on PATH: under CI=true a
//! missing one fails the test, elsewhere it prints SKIPPED.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herd_scale::haproxy::{Balance, HaproxyConfig, Servers, REPLICA_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn haproxy_available() -> bool {
    let ok = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let msg =
            "haproxy is not installed (apt-get install haproxy; scripts/test-services.sh does it)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    ok
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herd-haproxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `haproxy -c -f FILE` on the rendered text: Ok or HAProxy's complaint.
fn check(name: &str, cfg: &str) -> Result<(), String> {
    let dir = scratch(name);
    let f = dir.join("haproxy.cfg");
    std::fs::write(&f, cfg).unwrap();
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts HAProxy over fixed `backends` and waits until every backend passed its health check.
async fn start_proxy(name: &str, backends: &[SocketAddr], hash_balance_factor: u32) -> Proxy {
    let port = free_port();
    let cfg = HaproxyConfig {
        bind: format!("127.0.0.1:{port}"),
        servers: Servers::Fixed(backends.iter().map(|a| a.to_string()).collect()),
        check_interval_ms: 200,
        hash_balance_factor,
        stats_bind: None,
        ..Default::default()
    };
    let text = cfg.render().unwrap();
    check(name, &text).unwrap();
    let dir = scratch(name);
    let f = dir.join("haproxy.cfg");
    std::fs::write(&f, &text).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&f)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proxy {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        dir,
    };
    // Up when a round-robin request (no model) has reached every backend.
    let client = reqwest::Client::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        if let Ok(r) = client
            .get(format!("http://{}/v2/health/ready", p.addr))
            .send()
            .await
        {
            if r.status().is_success() {
                if let Some(s) = r.headers().get(REPLICA_HEADER) {
                    seen.insert(s.to_str().unwrap().to_string());
                }
            }
        }
        if seen.len() == backends.len() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "haproxy did not bring all {} backends up: saw {seen:?}",
        backends.len()
    );
}

/// A minimal HTTP/1.1 server answering 200 to every request (keep-alive), like a ready replica.
async fn tiny_replica() -> SocketAddr {
    slow_replica(Duration::ZERO).await
}

/// [`tiny_replica`] that takes `delay` to answer a request on a model path (health checks are
/// answered at once), so requests stay in flight.
async fn slow_replica(delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: headers, then content-length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    if head.contains("/v2/models/") && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn model(i: usize) -> String {
    format!("customer-{i:05}")
}

/// Which server HAProxy sends each of `n` models to (`serveN` names), asked one at a time so
/// that bounded load never kicks in (nothing else in flight).
async fn mapping(p: &Proxy, n: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = client
            .post(format!("http://{}/v2/models/{}/infer", p.addr, model(i)))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        out.push(r.headers()[REPLICA_HEADER].to_str().unwrap().to_string());
    }
    out
}

fn shares(m: &[String]) -> BTreeMap<String, usize> {
    let mut s = BTreeMap::new();
    for r in m {
        *s.entry(r.clone()).or_insert(0) += 1;
    }
    s
}

#[test]
fn every_rendered_variant_passes_haproxy_check() {
    if !haproxy_available() {
        return;
    }
    let variants = [
        HaproxyConfig {
            servers: Servers::Fixed(vec!["127.0.0.1:8081".into(), "10.1.2.3:8080".into()]),
            stats_bind: Some("127.0.0.1:8404".into()),
            log_stdout: true,
            ..Default::default()
        },
        HaproxyConfig {
            servers: Servers::Dns {
                service: "herd-serve-default-replicas.herd.svc.cluster.local".into(),
                port: 8080,
                slots: 32,
            },
            stats_bind: Some("0.0.0.0:8404".into()),
            ..Default::default()
        },
        HaproxyConfig {
            balance: Balance::RoundRobin,
            ..Default::default()
        },
        HaproxyConfig {
            hash_balance_factor: 0,
            ..Default::default()
        },
    ];
    for (i, v) in variants.iter().enumerate() {
        let text = v.render().unwrap();
        check(&format!("variant{i}"), &text).unwrap_or_else(|e| {
            panic!("haproxy -c refused variant {i}:\n{e}\n--- config:\n{text}")
        });
    }
    // The router ConfigMap `herd k8s manifests` renders (DNS discovery of the serving pods).
    let k8s = herd_scale::manifests::ManifestOptions::default()
        .router_config("default")
        .unwrap();
    assert!(
        k8s.contains("server-template serve 1-32 herd-serve-default.herd.svc.cluster.local:8080")
    );
    check("k8s", &k8s).unwrap_or_else(|e| panic!("haproxy -c refused the router ConfigMap:\n{e}"));
    // And a broken one is refused by haproxy -c (the check can fail).
    let broken = HaproxyConfig::default()
        .render()
        .unwrap()
        .replace("hash-type consistent", "hash-type no-such-method");
    assert!(check("broken", &broken).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_header_and_json_body_name_the_same_replica() {
    if !haproxy_available() {
        return;
    }
    let backends = vec![
        tiny_replica().await,
        tiny_replica().await,
        tiny_replica().await,
    ];
    let p = start_proxy("sources", &backends, 0).await;
    let client = reqwest::Client::new();
    let mut replicas_used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let m = model(i);
        let by_path = client
            .post(format!("http://{}/v2/models/{m}/infer", p.addr))
            .body("{}")
            .send()
            .await
            .unwrap();
        let by_version_path = client
            .post(format!("http://{}/v2/models/{m}/versions/3/infer", p.addr))
            .body("{}")
            .send()
            .await
            .unwrap();
        let by_header = client
            .post(format!("http://{}/some/other/route", p.addr))
            .header("x-herd-model", &m)
            .body("{}")
            .send()
            .await
            .unwrap();
        let by_body = client
            .post(format!("http://{}/v1/embeddings", p.addr))
            .header("content-type", "application/json")
            .body(serde_json::json!({"input": ["a b c"], "model": m}).to_string())
            .send()
            .await
            .unwrap();
        let name =
            |r: &reqwest::Response| r.headers()[REPLICA_HEADER].to_str().unwrap().to_string();
        let want = name(&by_path);
        assert_eq!(name(&by_version_path), want, "{m}: versioned path");
        assert_eq!(name(&by_header), want, "{m}: x-herd-model header");
        assert_eq!(name(&by_body), want, "{m}: JSON body model");
        replicas_used.insert(want);
    }
    // 30 models over 3 replicas: all three get some (else the hash did not hash).
    assert_eq!(replicas_used.len(), 3, "{replicas_used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_moves_only_the_changed_replicas_share_of_models() {
    if !haproxy_available() {
        return;
    }
    const N: usize = 600;
    let b: Vec<SocketAddr> = vec![
        tiny_replica().await,
        tiny_replica().await,
        tiny_replica().await,
        tiny_replica().await,
    ];
    let three = {
        let p = start_proxy("ring3", &b[..3], 0).await;
        mapping(&p, N).await
    };
    let s3 = shares(&three);
    println!("3 replicas: {s3:?}");
    assert_eq!(s3.len(), 3);
    for (r, n) in &s3 {
        assert!(*n > N / 6, "{r} holds only {n} of {N} models: {s3:?}");
    }

    // Scale up: a 4th replica (id 4). Models either stay or move to serve4, nothing else.
    let four = {
        let p = start_proxy("ring4", &b, 0).await;
        mapping(&p, N).await
    };
    let mut moved = 0;
    for i in 0..N {
        if three[i] != four[i] {
            assert_eq!(
                four[i],
                "serve4",
                "{} moved {} -> {}",
                model(i),
                three[i],
                four[i]
            );
            moved += 1;
        }
    }
    println!("scale-up 3 -> 4: {moved} of {N} models moved, all to serve4");
    // About a quarter; never most of them (a modulo hash would move ~3/4).
    assert!(moved > N / 10 && moved < N * 2 / 5, "moved {moved} of {N}");

    // Scale down: serve3 removed. Only serve3's models move, spread over serve1 and serve2.
    let two = {
        let p = start_proxy("ring2", &b[..2], 0).await;
        mapping(&p, N).await
    };
    let mut moved = 0;
    for i in 0..N {
        if three[i] == "serve3" {
            assert_ne!(two[i], "serve3");
            moved += 1;
        } else {
            assert_eq!(
                two[i],
                three[i],
                "{} moved though its replica stayed",
                model(i)
            );
        }
    }
    println!("scale-down 3 -> 2: {moved} of {N} models moved (exactly serve3's share)");
    assert_eq!(moved, s3["serve3"]);
}

/// Bounded load: many concurrent requests for one hot model. With hash-balance-factor 150 they
/// spill from its replica to exactly one more (the next on the ring), never to a third; with the
/// default (300, never triggers with 3 replicas) they all stay on one replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_model_spills_to_a_second_replica_and_no_further() {
    if !haproxy_available() {
        return;
    }
    let b = vec![
        slow_replica(Duration::from_millis(300)).await,
        slow_replica(Duration::from_millis(300)).await,
        slow_replica(Duration::from_millis(300)).await,
    ];
    for (factor, want) in [(150u32, 2usize), (300, 1)] {
        let p = start_proxy(&format!("hot{factor}"), &b, factor).await;
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (client, url) = (
                client.clone(),
                format!("http://{}/v2/models/{}/infer", p.addr, model(7)),
            );
            tasks.push(tokio::spawn(async move {
                let r = client.post(url).body("{}").send().await.unwrap();
                assert!(r.status().is_success());
                r.headers()[REPLICA_HEADER].to_str().unwrap().to_string()
            }));
        }
        let mut used = BTreeMap::new();
        for t in tasks {
            *used.entry(t.await.unwrap()).or_insert(0) += 1;
        }
        println!("hash-balance-factor {factor}: 12 concurrent requests of one model -> {used:?}");
        assert_eq!(used.len(), want, "factor {factor}: {used:?}");
    }
}
