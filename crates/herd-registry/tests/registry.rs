//! Registry integration tests against real databases and object stores.
//!
//! Every scenario runs on a fresh SQLite file and on a fresh PostgreSQL schema
//! (`HERD_TEST_POSTGRES_URL`), with artifacts in a local directory; the S3 tests use a real
//! S3-compatible endpoint (`HERD_TEST_S3_ENDPOINT`, e.g. moto). Start the services with
//! `bash scripts/test-services.sh && source .herd/test-env`. Without them a test prints
//! `SKIPPED` (and fails when `CI` is set).

use std::collections::BTreeMap;

use bytes::Bytes;
use herd_onnx::LinearClassifier;
use herd_registry::*;
use sha2::{Digest, Sha256};
use sqlx::Connection;

// ----- fixtures -------------------------------------------------------------------------------

struct Fx {
    reg: Registry,
    db_url: String,
    backend: &'static str,
    dir: tempfile::TempDir,
}

fn skip_or_fail(var: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{var} is not set but CI is: {why}; run scripts/test-services.sh and source .herd/test-env");
    }
    eprintln!(
        "SKIPPED: {var} is not set ({why}); run scripts/test-services.sh && source .herd/test-env"
    );
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

async fn sqlite_fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let artifacts = dir.path().join("artifacts");
    let reg = Registry::open(&db_url, artifacts.to_str().unwrap())
        .await
        .unwrap();
    Fx {
        reg,
        db_url,
        backend: "sqlite",
        dir,
    }
}

/// A fresh schema in the test Postgres, selected through the connection's search_path.
async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("HERD_TEST_POSTGRES_URL") else {
        skip_or_fail(
            "HERD_TEST_POSTGRES_URL",
            "the PostgreSQL half of this test needs it",
        );
        return None;
    };
    let schema = unique("herd_t");
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to HERD_TEST_POSTGRES_URL={base}: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options[search_path]={schema}"))
}

async fn postgres_fx() -> Option<Fx> {
    let db_url = postgres_url().await?;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let reg = Registry::open(&db_url, artifacts.to_str().unwrap())
        .await
        .unwrap();
    Some(Fx {
        reg,
        db_url,
        backend: "postgres",
        dir,
    })
}

/// Runs one scenario on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite_fx().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(fx) = super::postgres_fx().await {
                    super::$name(fx).await;
                }
            }
        }
    };
}

