//! Multi-leader replication with real `chorus serve` processes on loopback: leaders
//! written concurrently converge (siblings and lww), a node killed with SIGKILL or
//! frozen with SIGSTOP under load catches up with nothing lost, and ring and star
//! topologies relay. Every wait is on a condition with a deadline.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const CONVERGE: Duration = Duration::from_secs(60);

/// Writes `count` blind writes from one thread per node, to keys shared by all.
fn concurrent_blind_writes(
    cluster: &Cluster,
    collection: &str,
    count: usize,
) -> Vec<(String, Value)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for (i, node) in cluster.nodes.iter().enumerate() {
            let (url, acked) = (node.url.clone(), Arc::clone(&acked));
            s.spawn(move || {
                for n in 0..count {
                    let key = format!("k{}", n % 10);
                    let value = json!({"node": i, "n": n});
                    let reply = put(
                        &format!("{url}/v1/docs/{collection}/{key}"),
                        &value.to_string(),
                    );
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    acked.lock().unwrap().push((key, value));
                }
            });
        }
    });
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

/// Three leaders written concurrently keep every blind write as a sibling, on every
/// node, and reach equal digests and conflict logs.
#[test]
fn three_leaders_converge_with_siblings() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    let acked = concurrent_blind_writes(&cluster, "s", 60);
    cluster.wait_converged(CONVERGE);
    for i in 0..3 {
        for (key, value) in &acked {
            assert!(
                versions(&cluster.url(i), "s", key).contains(value),
                "node {i} lacks {key}={value}"
            );
        }
    }
    let logs: Vec<Value> = (0..3)
        .map(|i| get(&format!("{}/v1/conflicts?limit=1000", cluster.url(i))).body)
        .collect();
    assert!(!logs[0]["conflicts"].as_array().unwrap().is_empty());
    assert!(logs.iter().all(|l| *l == logs[0]), "conflict logs differ");
    // `chorus status` over every node at once: a row per peer, all connected.
    let urls = (0..3).map(|i| cluster.url(i)).collect::<Vec<_>>().join(",");
    let table = std::process::Command::new(CHORUS)
        .args(["status", "--url", &urls])
        .output()
        .unwrap();
    assert!(table.status.success(), "{table:?}");
    let text = String::from_utf8(table.stdout).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "two peers for each of three nodes:\n{text}");
    assert!(rows.iter().all(|r| r.contains(" yes ")), "{text}");
}

/// Under lww every node shows the same winner per key, and every overwritten write
/// is in the conflict log of every node.
#[test]
fn three_leaders_converge_with_lww() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    assert_eq!(
        put(
            &format!("{}/v1/collections/l", cluster.url(0)),
            r#"{"policy":"lww"}"#
        )
        .status,
        200
    );
    wait_until("settings to replicate", CONVERGE, || {
        (0..3).all(|i| get(&format!("{}/v1/collections/l", cluster.url(i))).body["policy"] == "lww")
    });
    let acked = concurrent_blind_writes(&cluster, "l", 60);
    cluster.wait_converged(CONVERGE);
    for i in 0..3 {
        let log = get(&format!("{}/v1/conflicts?limit=1000", cluster.url(i))).body;
        let logged: BTreeSet<String> = log["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["value"].to_string())
            })
            .collect();
        for (key, value) in &acked {
            let doc = get(&format!("{}/v1/docs/l/{key}", cluster.url(i))).body;
            assert_eq!(doc["conflict"], false);
            assert!(
                doc["value"] == *value || logged.contains(&value.to_string()),
                "node {i} lost {key}={value}"
            );
        }
    }
}

/// Writes unique keys to `targets` until stopped; returns the acknowledged ones.
fn background_writers(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, String)>>> {
    urls.into_iter()
        .enumerate()
        .map(|(w, url)| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    let value = format!("{{\"w\":{w},\"i\":{i}}}");
                    let url = format!("{url}/v1/docs/load/{key}");
                    // A write to a killed node fails: it was never acknowledged.
                    let reply = request("PUT", &url, Some(value.as_bytes()), &[]);
                    if reply.is_ok_and(|r| r.status == 200) {
                        acked.push((key, value));
                    }
                }
                acked
            })
        })
        .collect()
}

fn all_present(cluster: &Cluster, acked: &[(String, String)]) {
    for i in 0..cluster.nodes.len() {
        for (key, value) in acked {
            let reply = get(&format!("{}/v1/docs/load/{key}", cluster.url(i)));
            assert_eq!(reply.status, 200, "node {i} lacks acknowledged write {key}");
            assert_eq!(
                reply.body["value"],
                serde_json::from_str::<Value>(value).unwrap()
            );
        }
    }
}

