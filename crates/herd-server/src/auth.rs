//! Bearer tokens with tenants.
//!
//! A tokens file (TOML) lists SHA-256 hashes of tokens, never the tokens themselves:
//!
//! ```toml
//! [[token]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! tenant = "acme"          # may call acme's models
//!
//! [[token]]
//! sha256 = "..."
//! admin = true             # may call every model and the repository API
//!
//! [[token]]
//! sha256 = "..."
//! scopes = ["metrics"]     # may read /metrics (alone, or on top of a tenant)
//! ```
//!
//! `herd token new --tenant acme` makes a token and prints its line. Without a tokens file the
//! server is open (it binds loopback by default). With one: no token -> 401, a token of
//! another tenant -> 403, the repository API needs an admin token, `/metrics` (which names
//! every tenant's models) needs an admin token or one with the `metrics` scope.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use axum::http::HeaderMap;
use herd_api::ErrorCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::HttpError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No tokens file: everything is allowed.
    Open,
    Admin,
    Tenant(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenLine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLine {
    sha256: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    scopes: Vec<Scope>,
}

/// What a token may do beyond its tenant's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Scope {
    /// Read `/metrics`.
    Metrics,
}

/// The token table (empty = auth off).
#[derive(Debug, Default)]
pub struct Auth {
    by_hash: Option<HashMap<String, Principal>>,
    /// Tokens with the `metrics` scope.
    metrics: HashSet<String>,
    /// Tokens with scopes only (no tenant, not admin): they may do nothing else.
    scoped_only: HashSet<String>,
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The SHA-256 of the bearer token in `headers`; 401 when there is none.
fn bearer_hash(headers: &HeaderMap) -> Result<String, HttpError> {
    token_hash(bearer(headers))
}

fn token_hash(token: Option<&str>) -> Result<String, HttpError> {
    let token = token.ok_or_else(|| {
        HttpError::new(
            ErrorCode::Unauthorized,
            "missing bearer token: send 'Authorization: Bearer <token>'",
        )
    })?;
    Ok(hash_token(token))
}

impl Auth {
    pub fn open() -> Auth {
        Auth::default()
    }

