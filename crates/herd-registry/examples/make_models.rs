//! Writes small ONNX classifiers to push into the registry:
//! `cargo run -p herd-registry --example make_models -- DIR COUNT [VERSIONS]` writes
//! `DIR/customer-<i>-v<k>.onnx` for i in 0..COUNT and k in 1..=VERSIONS (different weights each).

use herd_onnx::LinearClassifier;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: make_models DIR COUNT [VERSIONS]";
    let Some(dir) = args.first() else {
        eprintln!("error: missing DIR; {usage}");
        std::process::exit(2);
    };
    let parse = |i: usize, default: u64| -> u64 {
        match args.get(i) {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("error: '{s}' is not a number; {usage}");
                std::process::exit(2);
            }),
        }
    };
    let count = parse(1, 2);
    let versions = parse(2, 3);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {dir}: {e}");
        std::process::exit(1);
    }
    for i in 0..count {
        for k in 1..=versions {
            let bytes =
                LinearClassifier::random(8, 3, i * 1000 + k).to_onnx(&format!("customer-{i}"));
            let path = std::path::Path::new(dir).join(format!("customer-{i}-v{k}.onnx"));
            if let Err(e) = std::fs::write(&path, bytes) {
                eprintln!("error: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
    println!("wrote {} models to {dir}", count * versions);
}
