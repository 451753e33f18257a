//! Model-aware routing with HAProxy: a typed renderer of `haproxy.cfg` for the serving replicas.
//!
//! Every request is hashed on the model it names, so each model lives on one replica and N
//! replicas give N times the cache instead of N copies of the same hot set:
//! - the model is taken from an `x-herd-model` header when present, else from the path
//!   (`/v2/models/{model}/...`), else from the JSON body's `model` for the OpenAI-style
//!   `/v1/embeddings` (`req.body,json_query('$.model')`, which needs `option http-buffer-request`);
//!   a request that names no model (health, metadata) is balanced round robin;
//! - `balance hash var(txn.model)` with `hash-type consistent`: adding or removing a replica moves
//!   only that replica's share of the models; every server has a fixed `id` (its key on the ring),
//!   so the other servers' points do not move when one is added or removed;
//! - `hash-balance-factor` (bounded load): no server takes more than factor% of the average
//!   number of requests in flight; a request over the bound goes to the next server on the ring,
//!   so a hot model spills to a second replica instead of queueing on one. The spill is per
//!   request (any model of the busy replica), so every spill costs a second copy of some model:
//!   measured with 3 replicas, 600 models, zipf 1.1 (crates/herd/tests/routing.rs), a factor of
//!   150 put 30-37% of the models on two replicas and cut the hit ratio by 0.06; 200: 20%; 250:
//!   17%; 300: none (with N replicas a factor of N*100 or more never triggers). The default, 300,
//!   keeps each model on one replica for up to 3 replicas and bounds a replica at 3x its share
//!   beyond; lower it when overload matters more than cache copies;
//! - health checks on `/v2/health/ready`: a replica that is starting or draining leaves the ring
//!   first;
//! - `retry-on` + `option redispatch`: a request whose replica stopped (connection refused,
//!   closed without an answer, 503 while draining) is sent again to another server. Inference is
//!   safe to replay (no side effects), and the whole request is buffered anyway for the body hash;
//!   requests larger than `tune.bufsize` are not retried (HAProxy's rule), see [`HaproxyConfig::bufsize`].
//!
//! Servers are either fixed addresses (bare metal, VMs, tests: `herd router haproxy-config`) or
//! found through DNS (Kubernetes: a headless Service, `server-template` slots and a `resolvers`
//! section reading the pod's resolv.conf), so scaling the serving Deployment changes the ring
//! without restarting HAProxy.
//!
//! The keywords used here are accepted by HAProxy 2.6 (Debian bookworm's package); the tests run
//! `haproxy -c` over rendered configurations.

use std::fmt::Write as _;

use crate::error::{Result, ScaleError};

/// Header a client may set to name the model explicitly (it wins over path and body).
pub const MODEL_HEADER: &str = "x-herd-model";
/// Response header HAProxy adds with the name of the server that answered (debugging, tests).
pub const REPLICA_HEADER: &str = "x-herd-replica";
/// The readiness path of `herd serve`.
pub const READY_PATH: &str = "/v2/health/ready";

/// How requests are spread over the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Consistent hash of the model name, bounded load (the default).
    Model,
    /// Plain round robin (every replica ends up loading every model): for comparison.
    RoundRobin,
}

/// Where the replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// Fixed `host:port` addresses; server `i` (1-based) gets id `i` on the ring.
    Fixed(Vec<String>),
    /// DNS names of a headless Service: `slots` server slots filled from the A records of
    /// `service:port`, re-resolved while running.
    Dns {
        /// e.g. `herd-serve-default-replicas.herd.svc.cluster.local`
        service: String,
        port: u16,
        /// Upper bound on replicas HAProxy can route to (the autoscaler's max or more).
        slots: u32,
    },
}