    pub fn from_file(path: &Path) -> Result<Auth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        Auth::from_toml(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Auth, String> {
        let f: TokenFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::new();
        let mut metrics = HashSet::new();
        let mut scoped_only = HashSet::new();
        for (i, t) in f.token.into_iter().enumerate() {
            let h = t.sha256.to_ascii_lowercase();
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "token #{}: sha256 must be 64 hex characters",
                    i + 1
                ));
            }
            if t.scopes.contains(&Scope::Metrics) {
                metrics.insert(h.clone());
            }
            let p = match (t.admin, t.tenant) {
                (true, _) => Principal::Admin,
                (false, Some(tenant)) => Principal::Tenant(tenant),
                (false, None) if !t.scopes.is_empty() => {
                    scoped_only.insert(h);
                    continue;
                }
                (false, None) => {
                    return Err(format!(
                    "token #{}: give it a tenant = \"...\", admin = true or scopes = [\"metrics\"]",
                    i + 1
                ))
                }
            };
            by_hash.insert(h, p);
        }
        Ok(Auth {
            by_hash: Some(by_hash),
            metrics,
            scoped_only,
        })
    }

    pub fn enabled(&self) -> bool {
        self.by_hash.is_some()
    }

    /// Who is calling. 401 for a missing or unknown token when auth is on, 403 for a token
    /// that only has scopes (such as `metrics`).
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, HttpError> {
        self.identify(bearer(headers))
    }

    /// Who is calling, from the bearer token alone (transport-free). 401 for a missing or
    /// unknown token when auth is on.
    pub fn identify(&self, token: Option<&str>) -> Result<Principal, HttpError> {
        let Some(table) = &self.by_hash else {
            return Ok(Principal::Open);
        };
        let hash = token_hash(token)?;
        match table.get(&hash) {
            Some(p) => Ok(p.clone()),
            None if self.scoped_only.contains(&hash) => Err(HttpError::new(
                ErrorCode::Forbidden,
                "this token only has scopes (such as metrics) and may not call models",
            )),
            None => Err(HttpError::new(
                ErrorCode::Unauthorized,
                "unknown bearer token",
            )),
        }
    }

    /// May this caller read `/metrics`? With a tokens file: an admin token or one with the
    /// `metrics` scope (401 without a known token, 403 for another token).
    pub fn check_metrics(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        let Some(table) = &self.by_hash else {
            return Ok(());
        };
        let hash = bearer_hash(headers)?;
        if self.metrics.contains(&hash) || table.get(&hash) == Some(&Principal::Admin) {
            return Ok(());
        }
        if table.contains_key(&hash) || self.scoped_only.contains(&hash) {
            return Err(HttpError::new(
                ErrorCode::Forbidden,
                "/metrics needs an admin token or one with scopes = [\"metrics\"]",
            ));
        }
        Err(HttpError::new(
            ErrorCode::Unauthorized,
            "unknown bearer token",
        ))
    }

    /// May this caller use a model owned by `tenant`? 403 if not.
    pub fn check_model(
        &self,
        headers: &HeaderMap,
        model: &str,
        tenant: Option<&str>,
    ) -> Result<(), HttpError> {
        match self.principal(headers)? {
            Principal::Open | Principal::Admin => Ok(()),
            Principal::Tenant(t) => match tenant {
                Some(owner) if owner != t => Err(HttpError::new(
                    ErrorCode::Forbidden,
                    format!("model '{model}' belongs to another tenant"),
                )),
                _ => Ok(()),
            },
        }
    }

    /// Admin-only operations (the repository API).
    pub fn check_admin(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        match self.principal(headers)? {
            Principal::Open | Principal::Admin => Ok(()),
            Principal::Tenant(_) => Err(HttpError::new(
                ErrorCode::Forbidden,
                "this operation needs an admin token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    #[test]
    fn tenants_and_admin() {
        let text = format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n[[token]]\nsha256 = \"{}\"\nadmin = true\n",
            hash_token("a-secret"),
            hash_token("root")
        );
        let auth = Auth::from_toml(&text).unwrap();
        let code = |r: Result<(), HttpError>| r.err().map(|e| e.code());
        assert_eq!(
            code(auth.check_model(&headers(None), "m", Some("acme"))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(auth.check_model(&headers(Some("nope")), "m", Some("acme"))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(auth.check_model(&headers(Some("a-secret")), "m", Some("acme"))),
            None
        );
        assert_eq!(
            code(auth.check_model(&headers(Some("a-secret")), "m", Some("other"))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(auth.check_model(&headers(Some("root")), "m", Some("other"))),
            None
        );
        assert_eq!(
            code(auth.check_admin(&headers(Some("a-secret")))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(code(auth.check_admin(&headers(Some("root")))), None);
    }

    #[test]
    fn metrics_needs_admin_or_the_metrics_scope() {
        let text = format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n\
             [[token]]\nsha256 = \"{}\"\nadmin = true\n\
             [[token]]\nsha256 = \"{}\"\nscopes = [\"metrics\"]\n\
             [[token]]\nsha256 = \"{}\"\ntenant = \"ops\"\nscopes = [\"metrics\"]\n",
            hash_token("a-secret"),
            hash_token("root"),
            hash_token("scraper"),
            hash_token("ops")
        );
        let auth = Auth::from_toml(&text).unwrap();
        let code = |r: Result<(), HttpError>| r.err().map(|e| e.code());
        assert_eq!(
            code(auth.check_metrics(&headers(None))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(auth.check_metrics(&headers(Some("nope")))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(auth.check_metrics(&headers(Some("a-secret")))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(code(auth.check_metrics(&headers(Some("root")))), None);
        assert_eq!(code(auth.check_metrics(&headers(Some("scraper")))), None);
        assert_eq!(code(auth.check_metrics(&headers(Some("ops")))), None);
        // A scope-only token may do nothing but its scopes.
        assert_eq!(
            code(auth.check_model(&headers(Some("scraper")), "m", None)),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(auth.check_model(&headers(Some("ops")), "m", Some("ops"))),
            None
        );
        // Without a tokens file everything is open, /metrics too.
        assert_eq!(code(Auth::open().check_metrics(&headers(None))), None);
        assert!(Auth::from_toml(&format!(
            "[[token]]\nsha256 = \"{}\"\nscopes = [\"nope\"]",
            hash_token("x")
        ))
        .is_err());
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let e = Auth::from_toml("[[token]]\nsha256 = \"abc\"\ntenant = \"x\"").unwrap_err();
        assert!(e.contains("64 hex"), "{e}");
        let e =
            Auth::from_toml(&format!("[[token]]\nsha256 = \"{}\"", hash_token("x"))).unwrap_err();
        assert!(e.contains("tenant"), "{e}");
    }
}
