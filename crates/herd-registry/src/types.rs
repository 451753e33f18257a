//! The registry's public data types (what the CLI prints and the REST API returns).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::to_canonical_string;

/// A model: one per customer use case; versions hang under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub tenant: Option<String>,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: String,
    /// Highest version number, if any version was pushed.
    pub latest_version: Option<i64>,
    pub version_count: i64,
}

/// One immutable version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model: String,
    /// 1, 2, 3... per model, never reused.
    pub version: i64,
    /// `sha256:<hex>` of the artifact.
    pub digest: String,
    pub size: u64,
    pub framework: String,
    /// Inputs/outputs read from the ONNX file at push time.
    pub signature: serde_json::Value,
    pub metrics: BTreeMap<String, f64>,
    /// Immutable data lineage reference (commit or content hash).
    pub data_ref: Option<String>,
    /// Immutable code lineage reference (commit sha).
    pub code_ref: Option<String>,
    pub created_at: String,
    pub created_by: String,
    /// Set when `gc` removed the artifact; the metadata stays for traceability.
    pub artifact_deleted_at: Option<String>,
    /// The bundle's files (path -> digest, size) when the version is a multi-file bundle; empty
    /// for a one-file bundle (`digest` is then the digest of its `model.onnx`). Filled by
    /// single-version reads (`version`, `resolve`, push), empty in listings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<BundleFile>,
}

/// One file of a model bundle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundleFile {
    /// Path inside the model directory (`model.onnx`, `tokenizer.json`, `config.toml`, ...).
    pub path: String,
    /// `sha256:<hex>` of the file's content.
    pub digest: String,
    pub size: u64,
}

/// Options for creating a model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewModel {
    pub name: String,
    pub tenant: Option<String>,
    pub description: String,
    pub tags: Vec<String>,
}

/// A version to push.
#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    pub model: String,
    pub bytes: bytes::Bytes,
    pub metrics: BTreeMap<String, f64>,
    pub data_ref: Option<String>,
    pub code_ref: Option<String>,
    pub created_by: String,
    /// Create the model first when it does not exist (otherwise an unknown model is an error).
    pub create: Option<NewModel>,
    /// The other files of a bundle (path inside the model directory -> content), besides
    /// `bytes` (the `model.onnx`). Empty: a one-file bundle, stored exactly as before bundles.
    pub files: BTreeMap<String, bytes::Bytes>,
    /// The caller's tenant when the caller is a tenant token (None: admin or no auth). Checked
    /// inside the write transaction: a tenant may push only to its own tenant's models, never
    /// to a model without a tenant.
    pub as_tenant: Option<String>,
}

/// The outcome of a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushOutcome {
    pub version: ModelVersion,
    /// False when the latest version already had these exact bytes and lineage (nothing written).
    pub created: bool,
    /// False when the artifact was already in the store.
    pub uploaded: bool,
}

/// One change of an alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasEvent {
    pub model: String,
    pub alias: String,
    pub from_version: Option<i64>,
    pub to_version: i64,
    pub at: String,
    pub by: String,
}

/// An alias as it stands now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub model: String,
    pub alias: String,
    pub version: i64,
    pub updated_at: String,
    pub updated_by: String,
}

/// One model's entry in a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    pub version: i64,
    pub digest: String,
}

/// The canonical manifest of a release set: RFC 8785 JSON of `{model: {digest, version}}`.
pub fn release_manifest(entries: &BTreeMap<String, ReleaseEntry>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(m, e)| {
            (
                m.clone(),
                serde_json::json!({"version": e.version, "digest": e.digest}),
            )
        })
        .collect();
    // Only strings and integers inside: canonicalization cannot fail.
    to_canonical_string(&serde_json::Value::Object(map)).unwrap_or_default()
}

/// A release id: SHA-256 (hex) of [`release_manifest`].
pub fn release_id(entries: &BTreeMap<String, ReleaseEntry>) -> String {
    hex::encode(Sha256::digest(release_manifest(entries).as_bytes()))
}

/// The 12-hex short form users type.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// An immutable set of model versions shipped together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// 64 hex: SHA-256 of the canonical manifest.
    pub id: String,
    pub short_id: String,
    pub entries: BTreeMap<String, ReleaseEntry>,
    pub note: Option<String>,
    pub created_at: String,
    pub created_by: String,
}

impl Release {
    /// Recomputes the id from the entries.
    pub fn computed_id(&self) -> String {
        release_id(&self.entries)
    }
}

