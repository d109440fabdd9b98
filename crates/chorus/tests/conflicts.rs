//! The conflict log as a tool, with real `chorus serve` processes: list, inspect side
//! by side, resolve (a new value, or a version picked), restore an lww loser, the
//! log's retention, the counts per collection and policy, the CLI, and bad requests
//! that change nothing.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

const DEADLINE: Duration = Duration::from_secs(60);

/// Two blind writes of `key` on one node: two concurrent versions, one conflict
/// record. Returns the record.
fn conflict_on(url: &str, collection: &str, key: &str) -> Value {
    for value in [json!({"v": "first"}), json!({"v": "second"})] {
        let reply = put(
            &format!("{url}/v1/docs/{collection}/{key}"),
            &value.to_string(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let log = get(&format!("{url}/v1/conflicts")).body;
    log["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|c| c["collection"] == collection && c["key"] == key)
        .unwrap_or_else(|| panic!("no conflict for {collection}/{key} in {log}"))
        .clone()
}

fn resolve(url: &str, id: &str, body: &Value) -> Reply {
    call(
        "POST",
        &format!("{url}/v1/conflicts/{id}/resolve"),
        Some(body.to_string().as_bytes()),
        &[],
    )
}

/// Siblings: a record is shown beside the document; picking a version ends the
/// conflict with exactly that value; a new value does the same. Bad requests are
/// refused with a reason and change nothing.
#[test]
fn siblings_are_inspected_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[]);
    let url = &node.url;
    let record = conflict_on(url, "s", "k");
    let id = record["id"].as_str().unwrap();
    assert_eq!(record["outcome"], "siblings");
    assert_eq!(record["resolved"], false);

    let shown = get(&format!("{url}/v1/conflicts/{id}")).body;
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
    assert_eq!(shown["current"]["conflict"], true);

    let before = digest(url);
    let second_dot = record["versions"][1]["dot"].as_str().unwrap();
    for (body, status) in [
        (json!({}), 400),
        (json!({"value": 1, "pick": second_dot}), 400),
        (json!({"pick": "nonsense"}), 400),
        (json!({"pick": "00000000000000ab:1"}), 400),
        (json!({"colour": "red"}), 400),
    ] {
        let reply = resolve(url, id, &body);
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
    }
    let reply = call(
        "POST",
        &format!("{url}/v1/conflicts/{id}/resolve"),
        Some(b"{not json"),
        &[],
    );
    assert_eq!(reply.body["error"], "invalid_json");
    assert_eq!(
        resolve(url, &"0".repeat(32), &json!({"value": 1})).status,
        404
    );
    assert_eq!(get(&format!("{url}/v1/conflicts/xyz")).status, 400);
    assert_eq!(digest(url), before, "refused requests changed nothing");

    let picked = record["versions"][1]["value"].clone();
    let reply = resolve(url, id, &json!({"pick": second_dot}));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.body["context"].is_string());
    assert_eq!(versions(url, "s", "k"), [picked]);
    // The log shows it resolved; resolving it again says so and changes nothing.
    assert_eq!(
        get(&format!("{url}/v1/conflicts/{id}")).body["resolved"],
        true
    );
    let after = digest(url);
    let again = resolve(url, id, &json!({"value": 3}));
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.body["error"], "already_resolved");
    assert_eq!(digest(url), after);

    let record = conflict_on(url, "s", "k2");
    let id = record["id"].as_str().unwrap();
    let reply = resolve(url, id, &json!({"value": {"v": "merged by hand"}}));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(versions(url, "s", "k2"), [json!({"v": "merged by hand"})]);

    let status = get(&format!("{url}/v1/status")).body;
    assert_eq!(
        status["conflicts"],
        json!([{"collection": "s", "policy": "siblings", "count": 2}])
    );
    let metrics = get(&format!("{url}/metrics")).text;
    assert!(
        metrics.contains("chorus_conflicts_total{collection=\"s\",policy=\"siblings\"} 2"),
        "{metrics}"
    );
}

