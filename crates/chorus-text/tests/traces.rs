//! Real editing traces (`tests/traces/`, with their attribution): each sequential
//! trace replayed as local edits gives exactly its final text; the concurrent trace,
//! each agent typing on its own replica and merging what its transactions' parents
//! hold, ends with its final text on both replicas.

mod support;

use chorus_text::Text;
use serde_json::Value;
use support::{edit, load as trace, parents, patches, play};

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
    let mut played = play(&trace);
    let end = trace["endContent"].as_str().unwrap();
    for (agent, replica) in played.replicas.iter_mut().enumerate() {
        // Agent 0 takes what it lacks in trace order; the others take agent 0's
        // transactions first where causality allows.
        let order: Vec<usize> = if agent == 0 {
            (0..txns.len()).collect()
        } else {
            let mut by_agent: Vec<usize> = (0..txns.len()).collect();
            by_agent.sort_by_key(|&t| (txns[t]["agent"].as_u64() != Some(0), t));
            causal(&by_agent, txns)
        };
        for t in order {
            if !played.applied[agent][t] {
                played.applied[agent][t] = true;
                for op in &played.ops[t] {
                    replica.apply(op).unwrap();
                }
            }
        }
        assert_eq!(replica.to_string(), end, "replica of agent {agent}");
    }
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
