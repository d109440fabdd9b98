//! CRDT documents across real `chorus serve` processes: three leaders increment one
//! counter and edit one set at the same time (one of them killed with SIGKILL and
//! restarted in between) and all end with the exact totals; a bounded counter spent
//! concurrently on three leaders stops exactly at zero; bad operations are refused
//! with a clear status and change nothing.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn ops(url: &str, key: &str, body: &Value) -> Reply {
    call(
        "POST",
        &format!("{url}/v1/docs/carts/{key}/ops"),
        Some(body.to_string().as_bytes()),
        &[],
    )
}

fn value(url: &str, key: &str) -> Value {
    get(&format!("{url}/v1/docs/carts/{key}")).body["value"].clone()
}

/// Sets collection `carts` to policy crdt on node 0 and waits until every node has
/// the setting.
fn crdt_collection(cluster: &Cluster, count: usize) {
    let reply = put(
        &format!("{}/v1/collections/carts", cluster.url(0)),
        r#"{"policy":"crdt"}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    wait_until("every node to have the crdt setting", DEADLINE, || {
        (0..count).all(|i| {
            get(&format!("{}/v1/collections/carts", cluster.url(i))).body["policy"] == "crdt"
        })
    });
}

/// Each leader makes `writes` writes to cart `c1`: an increment of the shared
/// counter by a different amount each time, an add of its own element, and every
/// third time a remove of the element it added two writes before. Returns the sum
/// of the increments and the elements that must remain.
fn write_concurrently(cluster: &Cluster, phase: usize, writes: usize) -> (i64, BTreeSet<String>) {
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let handles: Vec<_> = urls
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            std::thread::spawn(move || {
                let (mut sum, mut kept) = (0i64, BTreeSet::new());
                for j in 0..writes {
                    let by = (i * 7 + j % 5 + 1) as i64;
                    let element = format!("p{phase}-n{i}-{j}");
                    let mut body = vec![
                        json!({"op": "counter.add", "path": "/count", "by": by}),
                        json!({"op": "set.add", "path": "/items", "value": element}),
                    ];
                    kept.insert(element);
                    if j % 3 == 2 {
                        let old = format!("p{phase}-n{i}-{}", j - 2);
                        body.push(json!({"op": "set.remove", "path": "/items", "value": old}));
                        kept.remove(&old);
                    }
                    let reply = ops(&url, "c1", &Value::Array(body));
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    sum += by;
                }
                (sum, kept)
            })
        })
        .collect();
    handles
        .into_iter()
        .fold((0, BTreeSet::new()), |(sum, mut kept), h| {
            let (s, k) = h.join().unwrap();
            kept.extend(k);
            (sum + s, kept)
        })
}

/// Three leaders count and edit one set concurrently, a SIGKILL and restart in
/// between; every node ends with exactly the sum of the increments and exactly the
/// elements not removed.
#[test]
fn three_leaders_count_and_edit_one_set() {
    let mut cluster = Cluster::start(3, "topology = \"mesh\"");
    crdt_collection(&cluster, 3);
    let (sum1, mut kept) = write_concurrently(&cluster, 1, 40);
    cluster.nodes[2].kill();
    cluster.restart(2);
    let (sum2, kept2) = write_concurrently(&cluster, 2, 40);
    kept.extend(kept2);
    cluster.wait_converged(DEADLINE);
    for i in 0..3 {
        let doc = value(&cluster.url(i), "c1");
        assert_eq!(doc["count"], json!(sum1 + sum2), "node {i}: {doc}");
        let items: BTreeSet<String> = doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(items, kept, "node {i}");
    }
}

/// A bounded counter of 30 whose rights are split over three leaders, decremented
/// by all three at once until each is refused: exactly 30 decrements succeed, and
/// every node ends at 0, never below.
#[test]
fn bounded_counter_stops_at_zero_under_concurrent_spending() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    crdt_collection(&cluster, 3);
    let url0 = cluster.url(0);
    let reply = ops(
        &url0,
        "stock",
        &json!([{"op": "bounded.add", "path": "/left", "by": 30}]),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    for to in ["n1", "n2"] {
        let transfer = json!([{"op": "bounded.transfer", "path": "/left", "to": to, "by": 10}]);
        let reply = ops(&url0, "stock", &transfer);
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    cluster.wait_converged(DEADLINE);
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let url = cluster.url(i);
            std::thread::spawn(move || {
                let mut spent = 0;
                loop {
                    let reply = ops(
                        &url,
                        "stock",
                        &json!([{"op": "bounded.add", "path": "/left", "by": -1}]),
                    );
                    match reply.status {
                        200 => spent += 1,
                        409 => {
                            assert_eq!(
                                reply.body["error"], "insufficient_rights",
                                "{}",
                                reply.text
                            );
                            return spent;
                        }
                        other => panic!("{other}: {}", reply.text),
                    }
                }
            })
        })
        .collect();
    let spent: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(spent, 30);
    cluster.wait_converged(DEADLINE);
    for i in 0..3 {
        assert_eq!(
            value(&cluster.url(i), "stock"),
            json!({"left": 0}),
            "node {i}"
        );
    }
}

