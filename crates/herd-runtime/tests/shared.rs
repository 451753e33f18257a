//! Weight sharing against the real ONNX Runtime: models that share an int8 encoder get the
//! same answers as when loaded alone, hold one copy of the (folded) encoder, and free it with
//! their last instance.

use herd_api::v2::{Tensor, TensorData};
use herd_onnx::proto::{
    elem_type, model_bytes, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto,
};
use herd_runtime::{Backend, LoadOptions, OrtBackend};

const N: usize = 300; // 300 x 300 int8 = 90,000 bytes: above the 64 KiB threshold

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

fn tensor(name: &str, dims: &[i64], bytes: Vec<u8>, ty: i32) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(ty),
        name: Some(name.into()),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

/// y = relu(x @ (Cast(wq) * scale)) @ head + bias: the encoder (wq, scale) is the same for
/// every customer, the head is the customer's own.
fn customer(dir: &std::path::Path, seed: u32) -> std::path::PathBuf {
    let wq: Vec<u8> = (0..N * N).map(|i| ((i * 31 + 7) % 255) as u8).collect();
    let head: Vec<u8> = (0..N * 2)
        .flat_map(|i| (((i as u32 * 17 + seed * 101) % 97) as f32 / 97.0 - 0.5).to_le_bytes())
        .collect();
    let mut cast = node("Cast", &["wq"], &["wf"]);
    cast.attribute
        .push(AttributeProto::int("to", elem_type::FLOAT as i64));
    let g = GraphProto {
        node: vec![
            cast,
            node("Mul", &["wf", "scale"], &["w"]),
            node("MatMul", &["x", "w"], &["h"]),
            node("Relu", &["h"], &["r"]),
            node("MatMul", &["r", "head"], &["z"]),
            node("Add", &["z", "bias"], &["y"]),
        ],
        name: Some("customer".into()),
        initializer: vec![
            tensor("wq", &[N as i64, N as i64], wq, elem_type::INT8),
            tensor(
                "scale",
                &[],
                0.01f32.to_le_bytes().to_vec(),
                elem_type::FLOAT,
            ),
            tensor("head", &[N as i64, 2], head, elem_type::FLOAT),
            tensor(
                "bias",
                &[2],
                [seed as f32, -(seed as f32)]
                    .iter()
                    .flat_map(|f| f.to_le_bytes())
                    .collect(),
                elem_type::FLOAT,
            ),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            elem_type::FLOAT,
            &[-1, N as i64],
        )],
        output: vec![ValueInfoProto::tensor("y", elem_type::FLOAT, &[-1, 2])],
        ..Default::default()
    };
    let p = dir.join(format!("customer-{seed}.onnx"));
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

#[test]
fn customers_share_one_folded_encoder_and_one_trunk_and_answer_as_when_alone() {
    let dir = std::env::temp_dir().join(format!("herd-shared-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = customer(&dir, 1);
    let b = customer(&dir, 2);
    let c = customer(&dir, 3);
    let shared = backend();
    let alone = backend().without_sharing();
    let store = shared.shared_store().expect("sharing is on by default");
    let opts = LoadOptions::default();
    let encoder = (N * N * 4) as u64;

    // The first customer: a whole session of its own on the shared (folded) encoder.
    let mut ia = shared.load(&a, &opts).unwrap();
    let sa = ia.sharing();
    assert_eq!(
        sa.weights.len(),
        1,
        "one folded tensor: the dequantised encoder"
    );
    assert_eq!(sa.created_bytes, encoder);
    assert!(sa.stripped_file_bytes >= (N * N) as u64);
    assert_eq!(store.trunks(), 0);
    // The second finds the encoder resident: it runs the encoder's part of its graph on a
    // shared trunk session (built now) and only its head in a session of its own.
    let mut ib = shared.load(&b, &opts).unwrap();
    let sb = ib.sharing();
    assert_eq!(store.trunks(), 1);
    assert_eq!(sb.weights.len(), 2, "the encoder and the trunk: {sb:?}");
    assert_eq!(
        sb.weights[0], sa.weights[0],
        "the same encoder key and bytes"
    );
    let trunk = sb.weights[1];
    assert!(trunk.1 > 0);
    assert_eq!(
        sb.created_bytes, trunk.1,
        "b created the trunk, not the encoder"
    );
    // The third reuses both.
    let mut ic = shared.load(&c, &opts).unwrap();
    let sc = ic.sharing();
    assert_eq!(sc.weights, sb.weights);
    assert_eq!(sc.created_bytes, 0, "nothing new");
    assert_eq!(store.trunks(), 1);
    assert_eq!(store.resident_bytes(), encoder + trunk.1);
    assert_eq!(store.len(), 1);
    assert_eq!(
        ic.signature(),
        ia.signature(),
        "the model's own inputs and outputs"
    );

    for (inst, path) in [(&mut ia, &a), (&mut ib, &b), (&mut ic, &c)] {
        let got = out(&inst.run(input()).unwrap());
        let mut plain = alone.load(path, &opts).unwrap();
        assert!(plain.sharing().weights.is_empty());
        let want = out(&plain.run(input()).unwrap());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }
    // The customers differ (their heads do).
    assert_ne!(
        out(&ib.run(input()).unwrap()),
        out(&ic.run(input()).unwrap())
    );

    drop(ia);
    drop(ib);
    assert_eq!(
        store.resident_bytes(),
        encoder + trunk.1,
        "c still uses both"
    );
    drop(ic);
    assert_eq!(store.resident_bytes(), 0, "freed with their last user");
    assert_eq!(store.trunks(), 0);
    assert!(store.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
