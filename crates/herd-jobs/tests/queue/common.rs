//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// A temporary directory removed at drop.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new(label: &str) -> Self {
        TestDir(
            tempfile::Builder::new()
                .prefix(&format!("herd-jobs-{label}-"))
                .tempdir()
                .expect("create a temp dir"),
        )
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    #[allow(dead_code)]
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
}

/// The test Redis, or None (with a loud SKIPPED) when absent. Under CI its absence fails.
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var("HERD_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("HERD_TEST_REDIS_URL is not set but CI is: run scripts/test-services.sh and source .herd/test-env before the tests");
            }
            eprintln!("SKIPPED (redis part of {test}): HERD_TEST_REDIS_URL not set; run scripts/test-services.sh && source .herd/test-env");
            None
        }
    }
}

/// The test Redis Cluster (three nodes from scripts/test-services.sh), or None (with a loud
/// SKIPPED) when absent. Under CI its absence fails.
pub fn redis_cluster_url(test: &str) -> Option<String> {
    match std::env::var("HERD_TEST_REDIS_CLUSTER_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("HERD_TEST_REDIS_CLUSTER_URL is not set but CI is: run scripts/test-services.sh and source .herd/test-env before the tests");
            }
            eprintln!("SKIPPED (redis cluster part of {test}): HERD_TEST_REDIS_CLUSTER_URL not set; run scripts/test-services.sh && source .herd/test-env");
            None
        }
    }
}

/// A fresh database on the test PostgreSQL (HERD_TEST_POSTGRES_URL), or None (with a loud
/// SKIPPED) when absent. Under CI its absence fails.
pub async fn postgres_url(test: &str) -> Option<String> {
    let admin = match std::env::var("HERD_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("HERD_TEST_POSTGRES_URL is not set but CI is: run scripts/test-services.sh and source .herd/test-env before the tests");
            }
            eprintln!("SKIPPED (postgres part of {test}): HERD_TEST_POSTGRES_URL not set; run scripts/test-services.sh && source .herd/test-env");
            return None;
        }
    };
    let name = format!(
        "herd_jobs_{}_{:08x}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        rand::random::<u32>()
    );
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect {admin}: {e}"));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _db) = admin.rsplit_once('/').expect("a database in the URL");
    Some(format!("{base}/{name}"))
}
