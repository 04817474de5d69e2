//! Writes the synthetic LLM-like checkpoint used by the benchmarks:
//! `cargo run --release --example synth -- OUT.safetensors [COUNT] [ROWS] [COLS]`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: synth OUT.safetensors [COUNT=4] [ROWS=4096] [COLS=4096]");
        std::process::exit(2);
    };
    let num =
        |i: usize, default: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    qstore::synth::write_llm_like(
        std::path::Path::new(out),
        num(1, 4),
        num(2, 4096),
        num(3, 4096),
        7,
    )
    .expect("write the checkpoint");
}
