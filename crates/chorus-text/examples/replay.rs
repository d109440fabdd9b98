//! Replays an editing trace and prints how long it took (median of 5), the runs the
//! text holds and its encoded size. A sequential trace is replayed as local edits; a
//! concurrent one is first played by its agents, each on its own replica, then the
//! time is that of merging every agent's operations into an empty replica.
//!
//! `cargo run --release -p chorus-text --example replay -- crates/chorus-text/tests/traces/automerge-paper.json.gz`

use chorus_text::{Op, Text};
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, Instant};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("give the path of a trace (.json.gz)");
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("the trace opens"))
        .read_to_string(&mut json)
        .expect("the trace is gzipped text");
    let trace: Value = serde_json::from_str(&json).expect("the trace is JSON");
    let txns = trace["txns"].as_array().expect("txns");
    let (what, text, times) = if trace["kind"] == "concurrent" {
        let ops = play_agents(&trace);
        let times = median(|| {
            let mut text = Text::new();
            for op in &ops {
                text.apply(op).expect("in causal order");
            }
            text
        });
        (format!("{} operations merged", ops.len()), times.0, times.1)
    } else {
        let patches: Vec<(u64, u64, String)> = txns
            .iter()
            .flat_map(|t| t["patches"].as_array().expect("patches").clone())
            .map(|p| {
                let n = |i: usize| p[i].as_u64().expect("a number");
                (n(0), n(1), p[2].as_str().expect("text").to_owned())
            })
            .collect();
        let times = median(|| {
            let mut text = Text::new();
            for (pos, deleted, inserted) in &patches {
                if *deleted > 0 {
                    text.delete(*pos, *deleted);
                }
                if !inserted.is_empty() {
                    text.insert(1, *pos, inserted);
                }
            }
            text
        });
        (format!("{} patches", patches.len()), times.0, times.1)
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
        times.as_secs_f64() * 1e3,
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

/// Plays a concurrent trace: each agent edits its own replica, taking first the
/// operations of the transactions its transaction's parents hold; answers every
/// operation, in trace order (a causal order).
fn play_agents(trace: &Value) -> Vec<Op> {
    let txns = trace["txns"].as_array().expect("txns");
    let agents = trace["numAgents"].as_u64().expect("numAgents") as usize;
    let mut replicas: Vec<Text> = (0..agents).map(|_| Text::new()).collect();
    let mut applied = vec![vec![false; txns.len()]; agents];
    let mut ops: Vec<Vec<Op>> = Vec::new();
    let parents = |t: &Value| -> Vec<usize> {
        t["parents"]
            .as_array()
            .expect("parents")
            .iter()
            .map(|p| p.as_u64().expect("an index") as usize)
            .collect()
    };
    for (i, txn) in txns.iter().enumerate() {
        let agent = txn["agent"].as_u64().expect("agent") as usize;
        let mut missing = Vec::new();
        let mut stack = parents(txn);
        while let Some(p) = stack.pop() {
            if !applied[agent][p] {
                applied[agent][p] = true;
                missing.push(p);
                stack.extend(parents(&txns[p]));
            }
        }
        missing.sort_unstable();
        for p in missing {
            for op in &ops[p] {
                replicas[agent].apply(op).expect("in causal order");
            }
        }
        let mut made = Vec::new();
        for p in txn["patches"].as_array().expect("patches") {
            let n = |i: usize| p[i].as_u64().expect("a number");
            let text = &mut replicas[agent];
            if n(1) > 0 {
                made.extend(text.delete(n(0), n(1)));
            }
            let inserted = p[2].as_str().expect("text");
            if !inserted.is_empty() {
                made.push(text.insert(agent as u64 + 1, n(0), inserted));
            }
        }
        applied[agent][i] = true;
        ops.push(made);
    }
    ops.into_iter().flatten().collect()
}
