//! Replication of large things between real `chorus serve` processes. Every case
//! here once stalled replication forever: a frame over the old 20 MiB frame limit made
//! the receiver drop the link, and the sender sent the same frame again on reconnect.
//! Now frames are bounded by bytes, and what alone exceeds a frame travels in pieces.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

const DEADLINE: Duration = Duration::from_secs(180);
const MIB: usize = 1024 * 1024;

fn string_of(bytes: usize, fill: char) -> String {
    Value::String(fill.to_string().repeat(bytes)).to_string()
}

/// The collections of every record in a node's conflict log, one record a page
/// (each holds 24 MiB of documents), sorted.
fn conflict_collections(url: &str) -> Vec<String> {
    let mut collections = Vec::new();
    let mut page = get(&format!("{url}/v1/conflicts?limit=1")).body;
    loop {
        for record in page["conflicts"].as_array().unwrap() {
            collections.push(record["collection"].as_str().unwrap().to_owned());
        }
        let Some(next) = page["next"].as_str() else {
            break;
        };
        page = get(&format!("{url}/v1/conflicts?limit=1&after={next}")).body;
    }
    collections.sort();
    collections
}

/// Goal: what ordinary data makes large reaches every node, by the log and by a state
/// transfer. Method: on one node of two, a key gets two 12 MiB siblings, 300
/// documents of 100 KiB are written, and two `lww` keys are each overwritten blind
/// with 12 MiB documents (conflict entries and records of 24 MiB, 48 MiB of conflict
/// log), then one small write; the second node must converge by streaming, and a
/// third node that joins empty by state transfer.
#[test]
fn large_states_entries_and_conflict_logs_replicate() {
    let mut cluster = Cluster::start(2, "topology = \"mesh\"");
    let base = cluster.url(0);
    set_policy(&base, "last", "lww");
    for fill in ['a', 'b'] {
        let reply = put(
            &format!("{base}/v1/docs/big/two"),
            &string_of(12 * MIB, fill),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let hundred_kib = string_of(100 * 1024, 'm');
    for i in 0..300 {
        let reply = put(&format!("{base}/v1/docs/many/k{i:03}"), &hundred_kib);
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    for key in ["l1", "l2"] {
        for fill in ['x', 'y'] {
            let reply = put(
                &format!("{base}/v1/docs/last/{key}"),
                &string_of(12 * MIB, fill),
            );
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    let reply = put(&format!("{base}/v1/docs/small/after"), r#"{"n": 1}"#);
    assert_eq!(reply.status, 200, "{}", reply.text);
    cluster.wait_converged(DEADLINE);

    let newcomer = cluster.join("n2");
    for i in 0..2 {
        let reply = cluster.reload(i);
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    cluster.wait_converged(DEADLINE);
    for i in 0..3 {
        let url = cluster.url(i);
        let two = get(&format!("{url}/v1/docs/big/two")).body;
        assert_eq!(two["versions"].as_array().map(Vec::len), Some(2), "n{i}");
        assert_eq!(
            get(&format!("{url}/v1/docs/small/after")).body["value"],
            json!({"n": 1})
        );
        assert_eq!(get(&format!("{url}/v1/docs/many/k299")).status, 200);
        assert_eq!(conflict_collections(&url), ["big", "last", "last"], "n{i}");
        let status = get(&format!("{url}/v1/status")).body;
        assert!(
            status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["syncing"] == false),
            "n{i}: {status}"
        );
    }
    let metrics = get(&format!("{}/metrics", cluster.url(newcomer))).text;
    assert!(
        metrics.contains("chorus_state_transfers_total"),
        "the newcomer got a state transfer"
    );
}
