//! `herd token new`: a random bearer token and the tokens-file lines that accept it.

use clap::{Subcommand, ValueEnum};
use rand::Rng;

/// What a token may do besides (or instead of) acting for a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenScope {
    /// Read `/metrics` (for the autoscaler and Prometheus).
    Metrics,
}

impl TokenScope {
    fn as_str(self) -> &'static str {
        match self {
            TokenScope::Metrics => "metrics",
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a new random token (stdout) and the [[token]] entry to append to the tokens file
    /// (stderr).
    New {
        /// Tenant the token may act for.
        #[arg(
            long,
            conflicts_with = "admin",
            required_unless_present_any = ["admin", "scope"]
        )]
        tenant: Option<String>,
        /// Make an admin token (all models and the repository API).
        #[arg(long)]
        admin: bool,
        /// A scope (repeatable): `--scope metrics` alone makes a token that may only read
        /// /metrics (what `herd autoscale --metrics-token-file` needs); with --tenant it is added.
        #[arg(long, value_enum, conflicts_with = "admin")]
        scope: Vec<TokenScope>,
    },
    /// Print the sha256 line for an existing token (read from stdin).
    Hash,
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New {
            tenant,
            admin,
            scope,
        } => {
            let bytes: [u8; 24] = rand::thread_rng().gen();
            let token = format!("herd_{}", hex_lower(&bytes));
            let hash = herd_server::auth::hash_token(&token);
            eprintln!("token (give it to the client; it is not stored): ");
            println!("{token}");
            eprintln!("\nappend to the tokens file:\n");
            eprintln!("{}", entry(&hash, tenant.as_deref(), admin, &scope));
            Ok(())
        }
        TokenCommand::Hash => {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s)?;
            println!("sha256 = \"{}\"", herd_server::auth::hash_token(s.trim()));
            Ok(())
        }
    }
}

/// The `[[token]]` entry of the tokens file for a token with sha256 `hash`.
fn entry(hash: &str, tenant: Option<&str>, admin: bool, scopes: &[TokenScope]) -> String {
    let mut e = format!("[[token]]\nsha256 = \"{hash}\"");
    match tenant {
        Some(t) => e.push_str(&format!("\ntenant = \"{t}\"")),
        None if admin => e.push_str("\nadmin = true"),
        None => {}
    }
    let mut names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    names.dedup();
    if !names.is_empty() {
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        e.push_str(&format!("\nscopes = [{}]", list.join(", ")));
    }
    e
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderMap};

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_metrics_scope_entry_reads_metrics_and_nothing_else() {
        let hash = herd_server::auth::hash_token("scraper");
        let text = entry(&hash, None, false, &[TokenScope::Metrics]);
        assert!(text.ends_with("scopes = [\"metrics\"]"), "{text}");
        let auth = herd_server::auth::Auth::from_toml(&text).unwrap();
        assert!(auth.check_metrics(&bearer("scraper")).is_ok());
        assert!(auth.check_metrics(&bearer("other")).is_err());
    }
}
