//! Validation of names and lineage references.
//!
//! A lineage reference must name an immutable thing: a commit or a content hash. Branch names,
//! tags and words like `latest` move, so a version recorded against them could not be traced later.

use crate::error::{RegistryError, Result};

/// What a lineage reference is about (only used in error messages).
#[derive(Debug, Clone, Copy)]
pub enum RefKind {
    Data,
    Code,
}

impl RefKind {
    fn as_str(self) -> &'static str {
        match self {
            RefKind::Data => "data",
            RefKind::Code => "code",
        }
    }
}

const ACCEPTED: &str =
    "git:<40 or 64 hex sha>, dvc:<32 hex md5>, lakefs://<repo>/<64 hex commit>, \
dolt:<32 char commit hash>, sha256:<64 hex>, md5:<32 hex>, or a bare 40/64 hex commit sha";

fn is_hex(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Dolt commit hashes: 32 characters of base32 using `0-9a-v`.
fn is_dolt_hash(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

/// Check that `reference` names an immutable commit or content hash; returns it trimmed.
pub fn validate_lineage_ref(kind: RefKind, reference: &str) -> Result<String> {
    let r = reference.trim();
    let bad = |why: &str| {
        RegistryError::InvalidInput(format!(
            "{} reference '{}' {}; references must be immutable so the version stays traceable. \
             Use one of: {}",
            kind.as_str(),
            reference,
            why,
            ACCEPTED
        ))
    };
    if r.is_empty() {
        return Err(bad("is empty"));
    }
    let lower = r.to_ascii_lowercase();
    let mutable_words = [
        "latest", "head", "main", "master", "develop", "dev", "trunk", "stable", "current", "tip",
    ];
    let last = lower.rsplit(['/', '@', ':']).next().unwrap_or(&lower);
    if mutable_words.contains(&last) {
        return Err(bad("is a branch name or moving label"));
    }
    let ok = if let Some(rest) = r.strip_prefix("git:") {
        is_hex(rest, &[40, 64])
    } else if let Some(rest) = r.strip_prefix("dvc:") {
        is_hex(rest.strip_suffix(".dir").unwrap_or(rest), &[32])
    } else if let Some(rest) = r.strip_prefix("md5:") {
        is_hex(rest, &[32])
    } else if let Some(rest) = r.strip_prefix("sha256:") {
        is_hex(rest, &[64])
    } else if let Some(rest) = r.strip_prefix("dolt:") {
        // dolt:<hash> or dolt:<db>@<hash>
        let hash = rest.rsplit('@').next().unwrap_or(rest);
        is_dolt_hash(hash)
    } else if let Some(rest) = r.strip_prefix("lakefs://") {
        // lakefs://<repo>/<commit>
        match rest.split_once('/') {
            Some((repo, commit)) => !repo.is_empty() && is_hex(commit, &[64]),
            None => false,
        }
    } else {
        is_hex(r, &[40, 64])
    };
    if ok {
        Ok(r.to_string())
    } else {
        Err(bad(
            "is not a commit id or content hash (it may be a branch, tag or typo)",
        ))
    }
}

/// What a name is for (only used in error messages).
#[derive(Debug, Clone, Copy)]
pub enum NameKind {
    Model,
    Alias,
    Channel,
    Tenant,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            NameKind::Model => "model",
            NameKind::Alias => "alias",
            NameKind::Channel => "channel",
            NameKind::Tenant => "tenant",
        }
    }
}

/// Names: 1-128 chars of `A-Z a-z 0-9 . _ -`, starting with a letter or digit. Alias and channel
/// names must not be all digits (that would read like a version number).
pub fn validate_name(kind: NameKind, name: &str) -> Result<()> {
    let ok_chars = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok_chars {
        return Err(RegistryError::InvalidInput(format!(
            "invalid {} name '{}': use 1-128 characters of letters, digits, '.', '_' or '-', \
             starting with a letter or digit",
            kind.as_str(),
            name
        )));
    }
    if matches!(kind, NameKind::Alias | NameKind::Channel)
        && name.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(RegistryError::InvalidInput(format!(
            "invalid {} name '{}': it must not be a number (numbers are versions)",
            kind.as_str(),
            name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_immutable_refs() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        let sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for r in [
            format!("git:{sha1}"),
            format!("git:{sha256}"),
            sha1.to_string(),
            "dvc:0123456789abcdef0123456789abcdef".to_string(),
            "dvc:0123456789abcdef0123456789abcdef.dir".to_string(),
            format!("lakefs://sales/{sha256}"),
            "dolt:0123456789abcdefghijklmnopqrstuv".to_string(),
            "dolt:mydb@0123456789abcdefghijklmnopqrstuv".to_string(),
            format!("sha256:{sha256}"),
        ] {
            assert_eq!(validate_lineage_ref(RefKind::Data, &r).unwrap(), r);
        }
    }

    #[test]
    fn rejects_mutable_refs_with_help() {
        for r in [
            "latest",
            "main",
            "git:main",
            "lakefs://sales/main",
            "dolt:mydb@master",
            "feature/x",
            "v1.2",
            "",
            "git:abc123",
            "dolt:0123456789abcdefghijklmnopqrstuw",
        ] {
            let e = validate_lineage_ref(RefKind::Data, r).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("immutable"), "{msg}");
            assert!(msg.contains("git:<40"), "{msg}");
        }
    }

    #[test]
    fn names() {
        validate_name(NameKind::Model, "acme-7.fraud_v2").unwrap();
        assert!(validate_name(NameKind::Model, "").is_err());
        assert!(validate_name(NameKind::Model, "-x").is_err());
        assert!(validate_name(NameKind::Model, "a/b").is_err());
        assert!(validate_name(NameKind::Model, &"a".repeat(129)).is_err());
        validate_name(NameKind::Model, "123").unwrap();
        assert!(validate_name(NameKind::Alias, "123").is_err());
        validate_name(NameKind::Channel, "production").unwrap();
    }
}