/// Everything `haproxy.cfg` is rendered from.
#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    /// Listen address, `host:port` (`0.0.0.0:8080`, `127.0.0.1:0` is not allowed: HAProxy needs a port).
    pub bind: String,
    pub servers: Servers,
    pub balance: Balance,
    /// Percent of the average in-flight requests one server may take (0 disables; 125..=200 usual).
    pub hash_balance_factor: u32,
    /// Health check interval, milliseconds.
    pub check_interval_ms: u64,
    /// How many times a failed request is tried again (on another server, `option redispatch 1`).
    pub retries: u32,
    /// `tune.bufsize`: requests up to this size are hashed on their JSON body and can be retried.
    pub bufsize: u32,
    /// Maximum concurrent connections of the process.
    pub maxconn: u32,
    /// Server timeout: the longest an inference may take (a cold load included), seconds.
    pub server_timeout_s: u64,
    /// Optional listen address of HAProxy's Prometheus exporter (`/metrics`) and stats page.
    pub stats_bind: Option<String>,
    /// Log to stdout (containers) instead of not logging.
    pub log_stdout: bool,
}

impl Default for HaproxyConfig {
    fn default() -> Self {
        HaproxyConfig {
            bind: "0.0.0.0:8080".into(),
            servers: Servers::Fixed(vec!["127.0.0.1:8081".into()]),
            balance: Balance::Model,
            hash_balance_factor: 300,
            check_interval_ms: 1000,
            retries: 3,
            bufsize: 65536,
            maxconn: 4096,
            server_timeout_s: 60,
            stats_bind: None,
            log_stdout: false,
        }
    }
}

fn bad(msg: impl Into<String>) -> ScaleError {
    ScaleError::Manifest(msg.into())
}

/// `host:port` where host is a name or an IPv4/IPv6 address (IPv6 in brackets or bare for bind);
/// nothing HAProxy would read as another token (spaces, quotes, '#', newlines).
fn check_addr(what: &str, addr: &str) -> Result<()> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        bad(format!(
            "{what} '{addr}' must be HOST:PORT, e.g. 10.0.0.5:8080"
        ))
    })?;
    let port_ok = port.parse::<u16>().map(|p| p > 0).unwrap_or(false);
    if !port_ok {
        return Err(bad(format!(
            "{what} '{addr}': the port must be a number in 1..=65535"
        )));
    }
    check_host(what, host)
}

fn check_host(what: &str, host: &str) -> Result<()> {
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if host_ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} host '{host}' is not a host name or IP address"
        )))
    }
}

impl HaproxyConfig {
    fn validate(&self) -> Result<()> {
        check_addr("--bind", &self.bind)?;
        if let Some(s) = &self.stats_bind {
            check_addr("stats bind", s)?;
        }
        match &self.servers {
            Servers::Fixed(list) => {
                if list.is_empty() {
                    return Err(bad("at least one --backend HOST:PORT is needed"));
                }
                for a in list {
                    check_addr("--backend", a)?;
                }
            }
            Servers::Dns {
                service,
                port,
                slots,
            } => {
                check_host("service", service)?;
                if *port == 0 {
                    return Err(bad("the serving port must be in 1..=65535"));
                }
                if *slots == 0 || *slots > 1000 {
                    return Err(bad("server slots must be in 1..=1000"));
                }
            }
        }
        if self.hash_balance_factor != 0 && self.hash_balance_factor <= 100 {
            return Err(bad(format!(
                "hash-balance-factor {} must be 0 (off) or above 100 (percent of the average load)",
                self.hash_balance_factor
            )));
        }
        if self.check_interval_ms < 100 {
            return Err(bad("the health check interval must be at least 100ms"));
        }
        if !(16384..=1 << 20).contains(&self.bufsize) {
            return Err(bad("tune.bufsize must be in 16384..=1048576 bytes"));
        }
        if self.maxconn == 0 || self.server_timeout_s == 0 {
            return Err(bad("maxconn and the server timeout must be above zero"));
        }
        Ok(())
    }

