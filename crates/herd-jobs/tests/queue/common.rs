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
