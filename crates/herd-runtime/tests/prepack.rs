//! Pre-packed weights shared between sessions, against the real ONNX Runtime: every session
//! over the same large shared tensors pre-packs into one container, so a second instance of a
//! model (and a later model on the same weights) adds neither the tensors nor their packed copy
//! to the process's resident memory, the set is charged once, and it is freed with its last
//! user. Resident memory is read from /proc, not from herd's gauges.

use herd_api::v2::{Tensor, TensorData};
use herd_onnx::proto::{
    elem_type, model_bytes, GraphProto, NodeProto, TensorProto, ValueInfoProto,
};
use herd_runtime::{Backend, LoadOptions, OrtBackend};

/// 2048 x 2048 f32 = 16 MiB: the default pre-packing threshold (`HERD_PREPACK_MIN_BYTES`).
const N: usize = 2048;
const MIB: u64 = 1 << 20;

fn backend() -> OrtBackend {
    OrtBackend::new(None, 1, false).expect(
        "ONNX Runtime library not found: run `cargo run -p herd -- runtime install` (scripts/test.sh does)",
    )
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

/// y = MatMul(x, w) (then Relu with `relu`): one large weight matrix that ONNX Runtime's MatMul
/// kernel pre-packs.
fn model(dir: &std::path::Path, name: &str, relu: bool) -> std::path::PathBuf {
    let w: Vec<u8> = (0..N * N)
        .flat_map(|i| (((i * 37 + 11) % 101) as f32 / 101.0 - 0.5).to_le_bytes())
        .collect();
    let mut nodes = vec![node("MatMul", &["x", "w"], &[if relu { "h" } else { "y" }])];
    if relu {
        nodes.push(node("Relu", &["h"], &["y"]));
    }
    let g = GraphProto {
        node: nodes,
        name: Some(name.into()),
        initializer: vec![TensorProto {
            dims: vec![N as i64, N as i64],
            data_type: Some(elem_type::FLOAT),
            name: Some("w".into()),
            raw_data: Some(w),
            ..Default::default()
        }],
        input: vec![ValueInfoProto::tensor(
            "x",
            elem_type::FLOAT,
            &[-1, N as i64],
        )],
        output: vec![ValueInfoProto::tensor(
            "y",
            elem_type::FLOAT,
            &[-1, N as i64],
        )],
        ..Default::default()
    };
    let p = dir.join(format!("{name}.onnx"));
    std::fs::write(&p, model_bytes(g, 17)).unwrap();
    p
}

fn input() -> Vec<Tensor> {
    let x: Vec<f32> = (0..2 * N).map(|i| ((i % 13) as f32) / 13.0 - 0.3).collect();
    vec![Tensor::new("x", vec![2, N as i64], TensorData::F32(x))]
}

fn out(t: &[Tensor]) -> Vec<f32> {
    match &t[0].data {
        TensorData::F32(v) => v.clone(),
        other => panic!("{other:?}"),
    }
}

/// The process's resident memory (VmRSS), after handing free heap pages back.
fn rss() -> u64 {
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn sessions_over_the_same_weights_share_one_packed_copy_charged_once() {
    let dir = std::env::temp_dir().join(format!("herd-prepack-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = model(&dir, "plain", false);
    let b = model(&dir, "relu", true);
    let weights = (N * N * 4) as u64;
    let shared = backend();
    let store = shared.shared_store().expect("sharing is on by default");
    let opts = LoadOptions::default();
    // Measured first, on a process that has not yet loaded (and freed) a model: memory freed
    // by an earlier session would be reused and hide what a load holds.
    let r0 = rss();
    let mut i1 = shared.load(&a, &opts).unwrap();
    let r1 = rss();
    let s1 = i1.sharing();
    assert_eq!(
        store.packed_sets(),
        1,
        "the first instance packs into a set"
    );
    assert_eq!(s1.weights.len(), 2, "the tensor and its packed set: {s1:?}");
    let (w_key, w_bytes) = s1.weights[0];
    assert_eq!(w_bytes, weights);
    let packed = s1.weights[1];
    assert!(
        packed.1 >= weights / 2,
        "the packed set is charged what its build allocated: {packed:?}"
    );
    assert_eq!(s1.created_bytes, weights + packed.1);
    // The first instance holds the tensor (and the packed copy).
    assert!(
        r1 - r0 >= weights,
        "first load: {} MiB resident",
        (r1 - r0) / MIB
    );
    assert_eq!(store.resident_bytes(), weights + packed.1);

    // A second instance of the same model: the tensor and the packed copy are found.
    let mut i2 = shared.load(&a, &opts).unwrap();
    let r2 = rss();
    let s2 = i2.sharing();
    assert_eq!(s2.weights, s1.weights, "the same tensor and the same set");
    assert_eq!(s2.created_bytes, 0, "nothing new is charged");
    assert_eq!(store.packed_sets(), 1);
    assert!(
        r2.saturating_sub(r1) < weights / 4,
        "a second instance added {} MiB resident (the packed copy is {} MiB)",
        r2.saturating_sub(r1) / MIB,
        packed.1 / MIB
    );

    // A later model over the same weights (another graph) uses the same set too.
    let mut i3 = shared.load(&b, &opts).unwrap();
    let r3 = rss();
    let s3 = i3.sharing();
    assert!(
        s3.weights.iter().any(|(k, _)| *k == w_key) && s3.weights.contains(&packed),
        "{s3:?} uses the tensor and the set {packed:?}"
    );
    assert_eq!(store.packed_sets(), 1);
    assert!(
        r3.saturating_sub(r2) < weights / 4,
        "a later model on the same weights added {} MiB resident",
        r3.saturating_sub(r2) / MIB
    );

    // The same answers as sessions of their own (no sharing, no container).
    let alone = backend().without_sharing();
    let want_a = out(&alone.load(&a, &opts).unwrap().run(input()).unwrap());
    let want_b = out(&alone.load(&b, &opts).unwrap().run(input()).unwrap());
    close(&out(&i1.run(input()).unwrap()), &want_a);
    close(&out(&i2.run(input()).unwrap()), &want_a);
    close(&out(&i3.run(input()).unwrap()), &want_b);

    // Freed with the last user, not before.
    drop(i1);
    drop(i2);
    assert_eq!(store.packed_sets(), 1, "the later model still uses the set");
    drop(i3);
    assert_eq!(store.packed_sets(), 0);
    assert_eq!(store.resident_bytes(), 0, "tensor, trunk and set freed");
    let _ = std::fs::remove_dir_all(&dir);
}