impl Fx {
    /// Runs raw SQL on the registry database (to plant corruption the API refuses to create).
    async fn exec(&self, sql: &str) {
        if self.backend == "sqlite" {
            let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        } else {
            let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
    }

    /// Row counts of every table, and artifacts in the store.
    async fn counts(&self) -> [usize; 9] {
        let s = self.reg.snapshot().await.unwrap();
        let artifacts = self.reg.artifacts().list().await.unwrap().len();
        [
            s.models.len(),
            s.versions.len(),
            s.aliases.len(),
            s.alias_history.len(),
            s.releases.len(),
            s.release_entries.len(),
            s.channels.len(),
            s.channel_history.len(),
            artifacts,
        ]
    }
}

fn onnx(seed: u64) -> Bytes {
    Bytes::from(LinearClassifier::random(4, 3, seed).to_onnx("m"))
}

const DATA: &str = "dvc:0123456789abcdef0123456789abcdef";
const CODE: &str = "git:0123456789abcdef0123456789abcdef01234567";

fn push_req(model: &str, seed: u64) -> PushRequest {
    PushRequest {
        model: model.into(),
        bytes: onnx(seed),
        metrics: BTreeMap::from([("auc".to_string(), 0.9)]),
        data_ref: Some(DATA.into()),
        code_ref: Some(CODE.into()),
        created_by: "test".into(),
        create: Some(NewModel {
            name: model.into(),
            tenant: Some("acme".into()),
            description: "fraud".into(),
            tags: vec!["fraud".into()],
        }),
        ..Default::default()
    }
}

async fn push(reg: &Registry, model: &str, seed: u64) -> ModelVersion {
    reg.push(push_req(model, seed)).await.unwrap().version
}

fn spec(entries: &[(&str, &str)]) -> ReleaseSpec {
    ReleaseSpec {
        entries: entries
            .iter()
            .map(|(m, v)| (m.to_string(), v.to_string()))
            .collect(),
        note: None,
        created_by: "test".into(),
    }
}

// ----- scenarios ------------------------------------------------------------------------------

async fn push_versions_lineage_and_listing(fx: Fx) {
    let reg = &fx.reg;
    for seed in 1..=3 {
        let v = push(reg, "acme-fraud", seed).await;
        assert_eq!(v.version, seed as i64);
        assert_eq!(v.digest, digest_of(&onnx(seed)));
        assert_eq!(v.data_ref.as_deref(), Some(DATA));
        assert_eq!(v.code_ref.as_deref(), Some(CODE));
        assert_eq!(v.metrics["auc"], 0.9);
        assert_eq!(v.framework, "onnx");
        assert!(
            !v.signature["inputs"].as_array().unwrap().is_empty(),
            "{}",
            v.signature
        );
    }
    // Same bytes and lineage as the latest version: nothing new.
    let again = reg.push(push_req("acme-fraud", 3)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.version.version, 3);
    // Same bytes as an older version: a new version (a roll-forward to old weights).
    assert_eq!(push(reg, "acme-fraud", 1).await.version, 4);

    let mut other = push_req("globex-churn", 10);
    other.create.as_mut().unwrap().tenant = Some("globex".into());
    other.create.as_mut().unwrap().tags = vec!["churn".into()];
    other.data_ref = Some(
        "lakefs://churn/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
    );
    reg.push(other).await.unwrap();

    let m = reg.model("acme-fraud").await.unwrap();
    assert_eq!((m.latest_version, m.version_count), (Some(4), 4));
    assert_eq!(m.tenant.as_deref(), Some("acme"));

    let all = reg.list_models(&ModelFilter::default()).await.unwrap();
    assert_eq!(all.items.len(), 2);
    let by_tenant = reg
        .list_models(&ModelFilter {
            tenant: Some("globex".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_tenant.items[0].name, "globex-churn");
    assert_eq!(by_tenant.items.len(), 1);
    let by_tag = reg
        .list_models(&ModelFilter {
            tag: Some("fraud".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_tag.items.len(), 1);
    let by_name = reg
        .list_models(&ModelFilter {
            name_contains: Some("churn".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_name.items[0].name, "globex-churn");
    // Pagination.
    let p1 = reg
        .list_models(&ModelFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p1.items[0].name, "acme-fraud");
    assert_eq!(p1.next_offset, Some(1));
    let p2 = reg
        .list_models(&ModelFilter {
            limit: Some(1),
            offset: p1.next_offset,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p2.items[0].name, "globex-churn");
    assert_eq!(p2.next_offset, None);

    // Versions: newest first, filters by lineage, pagination.
    let vs = reg
        .list_versions(&VersionFilter {
            model: Some("acme-fraud".into()),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        vs.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    assert_eq!(vs.next_offset, Some(3));
    let by_data = reg
        .list_versions(&VersionFilter {
            data_ref: Some(DATA.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_data.items.len(), 4);
    assert!(by_data.items.iter().all(|v| v.model == "acme-fraud"));

    assert_eq!(
        reg.resolve("acme-fraud", "latest").await.unwrap().version,
        4
    );
    assert_eq!(reg.resolve("acme-fraud", "2").await.unwrap().version, 2);
}
on_both!(push_versions_lineage_and_listing);

async fn bad_input_writes_nothing(fx: Fx) {
    let reg = &fx.reg;
    push(reg, "known", 1).await;
    let before = fx.counts().await;

    // A file that is not ONNX.
    let mut r = push_req("known", 1);
    r.bytes = Bytes::from_static(b"name,score\nalice,0.3\n");
    let e = reg.push(r).await.unwrap_err();
    assert!(matches!(e, RegistryError::InvalidInput(_)), "{e}");
    assert!(e.to_string().contains("not an ONNX model"), "{e}");
    assert_eq!(fx.counts().await, before, "non-ONNX push wrote something");

    // ... also when it would have created the model.
    let mut r = push_req("brand-new", 1);
    r.bytes = Bytes::from_static(b"\x00\x01garbage");
    assert!(reg.push(r).await.is_err());
    assert_eq!(fx.counts().await, before, "failed push created a model");

    // An unknown model without --create.
    let mut r = push_req("nobody", 2);
    r.create = None;
    let e = reg.push(r).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("herd model create nobody"), "{e}");
    assert_eq!(
        fx.counts().await,
        before,
        "unknown-model push wrote something"
    );

    // Mutable lineage references.
    for (data, code) in [
        (Some("latest"), None),
        (Some("lakefs://repo/main"), None),
        (None, Some("main")),
        (None, Some("git:HEAD")),
    ] {
        let mut r = push_req("known", 3);
        r.data_ref = data.map(Into::into);
        r.code_ref = code.map(Into::into);
        let e = reg.push(r).await.unwrap_err();
        assert!(matches!(e, RegistryError::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains("immutable"), "{e}");
        assert_eq!(
            fx.counts().await,
            before,
            "mutable ref push wrote something"
        );
    }

    // A release naming a version that does not exist (and one naming an unknown model).
    let e = reg
        .create_release(&spec(&[("known", "1"), ("known-2", "1")]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("known-2"), "{e}");
    let e = reg
        .create_release(&spec(&[("known", "7")]))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("no version 7"), "{e}");
    assert!(e.to_string().contains("nothing was written"), "{e}");
    assert_eq!(fx.counts().await, before, "failed release wrote something");

    // An empty release, a bad release reference, unknown channel.
    assert!(reg.create_release(&spec(&[])).await.is_err());
    assert!(reg.release("zz").await.is_err());
    assert!(reg
        .promote("production", "abcdef123456", "t")
        .await
        .is_err());
    assert!(reg.rollback("production", "t").await.is_err());
    // Bad names.
    assert!(reg.set_alias("known", "1", 1, "t").await.is_err());
    assert!(reg.set_alias("known", "latest", 1, "t").await.is_err());
    assert!(reg.set_alias("known", "prod", 9, "t").await.is_err());
    assert!(reg
        .create_model(&NewModel {
            name: "../etc".into(),
            ..Default::default()
        })
        .await
        .is_err());
    assert_eq!(
        fx.counts().await,
        before,
        "a refused operation wrote something"
    );
}
on_both!(bad_input_writes_nothing);

async fn aliases_keep_history(fx: Fx) {
    let reg = &fx.reg;
    for seed in 1..=3 {
        push(reg, "m", seed).await;
    }
    let e1 = reg.set_alias("m", "production", 1, "alice").await.unwrap();
    assert_eq!((e1.from_version, e1.to_version), (None, 1));
    let e2 = reg.set_alias("m", "production", 3, "bob").await.unwrap();
    assert_eq!((e2.from_version, e2.to_version), (Some(1), 3));
    reg.set_alias("m", "last-good", 1, "bob").await.unwrap();
    assert_eq!(reg.resolve("m", "production").await.unwrap().version, 3);

    let h = reg.alias_history("m", Some("production")).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[1].from_version, h[1].to_version, h[1].by.as_str()),
        (Some(1), 3, "bob")
    );
    assert_eq!(h[0].by, "alice");
    assert!(h[0].at <= h[1].at);
    assert_eq!(reg.alias_history("m", None).await.unwrap().len(), 3);
    assert_eq!(reg.aliases(Some("m"), None).await.unwrap().len(), 2);
    assert!(reg.alias_history("ghost", None).await.is_err());
}
on_both!(aliases_keep_history);

/// The release id, computed here independently of the crate: SHA-256 over hand-written
/// canonical JSON (keys sorted, no whitespace).
fn expected_id(entries: &[(&str, i64, &str)]) -> String {
    let mut sorted = entries.to_vec();
    sorted.sort();
    let body: Vec<String> = sorted
        .iter()
        .map(|(m, v, d)| format!("\"{m}\":{{\"digest\":\"{d}\",\"version\":{v}}}"))
        .collect();
    hex::encode(Sha256::digest(format!("{{{}}}", body.join(",")).as_bytes()))
}

async fn release_ids_are_content_hashes(fx: Fx) {
    let reg = &fx.reg;
    push(reg, "b-model", 21).await;
    push(reg, "a-model", 11).await;
    push(reg, "a-model", 12).await;
    let (r, created) = reg
        .create_release(&spec(&[("a-model", "2"), ("b-model", "latest")]))
        .await
        .unwrap();
    assert!(created);
    let d_a2 = digest_of(&onnx(12));
    let d_b1 = digest_of(&onnx(21));
    let want = expected_id(&[("a-model", 2, &d_a2), ("b-model", 1, &d_b1)]);
    assert_eq!(
        r.id, want,
        "release id is not the hash of the canonical manifest"
    );
    assert_eq!(r.short_id, &want[..12]);
    assert_eq!(r.computed_id(), r.id);

    // Same set again -> same release, nothing new.
    let (again, created) = reg
        .create_release(&spec(&[("b-model", "1"), ("a-model", "2")]))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.id, r.id);
    // Different version (so different digest) -> different id.
    let (other, _) = reg
        .create_release(&spec(&[("a-model", "1"), ("b-model", "1")]))
        .await
        .unwrap();
    assert_ne!(other.id, r.id);
    assert_eq!(
        other.id,
        expected_id(&[("a-model", 1, &digest_of(&onnx(11))), ("b-model", 1, &d_b1)])
    );
    // Short id and prefix lookups.
    assert_eq!(reg.release(&r.short_id).await.unwrap().id, r.id);
    assert_eq!(reg.release(&r.id[..8]).await.unwrap().id, r.id);
    let (n, problems) = reg.verify_releases(None).await.unwrap();
    assert_eq!((n, problems.len()), (2, 0));
}
on_both!(release_ids_are_content_hashes);

/// The same set gives the same id on SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_release_id_on_sqlite_and_postgres() {
    let Some(pg) = postgres_fx().await else {
        return;
    };
    let sq = sqlite_fx().await;
    let mut ids = Vec::new();
    for fx in [&sq, &pg] {
        push(&fx.reg, "x", 1).await;
        push(&fx.reg, "y", 2).await;
        push(&fx.reg, "y", 3).await;
        let (r, _) = fx
            .reg
            .create_release(&spec(&[("x", "1"), ("y", "2")]))
            .await
            .unwrap();
        ids.push(r.id);
    }
    assert_eq!(ids[0], ids[1]);
}

async fn releases_channels_and_rollback(fx: Fx) {
    let reg = &fx.reg;
    for (m, seeds) in [("alpha", [1, 2, 3]), ("beta", [11, 12, 13])] {
        for s in seeds {
            push(reg, m, s).await;
        }
    }
    reg.set_alias("alpha", "production", 1, "t").await.unwrap();
    reg.set_alias("beta", "production", 1, "t").await.unwrap();
    // From alias.
    let entries = reg.spec_from_alias("production").await.unwrap();
    let (r1, _) = reg
        .create_release(&ReleaseSpec {
            entries,
            note: Some("first".into()),
            created_by: "t".into(),
        })
        .await
        .unwrap();
    assert_eq!(r1.entries["alpha"].version, 1);
    assert_eq!(r1.note.as_deref(), Some("first"));
    assert_eq!(reg.channel_revision("production").await.unwrap(), None);
    assert!(reg.channel_release("production").await.unwrap().is_none());

    let ev = reg.promote("production", &r1.short_id, "t").await.unwrap();
    assert_eq!(
        (ev.from_release, ev.to_release.clone()),
        (None, r1.id.clone())
    );
    assert_eq!(reg.channel_revision("production").await.unwrap(), Some(1));
    // Promoting the same release again changes nothing.
    assert_eq!(
        reg.promote("production", &r1.id, "t").await.unwrap().action,
        "unchanged"
    );
    assert_eq!(reg.channel_revision("production").await.unwrap(), Some(1));

    // "current production + changes".
    let mut entries: BTreeMap<String, String> = reg
        .channel_release("production")
        .await
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|(m, e)| (m.clone(), e.version.to_string()))
        .collect();
    entries.insert("beta".into(), "3".into());
    let (r2, _) = reg
        .create_release(&ReleaseSpec {
            entries,
            note: None,
            created_by: "t".into(),
        })
        .await
        .unwrap();
    let d = reg.diff_releases(&r1.short_id, &r2.short_id).await.unwrap();
    assert!(d.added.is_empty() && d.removed.is_empty());
    assert_eq!(d.changed["beta"].0.version, 1);
    assert_eq!(d.changed["beta"].1.version, 3);
    assert_eq!(d.unchanged, 1);

    reg.promote("production", &r2.short_id, "t").await.unwrap();
    assert_eq!(reg.channel_revision("production").await.unwrap(), Some(2));
    assert_eq!(
        reg.release("@production").await.unwrap().id,
        r2.id,
        "@channel resolves to its release"
    );
    let listed = reg.list_releases(None, None).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let r2_summary = listed.items.iter().find(|s| s.id == r2.id).unwrap();
    assert_eq!(r2_summary.channels, ["production"]);

    // Roll back one model: a new release, with only beta changed back, promoted.
    let (r3, ev) = reg
        .rollback_model("production", "beta", None, "t")
        .await
        .unwrap();
    assert_eq!(ev.action, "rollback-model");
    assert_eq!(r3.entries["beta"].version, 1);
    assert_eq!(r3.entries["alpha"].version, 1);
    // Content-addressed: rolling beta back recreates exactly r1.
    assert_eq!(r3.id, r1.id);
    let (r4, _) = reg
        .rollback_model("production", "alpha", Some("2"), "t")
        .await
        .unwrap();
    assert_eq!(r4.entries["alpha"].version, 2);
    assert_eq!(
        reg.channel_release("production").await.unwrap().unwrap().id,
        r4.id
    );

    // Channel rollback walks back: r4 -> r1(r3) -> r2 -> r1.
    let ev = reg.rollback("production", "t").await.unwrap();
    assert_eq!(ev.to_release, r1.id);
    let ev = reg.rollback("production", "t").await.unwrap();
    assert_eq!(ev.to_release, r2.id);
    let ev = reg.rollback("production", "t").await.unwrap();
    assert_eq!(ev.to_release, r1.id);
    assert!(
        reg.rollback("production", "t").await.is_err(),
        "nothing before the first promote"
    );
    assert_eq!(reg.channel_revision("production").await.unwrap(), Some(7));
    let history = reg.channel_history("production").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.action.as_str())
            .collect::<Vec<_>>(),
        [
            "promote",
            "promote",
            "rollback-model",
            "rollback-model",
            "rollback",
            "rollback",
            "rollback"
        ]
    );

    // Serving API: fetch every artifact of the channel's release into a cache.
    let cache = fx.dir.path().join("cache");
    let release = reg.channel_release("production").await.unwrap().unwrap();
    for e in release.entries.values() {
        let path = reg.fetch_artifact(&e.digest, &cache).await.unwrap();
        assert_eq!(digest_of(&std::fs::read(&path).unwrap()), e.digest);
        assert_eq!(reg.fetch_artifact(&e.digest, &cache).await.unwrap(), path);
    }

    // Tampering with stored entries is caught by verify.
    let (_, problems) = reg.verify_releases(None).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    fx.exec(&format!(
        "UPDATE release_entries SET version = 3 WHERE release_id = '{}' AND model = 'alpha'",
        r1.id
    ))
    .await;
    let (_, problems) = reg.verify_releases(Some(&r1.short_id)).await.unwrap();
    assert!(
        problems.iter().any(|p| p.kind == "release_id_mismatch"),
        "{problems:?}"
    );
}
on_both!(releases_channels_and_rollback);

async fn backup_verify_finds_planted_damage(fx: Fx) {
    let reg = &fx.reg;
    push(reg, "m1", 1).await;
    push(reg, "m1", 2).await;
    push(reg, "m2", 3).await;
    reg.set_alias("m1", "production", 2, "t").await.unwrap();
    let (r, _) = reg
        .create_release(&spec(&[("m1", "production"), ("m2", "1")]))
        .await
        .unwrap();
    reg.promote("production", &r.id, "t").await.unwrap();

    // A clean backup verifies.
    let clean = fx.dir.path().join("backup-clean");
    let m = reg.backup_create(&clean).await.unwrap();
    assert_eq!((m.models, m.versions, m.releases, m.digests), (2, 3, 1, 3));
    let report = backup_verify(&clean, reg.artifacts()).await.unwrap();
    assert!(report.ok(), "{:?}", report.check.problems);
    assert_eq!(report.check.artifacts_checked, 3);
    // A backup is not written over.
    assert!(reg.backup_create(&clean).await.is_err());

    // Restore into a fresh SQLite registry gives back the same rows.
    let target = sqlite_fx().await;
    target.reg.backup_restore(&clean, false).await.unwrap();
    let (a, b) = (
        reg.snapshot().await.unwrap(),
        target.reg.snapshot().await.unwrap(),
    );
    assert_eq!(a.models, b.models);
    assert_eq!(a.versions, b.versions);
    assert_eq!(a.alias_history, b.alias_history);
    assert_eq!(a.release_entries, b.release_entries);
    assert_eq!(a.channel_history, b.channel_history);
    // ... and refuses a non-empty target unless asked to replace.
    let e = target.reg.backup_restore(&clean, false).await.unwrap_err();
    assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
    target.reg.backup_restore(&clean, true).await.unwrap();
    assert_eq!(target.counts().await[..8], fx.counts().await[..8]);

    // Plant: delete m2's artifact, and an alias pointing at a version that does not exist.
    let m2 = reg.version("m2", 1).await.unwrap();
    reg.artifacts().delete(&m2.digest).await.unwrap();
    fx.exec(
        "INSERT INTO aliases (model, name, version, updated_at, updated_by) \
         VALUES ('m1', 'canary', 99, '2026-01-01T00:00:00.000Z', 'planted')",
    )
    .await;
    let damaged = fx.dir.path().join("backup-damaged");
    reg.backup_create(&damaged).await.unwrap();
    let report = backup_verify(&damaged, reg.artifacts()).await.unwrap();
    assert!(!report.ok());
    let kinds: Vec<(&str, &str)> = report
        .check
        .problems
        .iter()
        .map(|p| (p.kind.as_str(), p.subject.as_str()))
        .collect();
    assert!(
        kinds.contains(&("missing_artifact", m2.digest.as_str())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("dangling_alias", "m1:canary")),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    // The clean backup now also reports the missing artifact (the store is checked live).
    let report = backup_verify(&clean, reg.artifacts()).await.unwrap();
    assert_eq!(report.check.problems.len(), 1);

    // A tampered backup file is detected and refused by restore.
    let meta = damaged.join("metadata.json");
    let text = std::fs::read_to_string(&meta)
        .unwrap()
        .replace("\"planted\"", "\"someone\"");
    std::fs::write(&meta, text).unwrap();
    let report = backup_verify(&damaged, reg.artifacts()).await.unwrap();
    assert!(report
        .check
        .problems
        .iter()
        .any(|p| p.kind == "checksum_mismatch"));
    let fresh = sqlite_fx().await;
    assert!(matches!(
        fresh.reg.backup_restore(&damaged, false).await,
        Err(RegistryError::Integrity(_))
    ));
    assert_eq!(fresh.counts().await, [0; 9]);
    // Not a backup directory at all.
    assert!(backup_verify(fx.dir.path(), reg.artifacts()).await.is_err());
}
on_both!(backup_verify_finds_planted_damage);

async fn gc_keeps_what_is_referenced(fx: Fx) {
    let reg = &fx.reg;
    for seed in 1..=5 {
        push(reg, "g", seed).await; // versions 1..5
    }
    reg.set_alias("g", "production", 1, "t").await.unwrap();
    reg.create_release(&spec(&[("g", "2")])).await.unwrap();
    // An orphan artifact (uploaded, never recorded).
    let (orphan, _) = reg
        .artifacts()
        .put(Bytes::from_static(b"orphan"), &|_| {})
        .await
        .unwrap();

    // Everything is younger than an hour: the default grace period keeps it all.
    let young = reg
        .gc(&GcOptions {
            keep_last: 1,
            dry_run: false,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((young.deleted, young.too_young), (0, 3));

    let opts = GcOptions {
        keep_last: 1,
        min_age: std::time::Duration::ZERO,
        dry_run: true,
    };
    let dry = reg.gc(&opts).await.unwrap();
    let mut want = vec![orphan.clone(), digest_of(&onnx(3)), digest_of(&onnx(4))];
    want.sort();
    let mut got: Vec<String> = dry.candidates.iter().map(|c| c.digest.clone()).collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(dry.deleted, 0);
    assert_eq!(
        reg.artifacts().list().await.unwrap().len(),
        6,
        "dry run deleted something"
    );

    let real = reg
        .gc(&GcOptions {
            dry_run: false,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert_eq!(real.deleted, 3);
    let left: Vec<String> = reg
        .artifacts()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.digest)
        .collect();
    for seed in [1, 2, 5] {
        assert!(
            left.contains(&digest_of(&onnx(seed))),
            "kept version {seed}"
        );
    }
    // Collected versions keep their metadata, marked, and cannot be released or aliased.
    let v3 = reg.version("g", 3).await.unwrap();
    assert!(v3.artifact_deleted_at.is_some());
    assert!(reg
        .version("g", 5)
        .await
        .unwrap()
        .artifact_deleted_at
        .is_none());
    assert!(reg.create_release(&spec(&[("g", "3")])).await.is_err());
    assert!(reg.set_alias("g", "canary", 4, "t").await.is_err());
    // The registry is still consistent.
    let check = reg.check(true).await.unwrap();
    assert!(check.ok(), "{:?}", check.problems);
    // A second run finds nothing.
    assert_eq!(reg.gc(&opts).await.unwrap().candidates.len(), 0);
}
on_both!(gc_keeps_what_is_referenced);

/// gc re-checks each candidate under its lock: what became referenced after the plan stays, and a
/// push of bytes gc already collected uploads them again.
async fn gc_rechecks_before_deleting(fx: Fx) {
    let reg = &fx.reg;
    for seed in 1..=3 {
        push(reg, "g", seed).await;
    }
    let opts = GcOptions {
        keep_last: 1,
        min_age: std::time::Duration::ZERO,
        dry_run: true,
    };
    let plan = reg.gc_plan(&opts).await.unwrap();
    assert_eq!(plan.candidates.len(), 2);
    // After planning: a release pins v1, and another model is pushed with v2's bytes.
    reg.create_release(&spec(&[("g", "1")])).await.unwrap();
    push(reg, "h", 2).await;
    let applied = reg.gc_apply(plan, 1).await.unwrap();
    assert_eq!((applied.deleted, applied.skipped), (0, 2));
    assert_eq!(reg.artifacts().list().await.unwrap().len(), 3);
    assert!(reg.check(true).await.unwrap().ok());

    // Now collect v2's bytes for real (h moves on, nothing pins them), then push them again.
    push(reg, "h", 4).await;
    let done = reg
        .gc(&GcOptions {
            dry_run: false,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert_eq!(done.deleted, 1);
    let d2 = digest_of(&onnx(2));
    assert!(!reg.artifacts().exists(&d2).await.unwrap());
    let again = reg.push(push_req("k", 2)).await.unwrap();
    assert!(
        reg.artifacts().exists(&d2).await.unwrap(),
        "bytes uploaded again"
    );
    let (r, _) = reg
        .create_release(&spec(&[("k", &again.version.version.to_string())]))
        .await
        .unwrap();
    assert_eq!(r.entries["k"].digest, d2);
    assert!(reg.check(true).await.unwrap().ok());
}
on_both!(gc_rechecks_before_deleting);

async fn concurrent_pushes_get_distinct_versions(fx: Fx) {
    let reg = fx.reg.clone();
    push(&reg, "c", 100).await;
    let mut tasks = Vec::new();
    for seed in 0..8u64 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = push_req("c", 200 + seed);
            r.create = None;
            reg.push(r).await.map(|o| o.version.version)
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=9).collect::<Vec<i64>>());
}
on_both!(concurrent_pushes_get_distinct_versions);

// ----- S3 -------------------------------------------------------------------------------------

async fn s3_store() -> Option<ArtifactStore> {
    let Ok(endpoint) = std::env::var("HERD_TEST_S3_ENDPOINT") else {
        skip_or_fail(
            "HERD_TEST_S3_ENDPOINT",
            "the S3 artifact tests need an S3-compatible endpoint",
        );
        return None;
    };
    let bucket = unique("herd-test").replace('_', "-");
    // Create the bucket (moto accepts an unsigned PUT).
    let resp = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("cannot reach HERD_TEST_S3_ENDPOINT={endpoint}: {e}"));
    assert!(
        resp.status().is_success(),
        "create bucket: {}",
        resp.status()
    );
    let overrides = S3Overrides {
        endpoint: Some(endpoint),
        access_key_id: Some(
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
        ),
        secret_access_key: Some(
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
        ),
        region: Some("us-east-1".into()),
    };
    Some(ArtifactStore::open_with(&format!("s3://{bucket}/herd/artifacts"), &overrides).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_artifacts_push_fetch_backup_gc() {
    let Some(store) = s3_store().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("r.db").display());
    let reg = Registry::open_with_store(&db_url, store).await.unwrap();
    let v1 = push(&reg, "s3-model", 1).await;
    push(&reg, "s3-model", 2).await;
    let v3 = push(&reg, "s3-model", 3).await;
    // Write-once: pushing the same bytes to another model uploads nothing.
    let again = reg.push(push_req("s3-other", 3)).await.unwrap();
    assert!(again.created && !again.uploaded);
    assert_eq!(reg.artifacts().list().await.unwrap().len(), 3);

    let (r, _) = reg
        .create_release(&spec(&[("s3-model", "3")]))
        .await
        .unwrap();
    reg.promote("production", &r.id, "t").await.unwrap();
    let cache = dir.path().join("cache");
    let p = reg.fetch_artifact(&v3.digest, &cache).await.unwrap();
    assert_eq!(std::fs::read(p).unwrap(), onnx(3).to_vec());

    let backup = dir.path().join("b");
    reg.backup_create(&backup).await.unwrap();
    assert!(backup_verify(&backup, reg.artifacts()).await.unwrap().ok());
    reg.artifacts().delete(&v3.digest).await.unwrap();
    let report = backup_verify(&backup, reg.artifacts()).await.unwrap();
    assert_eq!(report.check.problems.len(), 1);
    assert_eq!(report.check.problems[0].kind, "missing_artifact");

    let gc = reg
        .gc(&GcOptions {
            keep_last: 0,
            min_age: std::time::Duration::ZERO,
            dry_run: false,
        })
        .await
        .unwrap();
    // keep_last 0: only the release pins a digest (v3's, already deleted above), so the
    // artifacts of v1 and v2 go.
    assert_eq!(gc.deleted, 2);
    assert!(reg
        .version("s3-model", v1.version)
        .await
        .unwrap()
        .artifact_deleted_at
        .is_some());
}

/// A 1,000-model benchmark; run with
/// `cargo test -p herd-registry --release --test registry -- --ignored --nocapture bench_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_thousand_models() {
    for fx in [Some(sqlite_fx().await), postgres_fx().await]
        .into_iter()
        .flatten()
    {
        let reg = &fx.reg;
        let n = 1000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            push(reg, &format!("tenant-{i:04}"), i).await;
        }
        let push_s = t.elapsed().as_secs_f64();
        let entries: Vec<(String, String)> = (0..n)
            .map(|i| (format!("tenant-{i:04}"), "1".to_string()))
            .collect();
        let s = ReleaseSpec {
            entries: entries.into_iter().collect(),
            note: None,
            created_by: "bench".into(),
        };
        let t = std::time::Instant::now();
        let (r1, _) = reg.create_release(&s).await.unwrap();
        let create_s = t.elapsed().as_secs_f64();
        for i in 0..50 {
            push(reg, &format!("tenant-{i:04}"), 10_000 + i).await;
        }
        let mut s2 = s.clone();
        for i in 0..50 {
            s2.entries.insert(format!("tenant-{i:04}"), "2".into());
        }
        let (r2, _) = reg.create_release(&s2).await.unwrap();
        let t = std::time::Instant::now();
        let d = reg.diff_releases(&r1.id, &r2.id).await.unwrap();
        let diff_s = t.elapsed().as_secs_f64();
        assert_eq!(d.changed.len(), 50);
        let t = std::time::Instant::now();
        let rel = reg.release(&r2.id).await.unwrap();
        let show_s = t.elapsed().as_secs_f64();
        assert_eq!(rel.entries.len(), 1000);
        println!(
            "BENCH {}: push {n} models {push_s:.2}s ({:.1} ms/push); release create (1000 entries) {:.1} ms; diff {:.1} ms; load release {:.1} ms",
            fx.backend,
            push_s * 1000.0 / n as f64,
            create_s * 1000.0,
            diff_s * 1000.0,
            show_s * 1000.0
        );
    }
}

#[path = "registry/bundles.rs"]
mod bundles;
