//! Bundles (a version = the files of a model directory) and the registry's race fixes. Each race
//! test loops the racing operations and checks the invariant after every round.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use herd_registry::*;

#[allow(unused_imports)]
use super::{onnx, postgres_fx, push, push_req, spec, sqlite_fx, Fx};

fn bundle_req(model: &str, seed: u64, pooling: &str) -> PushRequest {
    PushRequest {
        files: BTreeMap::from([
            (
                "tokenizer.json".to_string(),
                Bytes::from_static(b"{\"tok\":1}"),
            ),
            (
                "config.toml".to_string(),
                Bytes::from(format!("[pipeline]\npooling = \"{pooling}\"\n")),
            ),
            ("extra/vocab.txt".to_string(), Bytes::from_static(b"a\nb\n")),
        ]),
        ..push_req(model, seed)
    }
}

async fn bundle_push_fetch_and_backup(fx: Fx) {
    let reg = &fx.reg;
    let out = reg.push(bundle_req("emb", 1, "mean")).await.unwrap();
    assert!(out.created);
    let v = out.version;
    assert_eq!(v.files.len(), 4, "{:?}", v.files);
    let (_, manifest_digest) = bundle::manifest_of(&v.files);
    assert_eq!(
        v.digest, manifest_digest,
        "the version digest is the manifest's"
    );
    let onnx1 = onnx(1);
    let m = v.files.iter().find(|f| f.path == "model.onnx").unwrap();
    assert_eq!(m.digest, digest_of(&onnx1));
    assert_eq!(v.size, v.files.iter().map(|f| f.size).sum::<u64>());
    // Same files again: the same version, nothing new.
    let again = reg.push(bundle_req("emb", 1, "mean")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.version.version, v.version);
    // One changed file: a new version with another digest.
    let v2 = reg.push(bundle_req("emb", 1, "cls")).await.unwrap().version;
    assert_eq!(v2.version, v.version + 1);
    assert_ne!(v2.digest, v.digest);
    assert_eq!(reg.version("emb", v.version).await.unwrap().files, v.files);

    // Fetch: a verified directory, made visible in one step.
    let cache = fx.dir.path().join("cache");
    let dir = reg.fetch_bundle("emb", &v.digest, &cache).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.onnx")).unwrap(),
        onnx1.to_vec()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        "[pipeline]\npooling = \"mean\"\n"
    );
    assert_eq!(
        std::fs::read(dir.join("extra/vocab.txt")).unwrap(),
        b"a\nb\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no scratch directory left behind");
    // A one-file push stays a one-file bundle: digest = the file's, fetched as a directory.
    let single = push(reg, "plain", 7).await;
    assert!(single.files.is_empty());
    assert_eq!(single.digest, digest_of(&onnx(7)));
    let d = reg
        .fetch_bundle("plain", &single.digest, &cache)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(d.join("model.onnx")).unwrap(),
        onnx(7).to_vec()
    );

    // A corrupt file in the store is refused and nothing becomes visible.
    let tok = v2.files.iter().find(|f| f.path == "config.toml").unwrap();
    let obj = fx
        .dir
        .path()
        .join("artifacts/sha256")
        .join(tok.digest.trim_start_matches("sha256:"));
    let good = std::fs::read(&obj).unwrap();
    std::fs::write(&obj, b"evil").unwrap();
    let e = reg
        .fetch_bundle("emb", &v2.digest, &cache)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Integrity(_)), "{e}");
    assert!(!cache
        .join("emb")
        .join(v2.digest.trim_start_matches("sha256:"))
        .exists());
    // The registry check finds the damage by content (the object exists).
    let report = reg.check(true).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.kind == "corrupt_artifact"),
        "{:?}",
        report.problems
    );
    std::fs::write(&obj, &good).unwrap();

    // gc keeps every file of a referenced bundle.
    reg.create_release(&spec(&[("emb", "1")])).await.unwrap();
    let gc = reg
        .gc(&GcOptions {
            keep_last: 1,
            min_age: std::time::Duration::ZERO,
            dry_run: false,
        })
        .await
        .unwrap();
    for f in &v.files {
        assert!(
            reg.artifacts().exists(&f.digest).await.unwrap(),
            "{f:?} kept ({gc:?})"
        );
    }

    // Backup with artifacts -> restore into an empty registry with an empty store.
    let bdir = fx.dir.path().join("backup");
    reg.backup_create_with(&bdir, true).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_store = ArtifactStore::open(other.path().join("a").to_str().unwrap()).unwrap();
    let report = backup_verify(&bdir, &other_store).await.unwrap();
    assert!(
        report
            .check
            .problems
            .iter()
            .any(|p| p.kind == "missing_artifact"),
        "the empty store lacks them: {:?}",
        report.check.problems
    );
    let restored = Registry::open_with_store(
        &format!("sqlite://{}", other.path().join("r.db").display()),
        other_store.clone(),
    )
    .await
    .unwrap();
    restored.backup_restore(&bdir, false).await.unwrap();
    let report = backup_verify(&bdir, &other_store).await.unwrap();
    assert!(report.ok(), "{:?}", report.check.problems);
    let d = restored
        .fetch_bundle("emb", &v.digest, &other.path().join("cache"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(d.join("model.onnx")).unwrap(), onnx1.to_vec());
    // A damaged copy inside the backup is found by its digest.
    let copy = bdir
        .join("artifacts/sha256")
        .join(m.digest.trim_start_matches("sha256:"));
    std::fs::write(&copy, b"evil").unwrap();
    let report = backup_verify(&bdir, &other_store).await.unwrap();
    assert!(
        report
            .check
            .problems
            .iter()
            .any(|p| p.kind == "corrupt_artifact"),
        "{:?}",
        report.check.problems
    );
}
on_both!(bundle_push_fetch_and_backup);