/// A release without its entries (for lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSummary {
    pub id: String,
    pub short_id: String,
    pub model_count: i64,
    pub note: Option<String>,
    pub created_at: String,
    pub created_by: String,
    /// Channels currently pointing at this release.
    pub channels: Vec<String>,
}

/// What to put in a new release: model -> version selector (a number, an alias name, or `latest`).
#[derive(Debug, Clone, Default)]
pub struct ReleaseSpec {
    pub entries: BTreeMap<String, String>,
    pub note: Option<String>,
    pub created_by: String,
}

/// Differences between two releases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseDiff {
    pub from: String,
    pub to: String,
    pub added: BTreeMap<String, ReleaseEntry>,
    pub removed: BTreeMap<String, ReleaseEntry>,
    /// model -> (from, to)
    pub changed: BTreeMap<String, (ReleaseEntry, ReleaseEntry)>,
    pub unchanged: usize,
}

/// Computes `to - from`.
pub fn diff_entries(
    from: &BTreeMap<String, ReleaseEntry>,
    to: &BTreeMap<String, ReleaseEntry>,
) -> ReleaseDiff {
    let mut d = ReleaseDiff::default();
    for (m, e) in to {
        match from.get(m) {
            None => {
                d.added.insert(m.clone(), e.clone());
            }
            Some(old) if old != e => {
                d.changed.insert(m.clone(), (old.clone(), e.clone()));
            }
            Some(_) => d.unchanged += 1,
        }
    }
    for (m, e) in from {
        if !to.contains_key(m) {
            d.removed.insert(m.clone(), e.clone());
        }
    }
    d
}

/// A channel (e.g. `production`) and the release it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    pub release_id: String,
    /// Increases on every change; cheap to poll.
    pub revision: i64,
    pub updated_at: String,
    pub updated_by: String,
}

/// One change of a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelEvent {
    pub channel: String,
    /// `promote`, `rollback` or `rollback-model`.
    pub action: String,
    pub from_release: Option<String>,
    pub to_release: String,
    pub at: String,
    pub by: String,
}

/// A page of results; `next_offset` is the `offset` for the next page, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_offset: Option<u64>,
}

/// Filters for listing models. All set filters must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelFilter {
    pub tenant: Option<String>,
    pub tag: Option<String>,
    /// Substring of the name.
    pub name_contains: Option<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// Filters for listing versions. All set filters must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionFilter {
    pub model: Option<String>,
    pub data_ref: Option<String>,
    pub code_ref: Option<String>,
    pub digest: Option<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// One problem found by a consistency check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `missing_artifact`, `dangling_alias`, `release_id_mismatch`, `release_entry_mismatch`,
    /// `dangling_channel`, `digest_list_mismatch`, `checksum_mismatch`.
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

/// The result of a consistency check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckReport {
    pub models: usize,
    pub versions: usize,
    pub aliases: usize,
    pub releases: usize,
    pub channels: usize,
    pub artifacts_checked: usize,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: i64, d: &str) -> ReleaseEntry {
        ReleaseEntry {
            version: v,
            digest: d.into(),
        }
    }

    #[test]
    fn release_id_is_order_independent_and_digest_sensitive() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), e(2, "sha256:bb"));
        a.insert("a".to_string(), e(1, "sha256:aa"));
        assert_eq!(
            release_manifest(&a),
            r#"{"a":{"digest":"sha256:aa","version":1},"b":{"digest":"sha256:bb","version":2}}"#
        );
        // Pinned: this id must never change across herd versions.
        assert_eq!(
            release_id(&a),
            hex::encode(Sha256::digest(
                br#"{"a":{"digest":"sha256:aa","version":1},"b":{"digest":"sha256:bb","version":2}}"#
            ))
        );
        let mut b = a.clone();
        b.insert("a".to_string(), e(1, "sha256:ab"));
        assert_ne!(release_id(&a), release_id(&b));
        assert_eq!(short_id(&release_id(&a)).len(), 12);
    }

    #[test]
    fn diff() {
        let mut a = BTreeMap::new();
        a.insert("x".to_string(), e(1, "d1"));
        a.insert("y".to_string(), e(1, "d2"));
        a.insert("z".to_string(), e(1, "d3"));
        let mut b = a.clone();
        b.remove("x");
        b.insert("y".to_string(), e(2, "d4"));
        b.insert("w".to_string(), e(1, "d5"));
        let d = diff_entries(&a, &b);
        assert_eq!(d.added.keys().collect::<Vec<_>>(), ["w"]);
        assert_eq!(d.removed.keys().collect::<Vec<_>>(), ["x"]);
        assert_eq!(d.changed["y"].1.version, 2);
        assert_eq!(d.unchanged, 1);
    }
}
