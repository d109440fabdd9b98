//! Real editing traces (`tests/traces/`, with their attribution): each sequential
//! trace replayed as local edits gives exactly its final text; the concurrent trace,
//! each agent typing on its own replica and merging what its transactions' parents
//! hold, ends with its final text on both replicas.

use chorus_text::{Op, Text};
use serde_json::Value;
use std::io::Read;

fn trace(name: &str) -> Value {
    let path = format!("{}/tests/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

/// The patches of a transaction: `(pos, delete count, inserted text)`.
fn patches(txn: &Value) -> impl Iterator<Item = (u64, u64, &str)> {
    txn["patches"].as_array().unwrap().iter().map(|p| {
        (
            p[0].as_u64().unwrap(),
            p[1].as_u64().unwrap(),
            p[2].as_str().unwrap(),
        )
    })
}

/// Applies a patch as local edits of `agent`; answers the operations.
fn edit(text: &mut Text, agent: u64, (pos, deleted, inserted): (u64, u64, &str)) -> Vec<Op> {
    let mut ops = Vec::new();
    if deleted > 0 {
        ops.extend(text.delete(pos, deleted));
    }
    if !inserted.is_empty() {
        ops.push(text.insert(agent, pos, inserted));
    }
    ops
}

fn replay_sequential(name: &str) {
    let trace = trace(name);
    let mut text = Text::new();
    for txn in trace["txns"].as_array().unwrap() {
        for patch in patches(txn) {
            edit(&mut text, 1, patch);
        }
    }
    assert_eq!(
        text.to_string(),
        trace["endContent"].as_str().unwrap(),
        "{name}"
    );
}

#[test]
fn automerge_paper_replays_to_its_end() {
    replay_sequential("automerge-paper");
}

#[test]
fn seph_blog1_replays_to_its_end() {
    replay_sequential("seph-blog1");
}

/// Each agent edits its own replica; before a transaction, its replica takes the
/// operations of every ancestor transaction it lacks (in trace order, a causal order),
/// so that positions mean what they meant to the author. Afterwards each replica
/// takes every operation it lacks, in an order of its own: both end with the trace's
/// final text.
#[test]
fn friendsforever_merges_to_its_end_on_both_replicas() {
    let trace = trace("friendsforever");
    let txns = trace["txns"].as_array().unwrap();
    let agents = trace["numAgents"].as_u64().unwrap() as usize;
    let mut replicas: Vec<Text> = (0..agents).map(|_| Text::new()).collect();
    let mut applied: Vec<Vec<bool>> = vec![vec![false; txns.len()]; agents];
    let mut ops: Vec<Vec<Op>> = Vec::with_capacity(txns.len());
    for (t, txn) in txns.iter().enumerate() {
        let agent = txn["agent"].as_u64().unwrap() as usize;
        // The ancestors this replica lacks: a replica that applied a transaction
        // applied its ancestors first, so the search stops at applied ones.
        let mut missing = Vec::new();
        let mut stack: Vec<usize> = parents(txn);
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
                replicas[agent].apply(op).unwrap();
            }
        }
        let mut made = Vec::new();
        for patch in patches(txn) {
            made.extend(edit(&mut replicas[agent], agent as u64 + 1, patch));
        }
        applied[agent][t] = true;
        ops.push(made);
    }
    let end = trace["endContent"].as_str().unwrap();
    for (agent, replica) in replicas.iter_mut().enumerate() {
        // Agent 0 takes what it lacks newest first where causality allows: each
        // transaction after its parents, but the agents' branches in another order.
        let order: Vec<usize> = if agent == 0 {
            (0..txns.len()).collect()
        } else {
            let mut by_agent: Vec<usize> = (0..txns.len()).collect();
            by_agent.sort_by_key(|&t| (txns[t]["agent"].as_u64() != Some(0), t));
            causal(&by_agent, txns)
        };
        for t in order {
            if !applied[agent][t] {
                applied[agent][t] = true;
                for op in &ops[t] {
                    replica.apply(op).unwrap();
                }
            }
        }
        assert_eq!(replica.to_string(), end, "replica of agent {agent}");
    }
}

fn parents(txn: &Value) -> Vec<usize> {
    txn["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as usize)
        .collect()
}

/// `wanted` reordered so that each transaction comes after its parents.
fn causal(wanted: &[usize], txns: &[Value]) -> Vec<usize> {
    let mut placed = vec![false; txns.len()];
    let mut out = Vec::with_capacity(wanted.len());
    for &t in wanted {
        let mut stack = vec![t];
        while let Some(&top) = stack.last() {
            if placed[top] {
                stack.pop();
                continue;
            }
            let unplaced: Vec<usize> = parents(&txns[top])
                .into_iter()
                .filter(|&p| !placed[p])
                .collect();
            if unplaced.is_empty() {
                placed[top] = true;
                out.push(top);
                stack.pop();
            } else {
                stack.extend(unplaced);
            }
        }
    }
    out
}
