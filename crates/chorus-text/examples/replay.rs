//! Replays a sequential editing trace as local edits and prints the time it took and
//! the runs the text holds: `cargo run --release -p chorus-text --example replay --
//! crates/chorus-text/tests/traces/automerge-paper.json.gz` (the median of 5 runs).

use chorus_text::Text;
use std::io::Read;
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("give the path of a sequential trace (.json.gz)");
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("the trace opens"))
        .read_to_string(&mut json)
        .expect("the trace is gzipped text");
    let trace: serde_json::Value = serde_json::from_str(&json).expect("the trace is JSON");
    let patches: Vec<(u64, u64, String)> = trace["txns"]
        .as_array()
        .expect("txns")
        .iter()
        .flat_map(|t| t["patches"].as_array().expect("patches").clone())
        .map(|p| {
            (
                p[0].as_u64().unwrap(),
                p[1].as_u64().unwrap(),
                p[2].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut times = Vec::new();
    let mut text = Text::new();
    for _ in 0..5 {
        text = Text::new();
        let started = Instant::now();
        for (pos, deleted, inserted) in &patches {
            if *deleted > 0 {
                text.delete(*pos, *deleted);
            }
            if !inserted.is_empty() {
                text.insert(1, *pos, inserted);
            }
        }
        times.push(started.elapsed());
    }
    times.sort();
    assert_eq!(
        text.to_string(),
        trace["endContent"].as_str().unwrap_or_default()
    );
    let encoded = text.encode();
    let text_bytes = text.to_string().len();
    println!(
        "{path}: {} patches in {:.1} ms (median of 5); {} characters in {} runs; \
         encoded {} B ({} B of text, {:.2} B of metadata per character)",
        patches.len(),
        times[2].as_secs_f64() * 1e3,
        text.len(),
        text.runs(),
        encoded.len(),
        text_bytes,
        (encoded.len() - text_bytes) as f64 / text.len() as f64
    );
}