/// Under lww the record names the winner and keeps the loser, with who wrote it and
/// when; picking the loser restores it. The CLI does the same.
#[test]
fn an_lww_loser_is_restored_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[]);
    let url = &node.url;
    set_policy(url, "l", "lww");
    let record = conflict_on(url, "l", "k");
    assert_eq!(record["outcome"], "winner");
    let loser = record["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["dot"] != record["winner"])
        .unwrap()
        .clone();
    assert_eq!(loser["value"], json!({"v": "first"}));
    assert!(loser["origin"].is_string() && loser["hlc"]["wall_ms"].is_u64());
    assert_eq!(
        get(&format!("{url}/v1/docs/l/k")).body["value"],
        json!({"v": "second"})
    );

    let id = record["id"].as_str().unwrap();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(CHORUS)
            .args(args)
            .args(["--url", url])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    assert_eq!(cli(&["conflicts", "show", id])["id"], id);
    cli(&[
        "conflicts",
        "resolve",
        id,
        "--pick",
        loser["dot"].as_str().unwrap(),
    ]);
    assert_eq!(
        get(&format!("{url}/v1/docs/l/k")).body["value"],
        json!({"v": "first"}),
        "the lost value is back"
    );
}

/// Records older than the retention are removed from the log.
#[test]
fn conflict_records_go_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &["--conflict-retention-s", "1"]);
    let url = &node.url;
    conflict_on(url, "s", "k");
    wait_until("the record to be pruned", DEADLINE, || {
        get(&format!("{url}/v1/conflicts")).body["conflicts"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    // The document itself is untouched: both versions stay until resolved.
    assert_eq!(versions(url, "s", "k").len(), 2);
}

/// A conflict made by concurrent writes on two leaders (partitioned from each other
/// while they write) has one record with one id on both; resolving it on either ends
/// it everywhere.
#[test]
fn a_resolution_replicates() {
    let mut cluster = Cluster::start(
        2,
        "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true",
    );
    let (a, b) = (cluster.url(0), cluster.url(1));
    for (url, v) in [(&a, "from a"), (&b, "from b")] {
        let reply = put(&format!("{url}/v1/docs/r/k"), &json!({"v": v}).to_string());
        assert_eq!(reply.status, 200);
    }
    cluster.reconfigure("topology = \"mesh\"\n", &[0, 1]);
    cluster.wait_converged(DEADLINE);
    let ids = |url: &str| -> Vec<Value> {
        get(&format!("{url}/v1/conflicts")).body["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect()
    };
    let on_a = ids(&a);
    assert_eq!(on_a.len(), 1, "one record");
    assert_eq!(on_a, ids(&b), "the same record on both");
    let id = on_a[0].as_str().unwrap();
    let reply = resolve(&b, id, &json!({"value": {"v": "agreed"}}));
    assert_eq!(reply.status, 200, "{}", reply.text);
    cluster.wait_converged(DEADLINE);
    for url in [&a, &b] {
        assert_eq!(versions(url, "r", "k"), [json!({"v": "agreed"})]);
    }
}

/// merge: two leaders, partitioned from each other, edit one document with plain
/// whole-document PUTs based on the same read; once the partition heals both read
/// the same field-level merge: fields changed on one side only keep that change, a
/// `sum-of-deltas` field adds both changes, a `union` field unites both. The record
/// says `merged`. A document that is not an object is refused.
#[test]
fn merge_combines_fields_changed_on_different_leaders() {
    let mut cluster = Cluster::start(
        2,
        "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true",
    );
    let (a, b) = (cluster.url(0), cluster.url(1));
    let settings = json!({
        "policy": "merge",
        "merge": {"default": "lww", "fields": {"likes": "sum-of-deltas", "tags": "union"}}
    });
    for url in [&a, &b] {
        let reply = call(
            "PUT",
            &format!("{url}/v1/collections/m"),
            Some(settings.to_string().as_bytes()),
            &[],
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let start = json!({"title": "Draft", "body": "text", "likes": 10, "tags": ["a"]});
    let reply = put(&format!("{a}/v1/docs/m/post"), &start.to_string());
    assert_eq!(reply.status, 200);
    let context = reply.body["context"].as_str().unwrap().to_owned();
    // b gets the same starting document (and context) by a write with a's context
    // carried over: the client moved.
    let reply = put_with_context(&format!("{b}/v1/docs/m/post"), &start.to_string(), &context);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let b_context = reply.body["context"].as_str().unwrap().to_owned();

    let on_a = json!({"title": "Final", "body": "text", "likes": 12, "tags": ["a", "x"]});
    let on_b = json!({"title": "Draft", "body": "better text", "likes": 11, "tags": ["a", "y"]});
    assert_eq!(
        put_with_context(&format!("{a}/v1/docs/m/post"), &on_a.to_string(), &context).status,
        200
    );
    assert_eq!(
        put_with_context(
            &format!("{b}/v1/docs/m/post"),
            &on_b.to_string(),
            &b_context
        )
        .status,
        200
    );
    let refused = put(&format!("{a}/v1/docs/m/other"), "[1, 2]");
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("JSON objects"), "{}", refused.text);

    cluster.reconfigure("topology = \"mesh\"\n", &[0, 1]);
    cluster.wait_converged(DEADLINE);
    for url in [&a, &b] {
        let doc = get(&format!("{url}/v1/docs/m/post")).body;
        assert_eq!(doc["conflict"], false, "{doc}");
        let value = &doc["value"];
        assert_eq!(value["title"], "Final", "{doc}");
        assert_eq!(value["body"], "better text", "{doc}");
        assert_eq!(value["likes"], 13, "10 + 2 + 1: {doc}");
        let mut tags: Vec<&str> = value["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        tags.sort();
        assert_eq!(tags, ["a", "x", "y"], "{doc}");
    }
    let log = get(&format!("{a}/v1/conflicts")).body;
    assert!(
        log["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["key"] == "post" && c["outcome"] == "merged"),
        "{log}"
    );
}

/// custom: a Rhai script in the collection's settings merges concurrent versions on
/// every leader alike (it sees their common ancestor); a script that loops leaves the
/// conflict and says why; a script that does not compile is refused.
#[test]
fn a_custom_script_merges_on_every_leader() {
    let mut cluster = Cluster::start(2, "topology = \"mesh\"");
    let (a, b) = (cluster.url(0), cluster.url(1));
    let script = r#"
        fn merge(versions, ancestor) {
            let out = #{ visits: ancestor.visits, pages: [] };
            for v in versions {
                out.visits += v.visits - ancestor.visits;
                out.pages += v.pages;
            }
            out
        }
    "#;
    let settings = |script: &str| json!({"policy": "custom", "script": script}).to_string();
    for (collection, text) in [("c", script), ("loops", "fn merge(v, a) { loop {} }")] {
        for url in [&a, &b] {
            let reply = call(
                "PUT",
                &format!("{url}/v1/collections/{collection}"),
                Some(settings(text).as_bytes()),
                &[],
            );
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    let bad = call(
        "PUT",
        &format!("{a}/v1/collections/bad"),
        Some(settings("fn merge(v, a) {").as_bytes()),
        &[],
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("does not compile"), "{}", bad.text);

    let start = json!({"visits": 5, "pages": ["/"]});
    for collection in ["c", "loops"] {
        put(&format!("{a}/v1/docs/{collection}/k"), &start.to_string());
    }
    cluster.wait_converged(DEADLINE);
    // Both leaders edit the same read while partitioned from each other.
    cluster.reconfigure(
        "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true\n",
        &[0, 1],
    );
    for collection in ["c", "loops"] {
        let read = get(&format!("{a}/v1/docs/{collection}/k")).body;
        let context = read["context"].as_str().unwrap();
        let on_a = json!({"visits": 7, "pages": ["/", "/a"]});
        let on_b = json!({"visits": 6, "pages": ["/", "/b"]});
        for (url, doc) in [(&a, on_a), (&b, on_b)] {
            let reply = put_with_context(
                &format!("{url}/v1/docs/{collection}/k"),
                &doc.to_string(),
                context,
            );
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    cluster.reconfigure("topology = \"mesh\"\n", &[0, 1]);
    cluster.wait_converged(DEADLINE);
    for url in [&a, &b] {
        let doc = get(&format!("{url}/v1/docs/c/k")).body;
        assert_eq!(doc["conflict"], false, "{doc}");
        assert_eq!(doc["value"]["visits"], 8, "5 + 2 + 1: {doc}");
        assert_eq!(doc["value"]["pages"].as_array().unwrap().len(), 4, "{doc}");
        let looping = get(&format!("{url}/v1/docs/loops/k")).body;
        assert_eq!(looping["conflict"], true, "{looping}");
        assert!(looping.get("value").is_none(), "{looping}");
        assert!(
            looping["merge_error"]
                .as_str()
                .unwrap()
                .contains("Too many operations"),
            "{looping}"
        );
    }
}

/// home: writes to a collection with `home` go to each document's home leader
/// wherever they are sent, so writes never meet concurrently on two leaders; when the home is
/// killed, every node fails over to the same next one; a forwarded write is never
/// forwarded again.
#[test]
fn writes_go_to_the_home_leader_and_fail_over() {
    let mut cluster = Cluster::start(3, "topology = \"mesh\"");
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let settings = json!({"policy": "lww", "home": {"by": "key"}});
    let reply = call(
        "PUT",
        &format!("{}/v1/collections/h", urls[0]),
        Some(settings.to_string().as_bytes()),
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    cluster.wait_converged(DEADLINE);

    // Every node sends a write of the same key: all land at one node, one after the
    // other (no conflict), whichever node they were sent to.
    let origin = |url: &str, key: &str| -> Vec<String> {
        get(&format!("{url}/v1/docs/h/{key}")).body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["origin"].as_str().unwrap().to_owned())
            .collect()
    };
    for (i, url) in urls.iter().enumerate() {
        let reply = put(
            &format!("{url}/v1/docs/h/doc"),
            &json!({"from": i}).to_string(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    cluster.wait_converged(DEADLINE);
    let home = origin(&urls[0], "doc");
    assert_eq!(home.len(), 1);
    let home = home[0].clone();
    // Blind lww writes at one node replace each other there (the overwritten values
    // are logged); none was ever concurrent across leaders.
    let conflicts = get(&format!("{}/v1/conflicts", urls[0])).body;
    for record in conflicts["conflicts"].as_array().unwrap() {
        for version in record["versions"].as_array().unwrap() {
            assert_eq!(version["origin"], home.as_str(), "{conflicts}");
        }
    }

    // The home dies: every node fails over to the same next one.
    let home_index: usize = home[1..].parse().unwrap();
    cluster.nodes[home_index].kill();
    let others: Vec<usize> = (0..3).filter(|i| *i != home_index).collect();
    for &i in &others {
        let reply = put(
            &format!("{}/v1/docs/h/doc", urls[i]),
            &json!({"after": i}).to_string(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    wait_until("the failover writes to replicate", DEADLINE, || {
        others.iter().all(|&i| {
            let o = origin(&urls[i], "doc");
            o.len() == 1 && o[0] != home
        })
    });
    let next = origin(&urls[others[0]], "doc");
    assert_eq!(
        next,
        origin(&urls[others[1]], "doc"),
        "the same next node for all"
    );

    // A forwarded write is taken where it arrives, whatever that node thinks.
    let reply = call(
        "PUT",
        &format!("{}/v1/docs/h/direct", urls[others[0]]),
        Some(b"{\"x\":1}"),
        &[("Chorus-Forwarded-By", "somebody")],
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        origin(&urls[others[0]], "direct"),
        [format!("n{}", others[0])]
    );
    cluster.restart(home_index);
    cluster.wait_converged(DEADLINE);
}

/// Lease locks: taken at the document's home leader wherever asked; a second owner
/// waits, told who holds it and until when but nothing it could write with (a token
/// pieced together from that is refused, and the document is unchanged); writes with
/// the live token pass; a lease that expires while held lets another owner in with a
/// larger fencing number, and the first owner's token is refused from then on; bad
/// requests say what is wrong.
#[test]
fn leases_fence_writes() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let lock = |i: usize, body: Value| {
        call(
            "POST",
            &format!("{}/v1/locks/acc/k", urls[i]),
            Some(body.to_string().as_bytes()),
            &[],
        )
    };
    let write = |i: usize, token: &str| {
        call(
            "PUT",
            &format!("{}/v1/docs/acc/k", urls[i]),
            Some(b"{\"balance\": 1}"),
            &[("Chorus-Lock-Token", token)],
        )
    };
    // Long enough to outlast the checks below on a loaded machine (a 1.5 s lease
    // once ran out before them in CI); the test then waits for it to run out.
    let alice_ttl_ms = 5000;
    let alice = lock(0, json!({"owner": "alice", "ttl_ms": alice_ttl_ms}));
    assert_eq!(alice.status, 200, "{}", alice.text);
    let first = alice.body["token"].as_str().unwrap().to_owned();
    let bob = lock(1, json!({"owner": "bob"}));
    assert_eq!(bob.status, 409, "{}", bob.text);
    assert_eq!(bob.body["error"], "locked");
    assert_eq!(bob.body["owner"], "alice");
    let secret = first.split_once('.').unwrap().1;
    assert!(bob.body.get("token").is_none() && !bob.text.contains(secret));
    let shown = get(&format!("{}/v1/locks/acc/k", urls[1])).body;
    assert!(shown.get("token").is_none() && !shown.to_string().contains(secret));
    let before = digest(&urls[0]);
    // Everything bob was told, as a token: the fencing number the expiry and the
    // default length give, with any secret.
    let fencing = bob.body["expires_ms"].as_u64().unwrap() - alice_ttl_ms;
    for guess in [fencing, shown["fencing"].as_u64().unwrap()] {
        let forged = write(1, &format!("{guess}.{}", "0".repeat(32)));
        assert_eq!(forged.status, 409, "{}", forged.text);
        assert_eq!(forged.body["error"], "stale_token");
    }
    assert_eq!(digest(&urls[0]), before);

    assert_eq!(write(2, &first).status, 200);

    // Alice's lease runs out while she still holds it; Bob gets in.
    let mut second = String::new();
    wait_until("alice's lease to expire", DEADLINE, || {
        let bob = lock(1, json!({"owner": "bob", "ttl_ms": 60000}));
        if bob.status == 200 {
            second = bob.body["token"].as_str().unwrap().to_owned();
        }
        bob.status == 200
    });
    let fencing = |token: &str| token.split('.').next().unwrap().parse::<u64>().unwrap();
    assert!(fencing(&second) > fencing(&first));
    assert_eq!(write(0, &first).status, 409, "alice's token is stale now");
    assert_eq!(write(0, &second).status, 200);

    for (reply, code) in [
        (lock(0, json!({"ttl_ms": 0})), "bad_request"),
        (lock(0, json!({"colour": "red"})), "invalid_json"),
        (write(0, "not a number"), "bad_request"),
        (
            call("DELETE", &format!("{}/v1/locks/acc/k", urls[0]), None, &[]),
            "bad_request",
        ),
    ] {
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.body["error"], code, "{}", reply.text);
    }
    let release = call(
        "DELETE",
        &format!("{}/v1/locks/acc/k", urls[2]),
        None,
        &[("Chorus-Lock-Token", &second)],
    );
    assert_eq!(release.status, 200, "{}", release.text);
    assert_eq!(lock(2, json!({"owner": "carol"})).status, 200);
    cluster.wait_converged(DEADLINE);
}
