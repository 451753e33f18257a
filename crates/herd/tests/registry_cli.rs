//! The registry walk-through with the real `herd` binary: push 3 versions of 2 models with
//! lineage, aliases, a release, diff, promote, roll back (one model and the channel), verify,
//! backup + verify + restore, gc --dry-run; bad input exits non-zero with a message and changes
//! nothing. SQLite and a local artifact directory; no services needed.
//!
//! Run: `cargo test -p herd --test registry_cli`

use std::path::Path;
use std::process::Command;

use herd_onnx::LinearClassifier;
use serde_json::Value;

const HERD: &str = env!("CARGO_BIN_EXE_herd");
const DATA: &str = "dvc:0123456789abcdef0123456789abcdef";
const CODE: &str = "git:0123456789abcdef0123456789abcdef01234567";

struct Cli<'a> {
    dir: &'a Path,
}

impl Cli<'_> {
    /// Runs herd; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(HERD)
            .args(args)
            .current_dir(self.dir)
            .env(
                "HERD_REGISTRY",
                format!("sqlite://{}", self.dir.join("reg.db").display()),
            )
            .env("HERD_ARTIFACTS", self.dir.join("artifacts"))
            .env("HERD_USER", "alice")
            .env_remove("HERD_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "herd {args:?} failed: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("herd {args:?}: not JSON ({e}): {out}"))
    }

    /// Fails with a message on stderr and leaves the registry as it was.
    fn refused(&self, args: &[&str], message: &str) {
        let before = self.json(&["model", "versions", "--limit", "1000"]);
        let (ok, _, err) = self.run(args);
        assert!(!ok, "herd {args:?} should fail");
        assert!(
            err.contains(message),
            "herd {args:?}: '{message}' not in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let after = self.json(&["model", "versions", "--limit", "1000"]);
        assert_eq!(before, after, "herd {args:?} changed the registry");
    }
}