async fn bad_bundles_are_refused(fx: Fx) {
    for (path, why) in [
        ("../x", "escape"),
        (".hidden", "hidden"),
        ("model.onnx", "twice"),
    ] {
        let mut r = push_req("m", 1);
        r.files.insert(path.into(), Bytes::from_static(b"x"));
        let e = fx.reg.push(r).await.unwrap_err();
        assert!(matches!(e, RegistryError::InvalidInput(_)), "{why}: {e}");
    }
    assert_eq!(fx.reg.snapshot().await.unwrap().versions.len(), 0);
}
on_both!(bad_bundles_are_refused);

/// A model without a tenant is shared: only admins write it. A tenant's push that races an
/// admin creating the shared model must not land in it.
async fn shared_model_is_admin_only(fx: Fx) {
    let reg = Arc::new(fx.reg.clone());
    reg.create_model(&NewModel {
        name: "shared".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut r = push_req("shared", 1);
    r.as_tenant = Some("acme".into());
    let e = reg.push(r).await.unwrap_err();
    assert!(matches!(e, RegistryError::Forbidden(_)), "{e}");
    push(&reg, "shared", 2).await; // an admin may
    let e = reg
        .set_alias_as("shared", "prod", 1, "t", Some("acme"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Forbidden(_)), "{e}");
    for i in 0..20 {
        let name = format!("race{i}");
        let (a, b) = (reg.clone(), reg.clone());
        let n1 = name.clone();
        let admin = tokio::spawn(async move {
            let _ = a
                .create_model(&NewModel {
                    name: n1,
                    ..Default::default()
                })
                .await;
        });
        let n2 = name.clone();
        let tenant = tokio::spawn(async move {
            let mut r = push_req(&n2, 3);
            if let Some(c) = r.create.as_mut() {
                c.tenant = Some("acme".into());
            }
            r.as_tenant = Some("acme".into());
            let _ = b.push(r).await;
        });
        admin.await.unwrap();
        tenant.await.unwrap();
        let m = reg.model(&name).await.unwrap();
        if m.tenant.is_none() {
            assert_eq!(
                m.version_count, 0,
                "round {i}: a tenant pushed into the shared model {name}"
            );
        }
    }
}
on_both!(shared_model_is_admin_only);

/// gc never deletes an object a push in progress is about to name: an orphan re-pushed while gc
/// runs is kept or put back.
async fn gc_never_strands_a_push(fx: Fx) {
    let reg = Arc::new(fx.reg.clone());
    push(&reg, "m", 1000).await;
    let opts = GcOptions {
        keep_last: 1000,
        min_age: std::time::Duration::ZERO,
        dry_run: false,
    };
    for i in 0..25u64 {
        // An orphan: bytes in the store that no version names.
        reg.artifacts().put(onnx(i), &|_| {}).await.unwrap();
        let (a, b) = (reg.clone(), reg.clone());
        let o = opts.clone();
        let gc = tokio::spawn(async move { a.gc(&o).await.unwrap() });
        let push = tokio::spawn(async move { super::push(&b, "m", i).await });
        gc.await.unwrap();
        let v = push.await.unwrap();
        assert!(
            reg.artifacts().exists(&v.digest).await.unwrap(),
            "round {i}: version {} names a deleted artifact",
            v.version
        );
    }
}
on_both!(gc_never_strands_a_push);

/// A rollback racing promotes: the channel always points at the top of its history's stack.
async fn rollback_and_promote_race(fx: Fx) {
    let reg = Arc::new(fx.reg.clone());
    let mut ids = Vec::new();
    for s in 1..=12u64 {
        push(&reg, "m", s).await;
        let (r, _) = reg
            .create_release(&spec(&[("m", &s.to_string())]))
            .await
            .unwrap();
        ids.push(r.id);
    }
    reg.promote("prod", &ids[0], "t").await.unwrap();
    reg.promote("prod", &ids[1], "t").await.unwrap();
    for round in 0..10usize {
        let (a, b) = (reg.clone(), reg.clone());
        let id = ids[2 + round].clone();
        let rb = tokio::spawn(async move { a.rollback("prod", "t").await });
        let pr = tokio::spawn(async move { b.promote("prod", &id, "t").await.unwrap() });
        let _ = rb.await.unwrap();
        pr.await.unwrap();
        let mut stack: Vec<String> = Vec::new();
        for e in reg.channel_history("prod").await.unwrap() {
            if e.action == "rollback" {
                stack.pop();
            } else {
                stack.push(e.to_release);
            }
        }
        let ch = reg.channel("prod").await.unwrap().unwrap();
        assert_eq!(
            stack.last(),
            Some(&ch.release_id),
            "round {round}: the channel is not the top of its own history"
        );
    }
}
on_both!(rollback_and_promote_race);

/// Restoring an older backup never moves a channel's revision back (a server polling the
/// revision would miss the next promote).
async fn restore_keeps_revisions_moving(fx: Fx) {
    let reg = &fx.reg;
    let mut ids = Vec::new();
    for s in 1..=3u64 {
        push(reg, "m", s).await;
        ids.push(
            reg.create_release(&spec(&[("m", &s.to_string())]))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    reg.promote("prod", &ids[0], "t").await.unwrap();
    let bdir = fx.dir.path().join("b");
    reg.backup_create(&bdir).await.unwrap();
    let mut last = reg.channel_revision("prod").await.unwrap().unwrap();
    for round in 0..5 {
        reg.promote("prod", &ids[1 + round % 2], "t").await.unwrap();
        let after_promote = reg.channel_revision("prod").await.unwrap().unwrap();
        assert!(after_promote > last);
        reg.backup_restore(&bdir, true).await.unwrap();
        let after_restore = reg.channel_revision("prod").await.unwrap().unwrap();
        assert!(
            after_restore > after_promote,
            "round {round}: restore moved the revision from {after_promote} to {after_restore}"
        );
        assert_eq!(
            reg.channel("prod").await.unwrap().unwrap().release_id,
            ids[0]
        );
        last = after_restore;
    }
}
on_both!(restore_keeps_revisions_moving);
