//! The editing traces of `tests/traces/` (their README says where they come from),
//! and the play of the concurrent one by its agents; shared by the tests and the
//! `replay` example.

#![allow(dead_code)] // Each user takes what it needs.

use chorus_text::{Op, Text};
use serde_json::Value;
use std::io::Read;

/// A trace, decoded.
pub fn load(name: &str) -> Value {
    let path = format!("{}/tests/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
    load_path(&path)
}

pub fn load_path(path: &str) -> Value {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The patches of a transaction: `(pos, delete count, inserted text)`.
pub fn patches(txn: &Value) -> impl Iterator<Item = (u64, u64, &str)> {
    txn["patches"].as_array().unwrap().iter().map(|p| {
        (
            p[0].as_u64().unwrap(),
            p[1].as_u64().unwrap(),
            p[2].as_str().unwrap(),
        )
    })
}

/// Applies a patch as local edits of `agent`; answers the operations.
pub fn edit(text: &mut Text, agent: u64, (pos, deleted, inserted): (u64, u64, &str)) -> Vec<Op> {
    let mut ops = Vec::new();
    if deleted > 0 {
        ops.extend(text.delete(agent, pos, deleted));
    }
    if !inserted.is_empty() {
        ops.push(text.insert(agent, pos, inserted));
    }
    ops
}

pub fn parents(txn: &Value) -> Vec<usize> {
    txn["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as usize)
        .collect()
}

/// A concurrent trace played by its agents: their replicas, which transactions each
/// applied, and each transaction's operations.
pub struct Played {
    pub replicas: Vec<Text>,
    pub applied: Vec<Vec<bool>>,
    pub ops: Vec<Vec<Op>>,
}

/// Each agent edits its own replica; before a transaction, its replica takes the
/// operations of every ancestor transaction it lacks (in trace order, a causal
/// order), so that positions mean what they meant to the author.
pub fn play(trace: &Value) -> Played {
    let txns = trace["txns"].as_array().unwrap();
    let agents = trace["numAgents"].as_u64().unwrap() as usize;
    let mut played = Played {
        replicas: (0..agents).map(|_| Text::new()).collect(),
        applied: vec![vec![false; txns.len()]; agents],
        ops: Vec::with_capacity(txns.len()),
    };
    for (t, txn) in txns.iter().enumerate() {
        let agent = txn["agent"].as_u64().unwrap() as usize;
        // A replica that applied a transaction applied its ancestors first, so the
        // search stops at applied ones.
        let mut missing = Vec::new();
        let mut stack = parents(txn);
        while let Some(p) = stack.pop() {
            if !played.applied[agent][p] {
                played.applied[agent][p] = true;
                missing.push(p);
                stack.extend(parents(&txns[p]));
            }
        }
        missing.sort_unstable();
        for p in missing {
            for op in &played.ops[p] {
                played.replicas[agent].apply(op).unwrap();
            }
        }
        let mut made = Vec::new();
        for patch in patches(txn) {
            made.extend(edit(&mut played.replicas[agent], agent as u64 + 1, patch));
        }
        played.applied[agent][t] = true;
        played.ops.push(made);
    }
    played
}
