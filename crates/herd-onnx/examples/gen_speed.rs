//! How long writing per-customer models takes:
//! `cargo run --release -p herd-onnx --example gen_speed -- [COUNT] [DIM] [CLASSES]`.

use std::time::Instant;

use herd_onnx::{read_signature, LinearClassifier};

fn main() {
    let mut args = Vec::new();
    for a in std::env::args().skip(1) {
        match a.parse::<usize>() {
            Ok(n) => args.push(n),
            Err(_) => {
                eprintln!("error: '{a}' is not a number; usage: gen_speed [COUNT] [DIM] [CLASSES]");
                std::process::exit(2);
            }
        }
    }
    let count = args.first().copied().unwrap_or(1000);
    let dim = args.get(1).copied().unwrap_or(16);
    let classes = args.get(2).copied().unwrap_or(4);

    let start = Instant::now();
    let mut bytes = 0usize;
    for seed in 0..count as u64 {
        bytes += LinearClassifier::random(dim, classes, seed)
            .to_onnx(&format!("customer-{seed}"))
            .len();
    }
    let gen = start.elapsed();
    let model = LinearClassifier::random(dim, classes, 0).to_onnx("m");
    let start = Instant::now();
    for _ in 0..count {
        read_signature(&model).expect("own model parses");
    }
    let read = start.elapsed();
    println!(
        "{count} models dim={dim} classes={classes}: generate {:.2} us/model ({} bytes avg), \
         read_signature {:.2} us/model",
        gen.as_secs_f64() * 1e6 / count as f64,
        bytes / count.max(1),
        read.as_secs_f64() * 1e6 / count as f64
    );
}
