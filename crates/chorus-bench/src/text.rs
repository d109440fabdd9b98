//! `text`: what a keystroke costs in a long text, against what rewriting the
//! document costs, in the same run.
//!
//! For each size (characters), one `crdt` document holds a text of that size
//! (typed as words, written in pieces); then `keystrokes` single-character inserts,
//! each a durable write through the library API, go at places spread over the text,
//! one after another. The baseline: durable writes of a plain JSON document of the
//! same size (what an operation cost when every write rewrote its document).

use chorus_node::crdt::{Operation, Update};
use chorus_node::{CollectionConfig, Node, Policy, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct TextArgs {
    /// Text sizes, in characters.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000])]
    sizes: Vec<u64>,
    /// Keystrokes measured per size.
    #[arg(long, default_value_t = 300)]
    keystrokes: u64,
}

pub fn run(args: &TextArgs) -> anyhow::Result<()> {
    println!(
        "a keystroke into a long text, against rewriting the document: {} keystrokes per size, each a durable write",
        args.keystrokes
    );
    println!(
        "{:>10}  {:>14}  {:>14}  {:>16}  {:>8}",
        "characters", "keystroke p50", "keystroke p99", "whole doc write", "ratio"
    );
    for &size in &args.sizes {
        let dir = tempfile::tempdir()?;
        let node = chorus_node::open(dir.path().join("text.redb"))?;
        let crdt = CollectionConfig {
            policy: Policy::Crdt,
            ..Default::default()
        };
        node.set_collection("notes", &crdt)?;
        type_text(&node, size)?;
        let keystrokes = keystrokes(&node, size, args.keystrokes)?;
        let whole = whole_writes(&node, size, args.keystrokes.min(50))?;
        let (p50, p99) = (percentile(&keystrokes, 50), percentile(&keystrokes, 99));
        let base = percentile(&whole, 50);
        println!(
            "{size:>10}  {:>11.3} ms  {:>11.3} ms  {:>13.3} ms  {:>7.1}×",
            ms(p50),
            ms(p99),
            ms(base),
            base.as_secs_f64() / p50.as_secs_f64()
        );
    }
    println!(
        "ratio: a whole-document write's p50 over a keystroke's p50 (how much less a keystroke costs)"
    );
    Ok(())
}

/// Types a text of `size` characters into `notes/doc`, in writes of about 10,000.
fn type_text(node: &Node, size: u64) -> anyhow::Result<()> {
    let mut typed = 0;
    let mut word = 0u64;
    while typed < size {
        let mut piece = String::new();
        while (piece.len() as u64) < 10_000.min(size - typed) {
            piece.push_str(&format!("word{word} "));
            word += 1;
        }
        piece.truncate((size - typed).min(piece.len() as u64) as usize);
        let len = piece.chars().count() as u64;
        node.update("notes", "doc", vec![insert(typed, piece)])?;
        typed += len;
    }
    Ok(())
}

fn insert(pos: u64, text: String) -> Operation {
    Operation {
        path: vec!["text".into()],
        update: Update::TextInsert { pos, text },
    }
}

/// `count` single-character inserts spread over the text; their latencies.
fn keystrokes(node: &Node, size: u64, count: u64) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count as usize);
    for k in 0..count {
        let pos = (k * 7919) % size;
        let started = Instant::now();
        node.update("notes", "doc", vec![insert(pos, "x".into())])?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// `count` durable writes of a plain JSON document of `size` characters.
fn whole_writes(node: &Node, size: u64, count: u64) -> anyhow::Result<Vec<Duration>> {
    let text = "x".repeat(size as usize);
    let mut times = Vec::with_capacity(count as usize);
    for k in 0..count {
        let value = format!("{{\"text\":\"{text}\",\"n\":{k}}}").into_bytes();
        let write = Write {
            collection: "plain".into(),
            key: Some(format!("doc{k}")),
            value: Some(value),
            context: None,
        };
        let started = Instant::now();
        node.write(write)?;
        times.push(started.elapsed());
    }
    Ok(times)
}

fn percentile(times: &[Duration], p: usize) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
