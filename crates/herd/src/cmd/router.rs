//! `herd router haproxy-config`: prints an HAProxy configuration that sends each model to the
//! replica holding it (consistent hash on the model name, bounded load). The rendering lives in
//! herd-scale's `haproxy` module; this file only parses flags and prints.

use clap::{Args, Subcommand, ValueEnum};
use herd_scale::haproxy::{Balance, HaproxyConfig, Servers};

/// `herd router ...`
#[derive(Subcommand)]
pub enum RouterCommand {
    /// Print haproxy.cfg for fixed serving hosts (bare metal, VMs). Check it with
    /// `haproxy -c -f FILE`; run it with `haproxy -f FILE`. In Kubernetes, `herd k8s manifests`
    /// renders the same configuration with DNS discovery of the replicas.
    HaproxyConfig(HaproxyConfigArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BalanceArg {
    /// Consistent hash on the model name (path, JSON `model`, or x-herd-model), bounded load.
    Model,
    /// Round robin: every replica loads every model (for comparison only).
    RoundRobin,
}

#[derive(Args)]
pub struct HaproxyConfigArgs {
    /// A `herd serve` replica, HOST:PORT (repeat for each; the order fixes each one's place on
    /// the ring: keep it when adding or removing replicas).
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,

    /// Address HAProxy listens on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub bind: String,

    /// How requests are spread.
    #[arg(long, value_enum, default_value = "model")]
    pub balance: BalanceArg,

    /// Bounded load: a replica takes at most this percent of the average in-flight requests
    /// before requests spill to the next replica on the ring (0: off). Each spill loads a second
    /// copy of some model: lower values balance load better and cache worse (150 duplicated a
    /// third of the models in the routing test; 300 none with 3 replicas).
    #[arg(long, default_value_t = 300)]
    pub hash_balance_factor: u32,

    /// Health check interval on /v2/health/ready, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub check_interval_ms: u64,

    /// Times a failed request (replica stopped or draining) is tried again on another replica.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,

    /// Serve HAProxy's Prometheus metrics (/metrics) and stats page (/stats) on this address.
    #[arg(long)]
    pub stats_bind: Option<String>,

    /// Log requests to stdout.
    #[arg(long)]
    pub log: bool,
}

pub fn run(cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::HaproxyConfig(a) => {
            let cfg = HaproxyConfig {
                bind: a.bind,
                servers: Servers::Fixed(a.backends),
                balance: match a.balance {
                    BalanceArg::Model => Balance::Model,
                    BalanceArg::RoundRobin => Balance::RoundRobin,
                },
                hash_balance_factor: a.hash_balance_factor,
                check_interval_ms: a.check_interval_ms,
                retries: a.retries,
                stats_bind: a.stats_bind,
                log_stdout: a.log,
                ..HaproxyConfig::default()
            };
            print!("{}", cfg.render()?);
            Ok(())
        }
    }
}