/// Goal: a counter is never silently wrong across leaders. Method: two leaders,
/// partitioned, each add 2^63-1 to one counter (each add is fine where it is made);
/// once the partition is lifted both read the exact sum 2^64-2, and a further add
/// on either is refused with 400 `overflow`, changing nothing.
#[test]
fn concurrent_adds_past_i64_read_exactly_and_further_adds_are_refused() {
    let partitioned =
        "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true\n";
    let mut cluster = Cluster::start(2, partitioned);
    let setting = r#"{"policy":"crdt"}"#;
    for i in 0..2 {
        let reply = put(&format!("{}/v1/collections/carts", cluster.url(i)), setting);
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let add = |by: i64| json!([{"op": "counter.add", "path": "/n", "by": by}]);
    for i in 0..2 {
        let reply = ops(&cluster.url(i), "big", &add(i64::MAX));
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    cluster.reconfigure("topology = \"mesh\"\n", &[0, 1]);
    cluster.wait_converged(DEADLINE);
    let before = digest(&cluster.url(0));
    for i in 0..2 {
        assert_eq!(value(&cluster.url(i), "big"), json!({"n": u64::MAX - 1}));
        let refused = ops(&cluster.url(i), "big", &add(1));
        assert_eq!(refused.status, 400, "{}", refused.text);
        assert_eq!(refused.body["error"], "overflow");
    }
    assert_eq!(digest(&cluster.url(0)), before);
}

/// Malformed or refused operations answer 400 (or 409 for missing rights) with a
/// reason, and change nothing.
#[test]
fn bad_operations_change_nothing() {
    let cluster = Cluster::start(1, "topology = \"mesh\"");
    crdt_collection(&cluster, 1);
    let url = cluster.url(0);
    let setup = json!([
        {"op": "counter.add", "path": "/count", "by": 1},
        {"op": "bounded.add", "path": "/left", "by": 1}
    ]);
    assert_eq!(ops(&url, "c1", &setup).status, 200);
    let before = digest(&url);
    let refused = [
        (
            json!([{"op": "set.add", "path": "/count", "value": 1}]),
            400,
            "type_mismatch",
        ),
        (
            json!([{"op": "counter.add", "path": "/count/x", "by": 1}]),
            400,
            "type_mismatch",
        ),
        (
            json!([{"op": "counter.add", "path": "count", "by": 1}]),
            400,
            "bad_request",
        ),
        (
            json!([{"op": "counter.add", "path": "/", "by": 1}]),
            400,
            "bad_request",
        ),
        (
            json!([{"op": "counter.bump", "path": "/count", "by": 1}]),
            400,
            "bad_request",
        ),
        (
            json!([{"op": "counter.add", "path": "/count"}]),
            400,
            "bad_request",
        ),
        (json!({"op": "counter.add"}), 400, "bad_request"),
        (json!([]), 400, "bad_request"),
        (
            json!([{"op": "counter.add", "path": "/count", "by": 1},
                   {"op": "bounded.add", "path": "/left", "by": -2}]),
            409,
            "insufficient_rights",
        ),
        (
            json!([{"op": "map.remove", "path": "/left"}]),
            400,
            "bounded_not_removable",
        ),
        (
            json!([{"op": "bounded.transfer", "path": "/left", "to": "nobody", "by": 1}]),
            400,
            "bad_request",
        ),
    ];
    for (body, status, code) in refused {
        let reply = ops(&url, "c1", &body);
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (status, Some(code)),
            "{body}: {}",
            reply.text
        );
        assert!(!reply.body["message"].as_str().unwrap().is_empty());
    }
    // A refusal for lack of rights names the nodes that hold some.
    let short = ops(
        &url,
        "c1",
        &json!([{"op": "bounded.add", "path": "/left", "by": -2}]),
    );
    assert!(
        short.body["message"].as_str().unwrap().contains("(n0: 1)"),
        "{}",
        short.text
    );
    let malformed = call(
        "POST",
        &format!("{url}/v1/docs/carts/c1/ops"),
        Some(b"[{\"op\":"),
        &[],
    );
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    let plain = put(&format!("{url}/v1/docs/carts/c1"), r#"{"count": 5}"#);
    assert_eq!(plain.status, 400, "{}", plain.text);
    let elsewhere = call(
        "POST",
        &format!("{url}/v1/docs/plain/c1/ops"),
        Some(br#"[{"op": "counter.add", "path": "/n", "by": 1}]"#),
        &[],
    );
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.text);
    assert!(
        elsewhere.body["message"]
            .as_str()
            .unwrap()
            .contains("policy crdt")
    );
    assert_eq!(digest(&url), before);
    assert_eq!(value(&url, "c1"), json!({"count": 1, "left": 1}));
    let metrics = get(&format!("{url}/metrics")).text;
    for line in [
        "chorus_crdt_operations_total{collection=\"carts\"} 2",
        "chorus_crdt_refused_total{reason=\"type_mismatch\"} 2",
        "chorus_crdt_refused_total{reason=\"insufficient_rights\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