    /// The `haproxy.cfg` text.
    pub fn render(&self) -> Result<String> {
        self.validate()?;
        let mut c = String::new();
        let w = &mut c;
        // Writing to a String cannot fail.
        let _ = writeln!(
            w,
            "# Rendered by herd (herd-scale haproxy.rs); HAProxy 2.6 or newer."
        );
        let _ = writeln!(w, "global");
        let _ = writeln!(w, "    maxconn {}", self.maxconn);
        // Whole requests up to this size are buffered: hashed on their JSON body, retryable.
        let _ = writeln!(w, "    tune.bufsize {}", self.bufsize);
        if self.log_stdout {
            let _ = writeln!(w, "    log stdout format raw local0");
        }
        let _ = writeln!(w);
        let _ = writeln!(w, "defaults");
        let _ = writeln!(w, "    mode http");
        if self.log_stdout {
            let _ = writeln!(w, "    log global");
            let _ = writeln!(w, "    option httplog");
        }
        let _ = writeln!(w, "    timeout connect 2s");
        let _ = writeln!(w, "    timeout client 60s");
        let _ = writeln!(w, "    timeout http-request 10s");
        let _ = writeln!(w, "    timeout http-keep-alive 10s");
        let _ = writeln!(w, "    timeout queue 30s");
        let _ = writeln!(w, "    timeout server {}s", self.server_timeout_s);
        // A stopped or draining replica: try again, on another server each time.
        let _ = writeln!(w, "    retries {}", self.retries);
        let _ = writeln!(w, "    option redispatch 1");
        let _ = writeln!(w, "    retry-on conn-failure empty-response 503");
        let _ = writeln!(w);
        if let Servers::Dns { .. } = self.servers {
            let _ = writeln!(w, "resolvers cluster");
            let _ = writeln!(w, "    parse-resolv-conf");
            let _ = writeln!(w, "    resolve_retries 3");
            let _ = writeln!(w, "    timeout resolve 1s");
            let _ = writeln!(w, "    timeout retry 1s");
            let _ = writeln!(w, "    hold valid 5s");
            let _ = writeln!(w, "    hold other 5s");
            let _ = writeln!(w, "    hold refused 5s");
            let _ = writeln!(w, "    hold nx 5s");
            let _ = writeln!(w, "    hold timeout 5s");
            let _ = writeln!(w, "    hold obsolete 10s");
            let _ = writeln!(w);
        }
        if let Some(s) = &self.stats_bind {
            let _ = writeln!(w, "frontend stats");
            let _ = writeln!(w, "    bind {s}");
            let _ = writeln!(
                w,
                "    http-request use-service prometheus-exporter if {{ path /metrics }}"
            );
            let _ = writeln!(w, "    stats enable");
            let _ = writeln!(w, "    stats uri /stats");
            let _ = writeln!(w, "    stats refresh 10s");
            let _ = writeln!(w);
        }
        let _ = writeln!(w, "frontend herd");
        let _ = writeln!(w, "    bind {}", self.bind);
        let _ = writeln!(w, "    option http-buffer-request");
        let _ = writeln!(
            w,
            "    http-request set-var(txn.model) req.hdr({MODEL_HEADER}) if {{ req.hdr({MODEL_HEADER}) -m found }}"
        );
        let _ = writeln!(
            w,
            "    http-request set-var(txn.model) path,field(4,/) if !{{ var(txn.model) -m found }} {{ path_beg /v2/models/ }}"
        );
        let _ = writeln!(
            w,
            "    http-request set-var(txn.model) req.body,json_query('$.model') if !{{ var(txn.model) -m found }} {{ path /v1/embeddings }}"
        );
        let _ = writeln!(w, "    default_backend herd_serve");
        let _ = writeln!(w);
        let _ = writeln!(w, "backend herd_serve");
        match self.balance {
            Balance::Model => {
                let _ = writeln!(w, "    balance hash var(txn.model)");
                // avalanche: model names differ in few characters (customer-0001, customer-0002).
                let _ = writeln!(w, "    hash-type consistent sdbm avalanche");
                if self.hash_balance_factor > 0 {
                    let _ = writeln!(w, "    hash-balance-factor {}", self.hash_balance_factor);
                }
            }
            Balance::RoundRobin => {
                let _ = writeln!(w, "    balance roundrobin");
            }
        }
        let _ = writeln!(w, "    option httpchk GET {READY_PATH}");
        let _ = writeln!(w, "    http-check expect status 200");
        let _ = writeln!(w, "    http-response set-header {REPLICA_HEADER} %s");
        let _ = writeln!(
            w,
            "    default-server check inter {}ms fastinter {}ms downinter {}ms fall 2 rise 2",
            self.check_interval_ms,
            (self.check_interval_ms / 2).max(100),
            self.check_interval_ms
        );
        match &self.servers {
            Servers::Fixed(list) => {
                for (i, a) in list.iter().enumerate() {
                    let _ = writeln!(w, "    server serve{} {a} id {}", i + 1, i + 1);
                }
            }
            Servers::Dns {
                service,
                port,
                slots,
            } => {
                // Slots keep their id (1..=slots) on the ring; DNS fills them with pod addresses.
                let _ = writeln!(
                    w,
                    "    server-template serve 1-{slots} {service}:{port} resolvers cluster init-addr none resolve-prefer ipv4"
                );
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_servers_have_stable_ids_and_the_model_hash() {
        let c = HaproxyConfig {
            servers: Servers::Fixed(vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()]),
            ..Default::default()
        };
        let t = c.render().unwrap();
        assert!(t.contains("    balance hash var(txn.model)\n"));
        assert!(t.contains("    hash-type consistent sdbm avalanche\n"));
        assert!(t.contains("    hash-balance-factor 300\n"));
        assert!(t.contains("    server serve1 10.0.0.1:8080 id 1\n"));
        assert!(t.contains("    server serve2 10.0.0.2:8080 id 2\n"));
        assert!(t.contains("option httpchk GET /v2/health/ready"));
        assert!(t.contains("retry-on conn-failure empty-response 503"));
        assert!(t.contains("option redispatch 1"));
        assert!(!t.contains("resolvers"));
    }

    #[test]
    fn dns_servers_use_a_template_and_resolvers() {
        let c = HaproxyConfig {
            servers: Servers::Dns {
                service: "herd-serve-default-replicas.herd.svc.cluster.local".into(),
                port: 8080,
                slots: 20,
            },
            ..Default::default()
        };
        let t = c.render().unwrap();
        assert!(t.contains("resolvers cluster\n    parse-resolv-conf\n"));
        assert!(t.contains("server-template serve 1-20 herd-serve-default-replicas.herd.svc.cluster.local:8080 resolvers cluster init-addr none"));
    }

    #[test]
    fn round_robin_has_no_hash() {
        let c = HaproxyConfig {
            balance: Balance::RoundRobin,
            ..Default::default()
        };
        let t = c.render().unwrap();
        assert!(t.contains("balance roundrobin"));
        assert!(!t.contains("hash-type"));
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let with = |servers: Vec<&str>, bind: &str| HaproxyConfig {
            bind: bind.into(),
            servers: Servers::Fixed(servers.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        let e = with(vec![], "0.0.0.0:80").render().unwrap_err().to_string();
        assert!(e.contains("at least one --backend"), "{e}");
        let e = with(vec!["10.0.0.1"], "0.0.0.0:80")
            .render()
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = with(vec!["10.0.0.1:99999"], "0.0.0.0:80")
            .render()
            .unwrap_err()
            .to_string();
        assert!(e.contains("1..=65535"), "{e}");
        // Injection of another directive through an address.
        let e = with(vec!["10.0.0.1:80\n    server x 1.2.3.4:80"], "0.0.0.0:80")
            .render()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("port must be a number") || e.contains("not a host"),
            "{e}"
        );
        let e = with(vec!["a b:80"], "0.0.0.0:80")
            .render()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a host name"), "{e}");
        let mut c = with(vec!["10.0.0.1:80"], "0.0.0.0:80");
        c.hash_balance_factor = 90;
        assert!(c.render().unwrap_err().to_string().contains("above 100"));
    }
}
