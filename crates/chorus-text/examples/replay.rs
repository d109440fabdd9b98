//! Replays an editing trace and prints how long it took (median of 5), the runs the
//! text holds and its encoded size. A sequential trace is replayed as local edits; a
//! concurrent one is first played by its agents, each on its own replica, then the
//! time is that of merging every agent's operations into an empty replica.
//!
//! `cargo run --release -p chorus-text --example replay -- crates/chorus-text/tests/traces/automerge-paper.json.gz`

#[path = "../tests/support/mod.rs"]
mod support;

use chorus_text::Text;
use std::time::{Duration, Instant};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("give the path of a trace (.json.gz)");
    let trace = support::load_path(&path);
    let (what, text, took) = if trace["kind"] == "concurrent" {
        let ops: Vec<_> = support::play(&trace).ops.into_iter().flatten().collect();
        let (text, took) = median(|| {
            let mut text = Text::new();
            for op in &ops {
                text.apply(op).expect("in causal order");
            }
            text
        });
        (format!("{} operations merged", ops.len()), text, took)
    } else {
        let txns = trace["txns"].as_array().expect("txns");
        // Owned, side by side, as an editor's keystrokes come: not scattered in the
        // trace's JSON (reading those costs cache misses that are no CRDT's).
        let patches: Vec<(u64, u64, String)> = txns
            .iter()
            .flat_map(support::patches)
            .map(|(pos, deleted, inserted)| (pos, deleted, inserted.to_owned()))
            .collect();
        let (text, took) = median(|| {
            let mut text = Text::new();
            // As an editor would: the operations go out, nothing keeps them here.
            for (pos, deleted, inserted) in &patches {
                if *deleted > 0 {
                    text.delete(1, *pos, *deleted);
                }
                if !inserted.is_empty() {
                    text.insert(1, *pos, inserted.as_str());
                }
            }
            text
        });
        (format!("{} patches", patches.len()), text, took)
    };
    assert_eq!(
        text.to_string(),
        trace["endContent"].as_str().unwrap_or_default()
    );
    let encoded = text.encode();
    let text_bytes = text.to_string().len();
    println!(
        "{path}: {what} in {:.1} ms (median of 5); {} characters in {} runs; \
         encoded {} B ({} B of text, {:.2} B of metadata per character)",
        took.as_secs_f64() * 1e3,
        text.len(),
        text.runs(),
        encoded.len(),
        text_bytes,
        (encoded.len() - text_bytes) as f64 / text.len() as f64
    );
}

/// The result of `work`, and the median of 5 times it took.
fn median(work: impl Fn() -> Text) -> (Text, Duration) {
    let mut times = Vec::new();
    let mut text = Text::new();
    for _ in 0..5 {
        let started = Instant::now();
        text = work();
        times.push(started.elapsed());
    }
    times.sort();
    (text, times[2])
}