/// A node killed with SIGKILL under load restarts, catches up, and no write any
/// node acknowledged (the killed one included) is missing anywhere.
#[test]
fn killed_node_catches_up_without_loss() {
    let mut cluster = Cluster::start(3, "topology = \"mesh\"");
    cluster.wait_converged(CONVERGE);
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let writers = background_writers(urls.clone(), Arc::clone(&stop));
    wait_until("load on the victim", CONVERGE, || {
        get(&format!("{}/v1/status", urls[2])).body["last_seq"]
            .as_u64()
            .unwrap()
            > 200
    });
    cluster.nodes[2].kill();
    wait_until("writes while the victim is down", CONVERGE, || {
        get(&format!("{}/v1/status", urls[0])).body["last_seq"]
            .as_u64()
            .unwrap()
            > 800
    });
    cluster.restart(2);
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, String)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    cluster.wait_converged(CONVERGE);
    all_present(&cluster, &acked);
}

/// A node frozen with SIGSTOP (its links hang, then time out) catches up after
/// SIGCONT, while the others kept accepting writes.
#[test]
fn frozen_node_catches_up() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    cluster.wait_converged(CONVERGE);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = background_writers(vec![cluster.url(0), cluster.url(1)], Arc::clone(&stop));
    signal(&cluster.nodes[2].child, "STOP");
    let frozen_at = get(&format!("{}/v1/status", cluster.url(0))).body["last_seq"]
        .as_u64()
        .unwrap();
    wait_until("writes while the node is frozen", CONVERGE, || {
        get(&format!("{}/v1/status", cluster.url(0))).body["last_seq"]
            .as_u64()
            .unwrap()
            > frozen_at + 300
    });
    wait_until("peers to notice the frozen node", CONVERGE, || {
        let status = get(&format!("{}/v1/status", cluster.url(0))).body;
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "n2" && p["connected"] == false)
    });
    signal(&cluster.nodes[2].child, "CONT");
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, String)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(!acked.is_empty());
    cluster.wait_converged(CONVERGE);
    all_present(&cluster, &acked);
}

/// Five nodes in a ring, and five in a star, relay every node's writes to all.
#[test]
fn ring_and_star_of_five_converge() {
    for topology in ["topology = \"ring\"", "topology = \"star\"\nhub = \"n2\""] {
        let cluster = Cluster::start(5, topology);
        for i in 0..5 {
            for n in 0..20 {
                put(
                    &format!("{}/v1/docs/t/n{i}-{n}", cluster.url(i)),
                    &n.to_string(),
                );
            }
        }
        cluster.wait_converged(CONVERGE);
        for i in 0..5 {
            let keys =
                get(&format!("{}/v1/docs/t?limit=1000", cluster.url(i))).body["keys"].clone();
            assert_eq!(
                keys.as_array().unwrap().len(),
                100,
                "{topology}: node {i} has {keys}"
            );
        }
        // Origins relayed over several hops display by name.
        let doc = get(&format!("{}/v1/docs/t/n0-0", cluster.url(3))).body;
        assert_eq!(doc["versions"][0]["origin"], "n0", "{topology}");
    }
}

/// A node that lost its disk comes back under the same name with a new identity and
/// receives everything again (cursors are kept per node id, not per name).
#[test]
fn node_with_a_wiped_disk_is_refilled() {
    let mut cluster = Cluster::start(3, "topology = \"mesh\"");
    for i in 0..3 {
        for n in 0..30 {
            put(
                &format!("{}/v1/docs/load/n{i}-{n}", cluster.url(i)),
                &format!("{{\"n\":{n}}}"),
            );
        }
    }
    cluster.wait_converged(CONVERGE);
    let old_id = get(&format!("{}/v1/status", cluster.url(2))).body["node_id"].clone();
    cluster.nodes[2].kill();
    std::fs::remove_dir_all(&cluster.nodes[2].data).unwrap();
    put(
        &format!("{}/v1/docs/load/after", cluster.url(0)),
        "{\"n\":0}",
    );
    cluster.restart(2);
    assert_ne!(
        get(&format!("{}/v1/status", cluster.url(2))).body["node_id"],
        old_id
    );
    cluster.wait_converged(CONVERGE);
    let keys = get(&format!("{}/v1/docs/load?limit=1000", cluster.url(2))).body["keys"].clone();
    assert_eq!(keys.as_array().unwrap().len(), 91, "{keys}");
}
