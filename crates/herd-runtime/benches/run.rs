//! Warm batch-1 latency of the raw runtime call, `Instance::run`, without HTTP or the serving
//! core: the floor that `herd serve`'s HTTP latency is compared against (notes/bench-serving.md).
//!
//! `cargo bench -p herd-runtime --bench run`
//!
//! Benches:
//! - `run/linear_64x4/b1`: a `herd_onnx::LinearClassifier::random(64, 4, 1)` model (Gemm +
//!   Softmax + ArgMax), batch 1.
//! - `run/file/b1`: only when `HERD_BENCH_MODEL` names an ONNX file with one FP32 input
//!   `[-1, D]` (e.g. a `gen_models.py --dim 64 --classes 4` sklearn logistic regression, the
//!   model the HTTP side of the comparison serves), batch 1.
//!
//! The ONNX Runtime library is found as `herd serve` finds it (HERD_ORT_LIB, ORT_DYLIB_PATH,
//! herd's cache); without it the bench prints why and measures nothing. One intra-op thread,
//! as a batch-1 request gets in `herd serve` on a busy machine.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use herd_api::v2::{Tensor, TensorData};
use herd_onnx::LinearClassifier;
use herd_runtime::{Backend, Instance, LoadOptions, OrtBackend};

fn input(name: &str, dim: usize) -> Vec<Tensor> {
    let data: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
    vec![Tensor::new(
        name,
        vec![1, dim as i64],
        TensorData::F32(data),
    )]
}

fn load(backend: &OrtBackend, path: &Path) -> Option<Box<dyn Instance>> {
    match backend.load(path, &LoadOptions::default()) {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("SKIPPED: cannot load {}: {e}", path.display());
            None
        }
    }
}

/// The name and width `D` of a model's one `[-1, D]` input, from its signature.
fn input_dim(instance: &dyn Instance) -> Option<(String, usize)> {
    let meta = instance.signature().inputs.first()?;
    let d = *meta.shape.last()?;
    (d > 0).then(|| (meta.name.clone(), d as usize))
}

fn bench_run(c: &mut Criterion) {
    let backend = match OrtBackend::new(None, 1, false) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("herd-bench-run-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("SKIPPED: cannot create {}: {e}", dir.display());
        return;
    }
    let path = dir.join("model.onnx");
    let model = LinearClassifier::random(64, 4, 1).to_onnx("m");
    let mut group = c.benchmark_group("run");
    if std::fs::write(&path, model).is_ok() {
        if let Some(mut instance) = load(&backend, &path) {
            let inputs = input("input", 64);
            group.bench_function("linear_64x4/b1", |b| {
                b.iter(|| {
                    instance
                        .run(std::hint::black_box(inputs.clone()))
                        .expect("run")
                })
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(file) = std::env::var_os("HERD_BENCH_MODEL").map(PathBuf::from) {
        if let Some(mut instance) = load(&backend, &file) {
            match input_dim(instance.as_ref()) {
                Some((name, dim)) => {
                    let inputs = input(&name, dim);
                    group.bench_function("file/b1", |b| {
                        b.iter(|| {
                            instance
                                .run(std::hint::black_box(inputs.clone()))
                                .expect("run")
                        })
                    });
                }
                None => eprintln!(
                    "SKIPPED: {} has no FP32 input of shape [-1, D]",
                    file.display()
                ),
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_run);
criterion_main!(benches);
