//! The local backend with real child processes. The "herd" binary is replaced by a small shell
//! script, so this checks what the backend itself does: the exact command lines, SIGTERM to
//! exactly the chosen idle workers, and a clean shutdown.

use std::path::PathBuf;

use herd_scale::decide::Action;
use herd_scale::local::{LocalBackend, LocalSettings};
use herd_scale::Policy;

fn setup(name: &str) -> (PathBuf, LocalBackend, Policy) {
    let dir = std::env::temp_dir().join(format!("herd-scale-local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("fake-herd");
    // Stays alive until SIGTERM, then ends with its sleep (no orphan left behind).
    std::fs::write(
        &exe,
        "#!/bin/sh\ntrap 'kill $! 2>/dev/null; exit 0' TERM\nsleep 300 &\nwait\n",
    )
    .unwrap();
    let mut perm = std::fs::metadata(&exe).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&exe, perm).unwrap();
    let backend = LocalBackend::new(LocalSettings {
        exe,
        log_dir: dir.join("logs"),
        queue_url: Some("sqlite://fallback.db".into()),
        keep_logs: 500,
    })
    .unwrap();
    let policy = Policy::parse(
        "[[workers]]\nqueue = \"q\"\njobs_per_worker = 1\nmax = 5\nidle_exit = \"45s\"\n",
        "local.toml",
    )
    .unwrap();
    (dir, backend, policy)
}

/// The command line of a running process. Right after spawn the kernel may still be inside
/// execve (arguments not yet mapped: an empty read), so read until it is there (bounded).
fn cmdline(pid: u32) -> Vec<String> {
    for _ in 0..5000 {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !raw.is_empty() {
            return raw
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("process {pid} never showed its command line");
}

#[tokio::test]
async fn starts_workers_with_their_ids_and_stops_only_the_chosen_ones() {
    let (dir, mut b, policy) = setup("workers");
    let pool = policy.workers[0].clone();
    assert!(b.workers(&pool).is_empty());

    b.apply(
        &Action::StartWorkers {
            queue: "q".into(),
            from: 0,
            to: 3,
        },
        &policy,
    )
    .unwrap();
    let ids = b.workers(&pool);
    assert_eq!(ids.len(), 3);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids sort in start order");

    // The exact command line of each child.
    for (id, pid) in b.pids() {
        let args = cmdline(pid);
        let tail: Vec<&str> = args
            .iter()
            .skip_while(|a| *a != "worker")
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            vec![
                "worker",
                "--queue",
                "q",
                "--worker-id",
                id.as_str(),
                "--idle-exit",
                "45s"
            ]
        );
        // The queue URL (it may hold a password) goes through the environment, never argv.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|kv| kv == b"HERD_QUEUE_URL=sqlite://fallback.db"),
            "worker {id} has HERD_QUEUE_URL in its environment"
        );
        assert!(
            !args.iter().any(|a| a.contains("fallback.db")),
            "no URL in argv"
        );
    }

    // Stop the first and the third; the second keeps running.
    let stop = vec![ids[0].clone(), ids[2].clone()];
    let pids: Vec<(String, u32)> = b.pids();
    b.apply(
        &Action::StopWorkers {
            queue: "q".into(),
            from: 3,
            to: 1,
            stop: stop.clone(),
            keep: vec![ids[1].clone()],
        },
        &policy,
    )
    .unwrap();
    assert_eq!(b.workers(&pool), vec![ids[1].clone()]);
    let survivor = pids.iter().find(|(id, _)| id == &ids[1]).unwrap().1;
    assert!(std::path::Path::new(&format!("/proc/{survivor}")).exists());

    b.shutdown().await;
    assert_eq!(b.live_children(), 0);
    assert!(b.workers(&pool).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pool_without_queue_url_or_repo_is_a_clear_error() {
    let (dir, _, _) = setup("errors");
    let mut b = LocalBackend::new(LocalSettings {
        exe: dir.join("fake-herd"),
        log_dir: dir.join("logs"),
        queue_url: None,
        keep_logs: 500,
    })
    .unwrap();
    let policy = Policy::parse(
        "[[workers]]\nqueue = \"q\"\njobs_per_worker = 1\nmax = 5\n\n[[serving]]\nname = \"web\"\ntarget_invocations_per_minute = 225\ntarget_memory_utilisation = 0.8\nmax = 2\n",
        "local.toml",
    )
    .unwrap();
    let e = b
        .apply(
            &Action::StartWorkers {
                queue: "q".into(),
                from: 0,
                to: 1,
            },
            &policy,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no queue URL") && e.contains("--queue-url"),
        "{e}"
    );
    let e = b
        .apply(
            &Action::ScaleServing {
                pool: "web".into(),
                from: 0,
                to: 1,
            },
            &policy,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no repo"), "{e}");
    assert_eq!(b.live_children(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_binary_is_a_clear_error() {
    let (dir, _, policy) = setup("missing");
    let mut b = LocalBackend::new(LocalSettings {
        exe: dir.join("no-such-herd"),
        log_dir: dir.join("logs"),
        queue_url: Some("sqlite://x.db".into()),
        keep_logs: 500,
    })
    .unwrap();
    let e = b
        .apply(
            &Action::StartWorkers {
                queue: "q".into(),
                from: 0,
                to: 1,
            },
            &policy,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot start") && e.contains("no-such-herd"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn old_child_logs_are_pruned_to_keep_logs() {
    let (dir, _, policy) = setup("prune");
    let logs = dir.join("logs");
    let mut b = LocalBackend::new(LocalSettings {
        exe: dir.join("fake-herd"),
        log_dir: logs.clone(),
        queue_url: Some("sqlite://x.db".into()),
        keep_logs: 2,
    })
    .unwrap();
    // Five logs of long-gone children, oldest first (mtimes set explicitly, no sleeping).
    let base = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..5u64 {
        let path = logs.join(format!("old-{i}.log"));
        std::fs::write(&path, "x").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(base + std::time::Duration::from_secs(i * 60))
            .unwrap();
    }
    std::fs::write(logs.join("notes.txt"), "not a log").unwrap();
    b.apply(
        &Action::StartWorkers {
            queue: "q".into(),
            from: 0,
            to: 1,
        },
        &policy,
    )
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let live = format!("{}.log", b.workers(&policy.workers[0])[0]);
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names.contains(&"old-3.log".to_string()) && names.contains(&"old-4.log".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&live) && names.contains(&"notes.txt".to_string()),
        "{names:?}"
    );
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