#[test]
fn registry_walk_through_with_the_real_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cli = Cli { dir };
    for m in 0..2u64 {
        for v in 1..=3u64 {
            let f = dir.join(format!("m{m}-v{v}.onnx"));
            std::fs::write(&f, LinearClassifier::random(4, 2, m * 10 + v).to_onnx("m")).unwrap();
            let out = cli.json(&[
                "model",
                "push",
                &format!("customer-{m}"),
                f.to_str().unwrap(),
                "--create",
                "--tenant",
                &format!("t{m}"),
                "--data-ref",
                DATA,
                "--code-ref",
                CODE,
                "--metric",
                "auc=0.9",
            ]);
            assert_eq!(out["version"]["version"], v);
            assert_eq!(out["version"]["data_ref"], DATA);
        }
    }
    let list = cli.json(&["model", "list"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let show = cli.json(&["model", "show", "customer-0"]);
    assert_eq!(show["versions"].as_array().unwrap().len(), 3);
    assert_eq!(
        cli.json(&["model", "show", "customer-0", "--version", "latest"])["version"],
        3
    );

    // Bad input: each refused with a message, nothing written.
    std::fs::write(dir.join("notes.txt"), "not a model").unwrap();
    cli.refused(
        &["model", "push", "customer-0", "notes.txt"],
        "not an ONNX model",
    );
    let v1 = dir.join("m0-v1.onnx");
    let v1 = v1.to_str().unwrap();
    cli.refused(&["model", "push", "ghost", v1], "does not exist");
    cli.refused(
        &["model", "push", "customer-0", v1, "--data-ref", "latest"],
        "immutable",
    );
    cli.refused(
        &["model", "push", "customer-0", v1, "--code-ref", "main"],
        "immutable",
    );
    cli.refused(
        &["release", "create", "--set", "customer-0=9"],
        "no version 9",
    );

    // Aliases with history.
    cli.ok(&["alias", "set", "customer-0", "production", "1"]);
    cli.ok(&["alias", "set", "customer-0", "production", "2"]);
    cli.ok(&["alias", "set", "customer-1", "production", "1"]);
    let h = cli.json(&["alias", "history", "customer-0"]);
    assert_eq!(h[1]["from_version"], 1);
    assert_eq!(h[1]["to_version"], 2);
    assert_eq!(h[1]["by"], "alice");

    // Releases: from the aliases, promoted; then production + a change.
    let r1 = cli.json(&[
        "release",
        "create",
        "--from-alias",
        "production",
        "--promote",
        "production",
    ]);
    assert_eq!(r1["release"]["entries"]["customer-0"]["version"], 2);
    let r1_id = r1["release"]["short_id"].as_str().unwrap().to_string();
    let r2 = cli.json(&[
        "release",
        "create",
        "--from-channel",
        "production",
        "--set",
        "customer-1=3",
    ]);
    let r2_id = r2["release"]["short_id"].as_str().unwrap().to_string();
    // The same set again is the same release.
    let again = cli.json(&[
        "release",
        "create",
        "--set",
        "customer-0=2",
        "--set",
        "customer-1=3",
    ]);
    assert_eq!(again["release"]["short_id"], r2_id.as_str());
    assert_eq!(again["created"], false);
    let d = cli.json(&["release", "diff", &r1_id, &r2_id]);
    assert_eq!(d["changed"]["customer-1"][0]["version"], 1);
    assert_eq!(d["changed"]["customer-1"][1]["version"], 3);
    cli.ok(&["release", "promote", &r2_id, "--channel", "production"]);
    assert_eq!(
        cli.json(&["release", "show", "@production"])["short_id"],
        r2_id.as_str()
    );

    // One model back (a new release: here it is r1 again), then the channel back.
    let rb = cli.json(&[
        "release",
        "rollback",
        "--channel",
        "production",
        "--model",
        "customer-1",
    ]);
    assert_eq!(rb["release"]["entries"]["customer-1"]["version"], 1);
    assert_eq!(rb["release"]["short_id"], r1_id.as_str());
    cli.ok(&["release", "rollback", "--channel", "production"]);
    assert_eq!(
        cli.json(&["release", "show", "@production"])["short_id"],
        r2_id.as_str()
    );
    let ch = cli.json(&["release", "channel", "production"]);
    assert_eq!(ch["history"].as_array().unwrap().len(), 4);
    assert_eq!(
        cli.json(&["release", "verify"])["problems"],
        serde_json::json!([])
    );
    assert!(
        cli.ok(&["release", "list"]).contains(&r2_id),
        "table lists the release"
    );

    // Backup, verify, restore into a second registry.
    cli.ok(&["backup", "create", "bk"]);
    let v = cli.json(&["backup", "verify", "bk"]);
    assert_eq!(v["check"]["problems"], serde_json::json!([]));
    let other = format!("sqlite://{}", dir.join("restored.db").display());
    cli.ok(&["backup", "restore", "bk", "--registry", &other]);
    assert_eq!(
        cli.json(&["release", "show", "@production", "--registry", &other])["short_id"],
        r2_id.as_str()
    );
    // A deleted artifact makes verify fail (exit code) and names it.
    let digest = show["versions"][0]["digest"].as_str().unwrap().to_string();
    std::fs::remove_file(
        dir.join("artifacts/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let (ok, out, _) = cli.run(&["backup", "verify", "bk"]);
    assert!(!ok);
    assert!(
        out.contains("missing_artifact") && out.contains(&digest),
        "{out}"
    );

    // gc dry run lists, deletes nothing.
    let before = std::fs::read_dir(dir.join("artifacts/sha256"))
        .unwrap()
        .count();
    let g = cli.json(&["gc", "--dry-run", "--keep-last", "1", "--min-age", "0s"]);
    assert!(!g["candidates"].as_array().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.join("artifacts/sha256"))
            .unwrap()
            .count(),
        before
    );
}
