//! Device replicas against real `chorus serve` processes: offline writes synced
//! through any node (one of them killed meanwhile), uploads retried without
//! duplicates, in-doubt uploads, and tokens bounding what a device may do.

mod support;

use chorus_device::{Device, Subscription};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

fn open_device(dir: &tempfile::TempDir, i: usize) -> Device {
    Device::open(dir.path().join(format!("device-{i}.redb"))).unwrap()
}

/// Sorted JSON texts of the values of a server read's versions.
fn server_values(read: &Value) -> Vec<String> {
    let mut values: Vec<String> = read["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| !v["value"].is_null())
        .map(|v| v["value"].to_string())
        .collect();
    values.sort();
    values
}

fn device_values(device: &Device, collection: &str, key: &str) -> Vec<String> {
    let mut values: Vec<String> = device
        .get(collection, key)
        .unwrap()
        .map(|d| d.versions.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    values.sort();
    values
}

/// Fifty-one devices write offline (private documents, and shared ones concurrently),
/// then sync through different nodes while one node is killed: every write reaches
/// every node, and after a second sync every device holds what the servers hold,
/// concurrent writes as siblings on both sides.
#[test]
fn offline_devices_sync_through_any_node_and_converge() {
    let mut cluster = Cluster::start(3, "topology = \"mesh\"");
    let dir = tempfile::tempdir().unwrap();
    const DEVICES: usize = 51;
    let devices: Vec<Device> = (0..DEVICES).map(|i| open_device(&dir, i)).collect();
    let subscription = Subscription::collections(["notes"]);
    for (i, device) in devices.iter().enumerate() {
        for j in 0..5 {
            let value = json!({"device": i, "n": j});
            device
                .put("notes", &format!("d{i:02}-{j}"), &value)
                .unwrap();
        }
        device.delete("notes", &format!("d{i:02}-4")).unwrap();
        let shared = format!("shared-{}", i % 3);
        device.put("notes", &shared, &json!({"by": i})).unwrap();
        assert_eq!(device.pending().unwrap(), 6);
    }
    // Node 2 dies: devices that start there move on to the next URL they were given.
    cluster.nodes[2].kill();
    for (i, device) in devices.iter().enumerate() {
        let urls = [cluster.url(i % 3), cluster.url((i + 1) % 3)];
        let report = device
            .sync(&urls, &subscription, &mut |_| {})
            .unwrap_or_else(|e| panic!("device {i}: {e}"));
        assert_eq!(report.taken, 6, "device {i}: {report:?}");
        assert_eq!(device.pending().unwrap(), 0);
    }
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(60));
    for (i, device) in devices.iter().enumerate() {
        let urls = [cluster.url((i + 2) % 3)];
        device.sync(&urls, &subscription, &mut |_| {}).unwrap();
    }

    let server_keys: BTreeSet<String> = (0..3)
        .flat_map(|n| {
            let list = get(&format!("{}/v1/docs/notes?limit=1000", cluster.url(n)));
            list.body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(server_keys.len(), DEVICES * 4 + 3, "{server_keys:?}");
    for n in 0..3 {
        for i in 0..DEVICES {
            let read = get(&format!("{}/v1/docs/notes/d{i:02}-0", cluster.url(n)));
            assert_eq!(read.body["value"], json!({"device": i, "n": 0}), "node {n}");
            let deleted = get(&format!("{}/v1/docs/notes/d{i:02}-4", cluster.url(n)));
            assert_eq!(deleted.status, 404, "node {n}: {}", deleted.text);
        }
        for s in 0..3 {
            let read = get(&format!("{}/v1/docs/notes/shared-{s}", cluster.url(n)));
            assert_eq!(
                server_values(&read.body).len(),
                DEVICES / 3,
                "a third of the devices wrote shared-{s} concurrently: siblings on node {n}"
            );
        }
    }
    let base = cluster.url(0);
    for (i, device) in devices.iter().enumerate() {
        let held: BTreeSet<String> = device.list("notes", "").unwrap().into_iter().collect();
        assert_eq!(held, server_keys, "device {i} holds what the servers hold");
        for key in &server_keys {
            let read = get(&format!("{base}/v1/docs/notes/{key}"));
            assert_eq!(
                device_values(device, "notes", key),
                server_values(&read.body),
                "device {i}, {key}"
            );
        }
    }

    // A device resolves a shared document by writing over what it shows: every
    // node and, after syncing, every device shows the one value.
    devices[0]
        .put("notes", "shared-0", &json!({"by": "resolved"}))
        .unwrap();
    devices[0]
        .sync(&[cluster.url(1)], &subscription, &mut |_| {})
        .unwrap();
    cluster.wait_converged(Duration::from_secs(60));
    for n in 0..3 {
        let read = get(&format!("{}/v1/docs/notes/shared-0", cluster.url(n)));
        assert_eq!(
            read.body["value"],
            json!({"by": "resolved"}),
            "{}",
            read.text
        );
    }
    devices[5]
        .sync(&[cluster.url(2)], &subscription, &mut |_| {})
        .unwrap();
    let shown = devices[5].get("notes", "shared-0").unwrap().unwrap();
    assert_eq!(shown.versions, [json!({"by": "resolved"})]);
}

fn upload(base: &str, body: Value) -> Reply {
    call(
        "POST",
        &format!("{base}/v1/devices/upload/notes"),
        Some(body.to_string().as_bytes()),
        &[],
    )
}

/// An upload whose answer was lost is sent again, to the same node and to another:
/// each write is taken once. While the node it was first sent to may hold it
/// unconfirmed, another node refuses to take it (503 `in_doubt`); bad uploads
/// change nothing.
#[test]
fn an_upload_retried_anywhere_is_taken_once() {
    let cluster = Cluster::start(2, "topology = \"mesh\"");
    let (a, b) = (cluster.url(0), cluster.url(1));
    let device = "00112233445566778899aabbccddeeff";
    let first = json!({"device": device, "writes": [
        {"seq": 1, "key": "k1", "value": {"v": 1}},
        {"seq": 2, "key": "k2", "value": {"v": 2}},
    ]});
    let taken = upload(&a, first.clone());
    assert_eq!(taken.status, 200, "{}", taken.text);
    let dot = taken.body["results"][0]["dot"].clone();
    assert!(dot.is_string(), "{}", taken.text);
    // The answer was lost: the same upload again, to the same node.
    let again = upload(&a, first.clone());
    assert_eq!(
        again.body["results"][0],
        json!({"seq": 1, "taken": "before", "dot": dot})
    );
    assert_eq!(again.body["results"][1]["taken"], "before");

    // To the other node, naming the first as in doubt: once its record arrived,
    // the writes are known taken there.
    cluster.wait_converged(Duration::from_secs(60));
    let mut elsewhere = first.clone();
    elsewhere["in_doubt_at"] = json!(["n0"]);
    let answer = upload(&b, elsewhere);
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["results"][0],
        json!({"seq": 1, "taken": "before", "dot": dot})
    );
    cluster.wait_converged(Duration::from_secs(60));
    for base in [&a, &b] {
        assert_eq!(versions(base, "notes", "k1"), [json!({"v": 1})]);
    }

    // A write n0 never got, said to be in doubt there: n0 is a member that has not
    // confirmed it, so n1 refuses; without the doubt (or naming a node that is not a
    // member) it is taken.
    let digest_before = digest(&b);
    let doubtful = json!({"device": device, "in_doubt_at": ["n0"], "writes": [
        {"seq": 3, "key": "k3", "value": {"v": 3}}]});
    let refused = upload(&b, doubtful);
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.body["error"], "in_doubt");
    assert_eq!(digest(&b), digest_before);
    // A node that is not a member: taken, once n1 has heard what every member holds
    // (none has writes of it that n1 lacks); until then it could not tell.
    let gone = json!({"device": device, "in_doubt_at": ["gone"], "writes": [
        {"seq": 3, "key": "k3", "value": {"v": 3}}]});
    wait_until(
        "n1 to hear from every member",
        Duration::from_secs(60),
        || get(&format!("{b}/")).body["heard_from_all"] == true,
    );
    let taken = upload(&b, gone);
    assert_eq!(taken.body["results"][0]["key"], "k3", "{}", taken.text);

    // What is not an upload is refused whole; a write that cannot be read is refused
    // on its own: nothing changes either way.
    cluster.wait_converged(Duration::from_secs(60));
    let digest_before = digest(&a);
    for bad in [
        json!({"device": "not-hex", "writes": []}),
        json!({"device": device, "writes": [{"seq": 9, "key": "x", "value": {}}, {"seq": 8, "key": "y", "value": {}}]}),
        json!({"device": device, "writes": [], "extra": 1}),
    ] {
        let reply = upload(&a, bad.clone());
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
    }
    for bad in [
        json!({"seq": 10, "key": "x"}),
        json!({"seq": 10, "key": "x", "value": {}, "covers": ["nonsense"]}),
        json!({"seq": 10, "key": "x", "value": {}, "context": "garbage"}),
        json!({"seq": 10, "key": "x", "ops": "not operations"}),
        json!({"seq": 10, "key": "x", "ops": [{"op": "teleport", "path": "/n"}]}),
        json!({"seq": 10, "key": "x", "value": {}, "ops": [{"op": "counter.add", "path": "/n", "by": 1}]}),
    ] {
        let reply = upload(&a, json!({"device": device, "writes": [bad]}));
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.body["results"][0]["error"], "bad_request",
            "{}",
            reply.text
        );
    }
    assert_eq!(digest(&a), digest_before);

    // A write the node does not accept is refused on its own, also when retried; the
    // others of the upload are taken.
    let long = "k".repeat(2000);
    let mixed = json!({"device": device, "writes": [
        {"seq": 20, "key": long, "value": {}},
        {"seq": 21, "key": "k21", "value": {"v": 21}},
    ]});
    for _ in 0..2 {
        let reply = upload(&a, mixed.clone());
        assert_eq!(
            reply.body["results"][0]["error"], "bad_request",
            "{}",
            reply.text
        );
        assert!(
            reply.body["results"][1]["error"].is_null(),
            "{}",
            reply.text
        );
    }
    assert_eq!(versions(&a, "notes", "k21"), [json!({"v": 21})]);

    // At most 10,000 writes an upload, taken whole; one more is refused whole.
    let writes = |n: u64| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"seq": 100 + i, "key": format!("bulk-{i}"), "value": {"i": i}}))
            .collect()
    };
    let other = "ffeeddccbbaa99887766554433221100";
    let over = upload(&a, json!({"device": other, "writes": writes(10_001)}));
    assert_eq!(over.status, 400, "{}", over.text);
    let at = upload(&a, json!({"device": other, "writes": writes(10_000)}));
    assert_eq!(at.status, 200, "{}", at.text);
    let results = at.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().all(|r| r["dot"].is_string()), "all taken");
}

/// A device's token bounds what it may sync: it reads and writes its collection,
/// is refused another, and once revoked can sync no more.
#[test]
fn a_device_syncs_only_what_its_token_allows() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &["--auth"]);
    let admin = call(
        "POST",
        &format!("{}/v1/tokens", node.url),
        Some(br#"{"name": "root", "rights": "admin"}"#),
        &[],
    );
    let admin = format!("Bearer {}", admin.body["token"].as_str().unwrap());
    let phone = call(
        "POST",
        &format!("{}/v1/tokens", node.url),
        Some(br#"{"name": "phone", "rights": "read:notes,write:notes"}"#),
        &[("Authorization", &admin)],
    );
    let token = phone.body["token"].as_str().unwrap().to_owned();
    let device = open_device(&dir, 0);
    device.put("notes", "n1", &json!({"t": 1})).unwrap();
    let urls = [node.url.clone()];
    let notes = Subscription::collections(["notes"]);
    let report = device
        .sync_with(&urls, Some(&token), None, &notes, &mut |_| {})
        .unwrap();
    assert_eq!(report.taken, 1);

    device.put("secrets", "s1", &json!({"t": 1})).unwrap();
    let secrets = Subscription::collections(["secrets"]);
    let refused = device
        .sync_with(&urls, Some(&token), None, &secrets, &mut |_| {})
        .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    assert_eq!(
        device.pending().unwrap(),
        1,
        "the refused write stays pending"
    );

    let revoked = call(
        "DELETE",
        &format!("{}/v1/tokens/phone", node.url),
        None,
        &[("Authorization", &admin)],
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let refused = device
        .sync_with(&urls, Some(&token), None, &notes, &mut |_| {})
        .unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
}

fn delete_read(base: &str, key: &str) {
    let url = format!("{base}/v1/docs/notes/{key}");
    let context = get(&url).body["context"].as_str().unwrap().to_owned();
    let deleted = call("DELETE", &url, None, &[("Chorus-Context", &context)]);
    assert_eq!(deleted.status, 200, "{}", deleted.text);
}

/// A device away past every retention bound (the op log collected, deletions and
/// their tombstones collected) loses none of its writes: a document changed
/// meanwhile keeps both versions, a document deleted and collected meanwhile gets the
/// device's write back (not dropped) with the deletion it overrode in the conflict
/// log (not silently), a new one is taken; and the device learns of the deletions it
/// did not write over.
#[test]
fn a_device_away_past_every_retention_bound_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bounds = [
        "--log-retention-entries",
        "10",
        "--tombstone-collection-ms",
        "100",
    ];
    let cluster = Cluster::start_with(1, "topology = \"mesh\"", &bounds);
    let url = cluster.url(0);
    for key in ["changed", "deleted-written", "deleted"] {
        put(&format!("{url}/v1/docs/notes/{key}"), r#"{"v":"before"}"#);
    }
    let device = open_device(&dir, 0);
    let notes = Subscription::collections(["notes"]);
    device
        .sync(std::slice::from_ref(&url), &notes, &mut |_| {})
        .unwrap();
    assert_eq!(device.list("notes", "").unwrap().len(), 3);

    // Offline, the device writes; meanwhile the server changes and deletes, writes
    // far past the log's bound, and collects the tombstones.
    device
        .put("notes", "changed", &json!({"v": "device"}))
        .unwrap();
    device
        .put("notes", "deleted-written", &json!({"v": "device"}))
        .unwrap();
    device.put("notes", "new", &json!({"v": "device"})).unwrap();
    let changed = format!("{url}/v1/docs/notes/changed");
    let context = get(&changed).body["context"].as_str().unwrap().to_owned();
    assert_eq!(
        put_with_context(&changed, r#"{"v":"server"}"#, &context).status,
        200
    );
    delete_read(&url, "deleted-written");
    delete_read(&url, "deleted");
    for i in 0..50 {
        put(&format!("{url}/v1/docs/other/k{i}"), "{}");
    }
    wait_until(
        "the tombstones to be collected",
        Duration::from_secs(60),
        || {
            get(&format!("{url}/metrics"))
                .text
                .lines()
                .any(|l| l.starts_with("chorus_tombstones_collected_total ") && !l.ends_with(" 0"))
        },
    );
    let status = get(&format!("{url}/v1/status")).body;
    assert!(
        status["log_start"].as_u64().unwrap() > 5,
        "the log was collected: {status}"
    );

    let report = device
        .sync(std::slice::from_ref(&url), &notes, &mut |_| {})
        .unwrap();
    assert_eq!(report.taken, 3, "{report:?}");
    assert_eq!(device.pending().unwrap(), 0);
    let mut both = server_values(&get(&changed).body);
    both.sort();
    assert_eq!(
        both,
        [r#"{"v":"device"}"#, r#"{"v":"server"}"#],
        "concurrent: both kept"
    );
    assert_eq!(device_values(&device, "notes", "changed"), both);
    let written = get(&format!("{url}/v1/docs/notes/deleted-written")).body;
    assert_eq!(
        written["value"],
        json!({"v": "device"}),
        "not dropped: {written}"
    );
    // ... and not silently brought back: the deletion it overrode is on record.
    let log = get(&format!(
        "{url}/v1/conflicts?collection=notes&key=deleted-written"
    ))
    .body;
    let records = log["conflicts"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{log}");
    assert_eq!(records[0]["outcome"], "winner", "{log}");
    assert_eq!(records[0]["resolved"], false, "{log}");
    let deleted = records[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["deleted"] == true)
        .count();
    assert_eq!(deleted, 1, "the deletion, beside the device's write: {log}");
    assert_eq!(
        get(&format!("{url}/v1/docs/notes/new")).body["value"],
        json!({"v": "device"})
    );
    assert_eq!(
        device.get("notes", "deleted").unwrap(),
        None,
        "the deletion reached it"
    );
    let held: Vec<String> = device.list("notes", "").unwrap();
    assert_eq!(held, ["changed", "deleted-written", "new"]);
}

/// Device processes (`chorus device sync`) killed with SIGKILL in the middle of
/// their uploads, then synced again through other nodes: every write is on every
/// node exactly once, and nothing stays pending.
#[test]
fn devices_killed_mid_upload_lose_nothing_and_duplicate_nothing() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    let dir = tempfile::tempdir().unwrap();
    let (devices, writes) = (4, 1_500); // two upload requests each
    for i in 0..devices {
        let device = open_device(&dir, i);
        for j in 0..writes {
            device
                .put(
                    "notes",
                    &format!("p{i}-{j:04}"),
                    &json!({"device": i, "n": j}),
                )
                .unwrap();
        }
    }
    for i in 0..devices {
        let path = dir.path().join(format!("device-{i}.redb"));
        let mut sync = std::process::Command::new(CHORUS)
            .args(["device", "--local", path.to_str().unwrap(), "sync"])
            .args(["--collections", "notes", "--url", &cluster.url(i % 3)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if i % 2 == 0 {
            // Killed once its first upload is committed: the answer may be lost.
            let first = format!("{}/v1/docs/notes/p{i}-0000", cluster.url(i % 3));
            wait_until("the first upload", Duration::from_secs(60), || {
                sync.try_wait().unwrap().is_some() || get(&first).status == 200
            });
            let _ = sync.kill();
        }
        sync.wait().unwrap();
    }
    let notes = Subscription::collections(["notes"]);
    for i in 0..devices {
        let device = open_device(&dir, i);
        let urls = [cluster.url((i + 1) % 3)];
        // A node that may hold an upload the device sent elsewhere answers 503 until
        // that node's record arrives: sync again until nothing is pending.
        wait_until(
            "the device's writes to be taken",
            Duration::from_secs(60),
            || {
                let _ = device.sync(&urls, &notes, &mut |_| {});
                device.pending().unwrap() == 0
            },
        );
        assert!(device.rejected().unwrap().is_empty());
    }
    cluster.wait_converged(Duration::from_secs(60));
    for i in 0..devices {
        // Once every member has them, devices stop keeping the writes they gave.
        let device = open_device(&dir, i);
        wait_until(
            "every member to have the writes",
            Duration::from_secs(60),
            || {
                let _ = device.sync(&[cluster.url(i % 3)], &notes, &mut |_| {});
                device.unconfirmed().unwrap() == 0
            },
        );
    }
    for n in 0..3 {
        let base = cluster.url(n);
        for i in 0..devices {
            for j in [0, writes / 2, writes - 1] {
                let read = get(&format!("{base}/v1/docs/notes/p{i}-{j:04}"));
                assert_eq!(
                    server_values(&read.body),
                    [json!({"device": i, "n": j}).to_string()],
                    "node {n}: exactly one version"
                );
            }
        }
        let listed = call(
            "POST",
            &format!("{base}/v1/bulk/notes/get"),
            Some(
                json!({"keys": (0..writes).map(|j| format!("p0-{j:04}")).collect::<Vec<_>>()})
                    .to_string()
                    .as_bytes(),
            ),
            &[],
        );
        let docs = listed.body["docs"].as_array().unwrap();
        assert!(
            docs.iter()
                .all(|d| d["versions"].as_array().map(Vec::len) == Some(1)),
            "node {n}: every write of a killed device once"
        );
    }
}

/// What a proxy does with one request.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Pass,
    /// The connection drops before the request reaches the node.
    Cut,
    /// The node answers, the answer is lost.
    LoseAnswer,
}

/// A proxy in front of `target` that gives each request (one per connection) the
/// fate `decide` picks from its number and its head.
fn flaky_proxy(target: String, decide: impl Fn(u64, &str) -> Fate + Send + 'static) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { continue };
            let mut reader = BufReader::new(client.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if !line.to_ascii_lowercase().starts_with("connection:") {
                    head.push_str(&line);
                }
            }
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let fate = decide(n as u64, &head);
            if fate == Fate::Cut {
                continue;
            }
            let Ok(mut node) = std::net::TcpStream::connect(target.trim_start_matches("http://"))
            else {
                continue;
            };
            let _ = node.write_all(format!("{head}connection: close\r\n\r\n").as_bytes());
            let _ = node.write_all(&body);
            let mut answer = Vec::new();
            let _ = node.read_to_end(&mut answer);
            if fate == Fate::Pass {
                let _ = client.write_all(&answer);
            }
        }
    });
    url
}

/// A proxy that loses the answers of device uploads.
fn answer_dropping_proxy(target: String) -> String {
    flaky_proxy(target, |_, head| {
        if head.starts_with("POST /v1/devices/upload/") {
            Fate::LoseAnswer
        } else {
            Fate::Pass
        }
    })
}

/// Devices sync through links that drop: one request in seven is cut before it reaches
/// its node, one in seven loses its answer, uploads, reads and feed pages alike. A
/// sync cut mid-way moves on to the device's next node, with writes in doubt where
/// they went. Once every device has nothing pending, every write is on every node
/// once, shared documents hold one version per writer, and every device holds what
/// the servers hold.
#[test]
fn devices_whose_links_drop_mid_sync_switch_nodes_and_lose_nothing() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    let dir = tempfile::tempdir().unwrap();
    const DEVICES: usize = 50;
    let proxies: Vec<String> = (0..3)
        .map(|n| {
            flaky_proxy(cluster.url(n), move |i, _| match (i + n as u64) % 35 {
                0 | 7 | 14 | 21 | 28 => Fate::Cut,
                3 | 8 | 13 | 18 | 23 => Fate::LoseAnswer,
                _ => Fate::Pass,
            })
        })
        .collect();
    let notes = Subscription::collections(["notes"]);
    let devices: Vec<Device> = (0..DEVICES).map(|i| open_device(&dir, i)).collect();
    for (i, device) in devices.iter().enumerate() {
        for j in 0..3 {
            let key = format!("d{i:02}-{j}");
            device
                .put("notes", &key, &json!({"device": i, "n": j}))
                .unwrap();
        }
        let shared = format!("shared-{}", i % 3);
        device.put("notes", &shared, &json!({"by": i})).unwrap();
    }
    // Syncs cut on every node, and those where an upload's answer was lost.
    let (mut cut, mut uncertain) = (0, 0);
    wait_until(
        "every device to have nothing pending",
        Duration::from_secs(120),
        || {
            for (i, device) in devices.iter().enumerate() {
                let urls: Vec<String> = (0..3).map(|k| proxies[(i + k) % 3].clone()).collect();
                if let Err(e) = device.sync(&urls, &notes, &mut |_| {}) {
                    cut += 1;
                    uncertain += usize::from(e.to_string().contains("may or may not"));
                }
            }
            devices.iter().all(|d| d.pending().unwrap() == 0)
        },
    );
    assert!(
        cut > 0 && uncertain > 0,
        "{cut} syncs cut, {uncertain} with answers lost"
    );
    cluster.wait_converged(Duration::from_secs(60));
    let direct: Vec<String> = (0..3).map(|n| cluster.url(n)).collect();
    for device in &devices {
        device.sync(&direct, &notes, &mut |_| {}).unwrap();
    }
    for n in 0..3 {
        let base = cluster.url(n);
        for i in 0..DEVICES {
            for j in 0..3 {
                let read = get(&format!("{base}/v1/docs/notes/d{i:02}-{j}"));
                assert_eq!(
                    server_values(&read.body),
                    [json!({"device": i, "n": j}).to_string()],
                    "node {n}: written once, {}",
                    read.text
                );
            }
        }
        for s in 0..3 {
            let read = get(&format!("{base}/v1/docs/notes/shared-{s}"));
            let writers: Vec<String> = (0..DEVICES)
                .filter(|i| i % 3 == s)
                .map(|i| json!({"by": i}).to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(
                server_values(&read.body),
                writers,
                "node {n}: one version per writer"
            );
        }
    }
    let base = cluster.url(0);
    for (i, device) in devices.iter().enumerate() {
        for key in device.list("notes", "").unwrap() {
            let read = get(&format!("{base}/v1/docs/notes/{key}"));
            assert_eq!(
                device_values(device, "notes", &key),
                server_values(&read.body),
                "device {i}, {key}"
            );
        }
        assert_eq!(device.list("notes", "").unwrap().len(), DEVICES * 3 + 3);
    }
}

/// An upload whose answer is lost leaves the write in doubt at the node that took
/// it: another node refuses it until that node's record arrives, then answers that
/// it was taken (with its dot); a later write of the device, made meanwhile, then
/// replaces it. One version at the end, nothing lost, nothing twice.
#[test]
fn a_lost_upload_answer_is_settled_on_another_node() {
    let cluster = Cluster::start(2, "topology = \"mesh\"");
    let dir = tempfile::tempdir().unwrap();
    let device = open_device(&dir, 0);
    let notes = Subscription::collections(["notes"]);
    device.put("notes", "n", &json!({"v": 1})).unwrap();
    let proxy = answer_dropping_proxy(cluster.url(0));
    let lost = device.sync(&[proxy], &notes, &mut |_| {}).unwrap_err();
    assert!(lost.to_string().contains("may or may not"), "{lost}");
    assert_eq!(device.pending().unwrap(), 1, "in doubt, kept");
    let taken = get(&format!("{}/v1/docs/notes/n", cluster.url(0)));
    assert_eq!(taken.body["value"], json!({"v": 1}), "n0 took it");

    // Edited again meanwhile: the new value waits beside the one in doubt.
    device.put("notes", "n", &json!({"v": 2})).unwrap();
    assert_eq!(device.pending().unwrap(), 2);
    assert_eq!(
        device.get("notes", "n").unwrap().unwrap().value,
        Some(json!({"v": 2}))
    );
    let other = [cluster.url(1)];
    let mut taken_before = 0;
    wait_until(
        "the write in doubt to be settled",
        Duration::from_secs(60),
        || {
            if let Ok(report) = device.sync(&other, &notes, &mut |_| {}) {
                taken_before += report.taken_before;
            }
            device.pending().unwrap() == 0
        },
    );
    assert_eq!(taken_before, 1, "answered taken before, not taken again");
    cluster.wait_converged(Duration::from_secs(60));
    for n in 0..2 {
        let read = get(&format!("{}/v1/docs/notes/n", cluster.url(n)));
        assert_eq!(
            server_values(&read.body),
            [r#"{"v":2}"#],
            "node {n}: {}",
            read.text
        );
    }
    assert_eq!(
        device.get("notes", "n").unwrap().unwrap().versions,
        [json!({"v": 2})]
    );
}

/// A node takes a device's write and is then restored from an older backup before
/// any other member had the write: the device notices (the node's feed is another)
/// and uploads the write again. Nothing the device was told was taken is lost.
#[test]
fn a_write_a_restored_node_lost_goes_up_again() {
    // n0 and n1 cannot reach each other: what n0 takes stays on n0.
    let cut = "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true\n";
    let mut cluster = Cluster::start(2, cut);
    let n0 = cluster.url(0);
    assert_eq!(put(&format!("{n0}/v1/docs/notes/old"), "{}").status, 200);
    let backup = cluster.dir.path().join("n0.backup");
    let taken = std::process::Command::new(CHORUS)
        .args(["backup", "--url", &n0, "--out", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(taken.status.success(), "{taken:?}");

    let dir = tempfile::tempdir().unwrap();
    let device = open_device(&dir, 0);
    let notes = Subscription::collections(["notes"]);
    device.put("notes", "w", &json!({"v": "device"})).unwrap();
    let report = device
        .sync(std::slice::from_ref(&n0), &notes, &mut |_| {})
        .unwrap();
    assert_eq!(report.taken, 1);

    // n0 dies and comes back from the backup, which lacks the write; the cut heals.
    cluster.nodes[0].kill();
    let data = cluster.nodes[0].data.clone();
    std::fs::remove_dir_all(&data).unwrap();
    let restored = std::process::Command::new(CHORUS)
        .args(["restore", "--data", data.to_str().unwrap()])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(restored.status.success(), "{restored:?}");
    cluster.reconfigure("topology = \"mesh\"\n", &[1]);
    cluster.restart(0);
    cluster.wait_converged(Duration::from_secs(60));
    let n0 = cluster.url(0);
    assert_eq!(get(&format!("{n0}/v1/docs/notes/w")).status, 404, "lost");

    let mut requeued = 0;
    wait_until(
        "the lost write to go up again",
        Duration::from_secs(60),
        || {
            if let Ok(report) = device.sync(std::slice::from_ref(&n0), &notes, &mut |_| {}) {
                requeued += report.requeued;
            }
            get(&format!("{n0}/v1/docs/notes/w")).status == 200
        },
    );
    assert_eq!(requeued, 1);
    cluster.wait_converged(Duration::from_secs(60));
    for n in 0..2 {
        let read = get(&format!("{}/v1/docs/notes/w", cluster.url(n)));
        assert_eq!(server_values(&read.body), [r#"{"v":"device"}"#], "node {n}");
    }
}

/// A write the node refuses (here a key longer than keys may be) is set aside, with
/// why, and the device's other writes go up: one bad write never blocks a device.
#[test]
fn a_refused_write_is_set_aside_and_the_others_go_up() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let device = open_device(&dir, 0);
    let long = "k".repeat(2000);
    device
        .put("notes", &long, &json!({"v": "too long a key"}))
        .unwrap();
    device.put("notes", "fine", &json!({"v": "fine"})).unwrap();
    let notes = Subscription::collections(["notes"]);
    let report = device
        .sync(std::slice::from_ref(&node.url), &notes, &mut |_| {})
        .unwrap();
    assert_eq!((report.taken, report.rejected), (1, 1), "{report:?}");
    assert_eq!(device.pending().unwrap(), 0);
    let rejected = device.rejected().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].key, long);
    assert!(rejected[0].message.contains("key"), "{rejected:?}");
    assert_eq!(
        get(&format!("{}/v1/docs/notes/fine", node.url)).body["value"],
        json!({"v": "fine"})
    );
}

/// Two devices change one CRDT document offline: each shows its own operations at
/// once; synced, the operations merge (counters add up; a set remove removes only
/// the element the device saw, not one added concurrently), on the node and then on
/// both devices. The same holds for `POST .../ops` with a `Chorus-Context` header.
#[test]
fn crdt_operations_made_offline_merge_when_synced() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    put(
        &format!("{}/v1/collections/carts", node.url),
        r#"{"policy":"crdt"}"#,
    );
    let ops_url = format!("{}/v1/docs/carts/c1/ops", node.url);
    let first = call(
        "POST",
        &ops_url,
        Some(br#"[{"op":"set.add","path":"/items","value":"apple"}]"#),
        &[],
    );
    assert_eq!(first.status, 200, "{}", first.text);
    let carts = Subscription::collections(["carts"]);
    let urls = std::slice::from_ref(&node.url);
    let (d1, d2) = (open_device(&dir, 1), open_device(&dir, 2));
    for device in [&d1, &d2] {
        device.sync(urls, &carts, &mut |_| {}).unwrap();
    }
    let shown = |device: &Device| device.get("carts", "c1").unwrap().unwrap().value;
    // Offline: d1 counts two and removes the apple it saw; d2 counts three and adds
    // an apple and a pear.
    d1.update(
        "carts",
        "c1",
        &[
            json!({"op": "counter.add", "path": "/count", "by": 2}),
            json!({"op": "set.remove", "path": "/items", "value": "apple"}),
        ],
    )
    .unwrap();
    d2.update(
        "carts",
        "c1",
        &[json!({"op": "counter.add", "path": "/count", "by": 3})],
    )
    .unwrap();
    d2.update(
        "carts",
        "c1",
        &[
            json!({"op": "set.add", "path": "/items", "value": "apple"}),
            json!({"op": "set.add", "path": "/items", "value": "pear"}),
        ],
    )
    .unwrap();
    assert_eq!(shown(&d1), Some(json!({"count": 2, "items": []})));
    let d1_doc = d1.get("carts", "c1").unwrap().unwrap();
    assert!(
        !d1_doc.conflict && d1_doc.pending,
        "operations merge: {d1_doc:?}"
    );
    assert_eq!(
        shown(&d2),
        Some(json!({"count": 3, "items": ["apple", "pear"]}))
    );
    assert_eq!(
        d2.pending().unwrap(),
        1,
        "operations not sent join one write"
    );
    // d2 first: d1's remove then reaches a node that holds d2's apple, which d1
    // never saw, so that apple stays.
    for device in [&d2, &d1, &d2] {
        device.sync(urls, &carts, &mut |_| {}).unwrap();
    }
    // Operations on a collection that is not `crdt` are refused, and set aside.
    d1.update(
        "plain",
        "p",
        &[json!({"op": "counter.add", "path": "/n", "by": 1})],
    )
    .unwrap();
    let report = d1
        .sync(urls, &Subscription::collections(["plain"]), &mut |_| {})
        .unwrap();
    assert_eq!(report.rejected, 1, "{report:?}");
    let rejected = d1.rejected().unwrap();
    assert!(rejected[0].message.contains("policy crdt"), "{rejected:?}");
    assert_eq!(get(&format!("{}/v1/docs/plain/p", node.url)).status, 404);

    let merged = json!({"count": 5, "items": ["apple", "pear"]});
    let read = get(&format!("{}/v1/docs/carts/c1", node.url));
    assert_eq!(read.body["value"], merged, "{}", read.text);
    assert_eq!(shown(&d1), Some(merged.clone()));
    assert_eq!(shown(&d2), Some(merged));

    // Over HTTP: a remove made against the first read leaves the pear, added since;
    // made against the latest read, it removes it.
    let remove_pear = |context: &str| {
        let removed = call(
            "POST",
            &ops_url,
            Some(br#"[{"op":"set.remove","path":"/items","value":"pear"}]"#),
            &[("Chorus-Context", context)],
        );
        assert_eq!(removed.status, 200, "{}", removed.text);
        removed.body
    };
    let kept = remove_pear(first.body["context"].as_str().unwrap());
    assert_eq!(kept["value"]["items"], json!(["apple", "pear"]));
    let removed = remove_pear(kept["context"].as_str().unwrap());
    assert_eq!(removed["value"]["items"], json!(["apple"]));
}

/// Two devices edit one text offline, typing at the same place and elsewhere, one
/// of them in several edits before syncing (joined into one write whose positions
/// count in its read plus its own edits before): each shows its text at once, and
/// once synced the node and both devices show one text with each device's words
/// whole.
#[test]
fn text_typed_offline_on_two_devices_merges_without_interleaving() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    put(
        &format!("{}/v1/collections/notes", node.url),
        r#"{"policy":"crdt"}"#,
    );
    let first = call(
        "POST",
        &format!("{}/v1/docs/notes/n1/ops", node.url),
        Some(br#"[{"op":"text.insert","path":"/text","pos":0,"text":"The fox."}]"#),
        &[],
    );
    assert_eq!(first.status, 200, "{}", first.text);
    let notes = Subscription::collections(["notes"]);
    let urls = std::slice::from_ref(&node.url);
    let (d1, d2) = (open_device(&dir, 1), open_device(&dir, 2));
    for device in [&d1, &d2] {
        device.sync(urls, &notes, &mut |_| {}).unwrap();
    }
    let text = |device: &Device| {
        device.get("notes", "n1").unwrap().unwrap().value.unwrap()["text"].clone()
    };
    let insert = |pos: u64, text: &str| json!({"op": "text.insert", "path": "/text", "pos": pos, "text": text});
    // d1: " quick" after "The", typed in three edits, then "fox" becomes "cat".
    for (pos, typed) in [(3, " q"), (5, "ui"), (7, "ck")] {
        d1.update("notes", "n1", &[insert(pos, typed)]).unwrap();
    }
    d1.update(
        "notes",
        "n1",
        &[
            json!({"op": "text.delete", "path": "/text", "pos": 10, "len": 3}),
            insert(10, "cat"),
        ],
    )
    .unwrap();
    assert_eq!(text(&d1), json!("The quick cat."));
    // d2: " brown" at the same place, " It ran." at the end.
    d2.update(
        "notes",
        "n1",
        &[insert(3, " brown"), insert(14, " It ran.")],
    )
    .unwrap();
    assert_eq!(text(&d2), json!("The brown fox. It ran."));
    for device in [&d2, &d1, &d2] {
        device.sync(urls, &notes, &mut |_| {}).unwrap();
    }
    let read = get(&format!("{}/v1/docs/notes/n1", node.url));
    let merged = read.body["value"]["text"].as_str().unwrap().to_owned();
    assert!(
        [
            "The quick brown cat. It ran.",
            "The brown quick cat. It ran."
        ]
        .contains(&merged.as_str()),
        "{merged:?}"
    );
    assert_eq!(text(&d1), json!(merged));
    assert_eq!(text(&d2), json!(merged));
}

/// A node's record of a device goes once the device acknowledged its answers and
/// the retention passed (here one second); the device's next upload starts a new
/// one, and nothing it wrote is touched.
#[test]
fn a_device_record_expires_once_its_answers_were_received() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &dir.path().join("data"),
        &["--device-record-retention-s", "1"],
    );
    let device = open_device(&dir, 0);
    let notes = Subscription::collections(["notes"]);
    let urls = std::slice::from_ref(&node.url);
    let devices_seen = || get(&format!("{}/v1/status", node.url)).body["devices"]["seen"].clone();
    device.put("notes", "a", &json!({"v": 1})).unwrap();
    device.sync(urls, &notes, &mut |_| {}).unwrap();
    assert_eq!(devices_seen(), json!(1));
    wait_until("the record to expire", Duration::from_secs(60), || {
        devices_seen() == json!(0)
    });
    device.put("notes", "b", &json!({"v": 2})).unwrap();
    let report = device.sync(urls, &notes, &mut |_| {}).unwrap();
    assert_eq!(report.taken, 1, "{report:?}");
    assert_eq!(devices_seen(), json!(1));
    for (key, value) in [("a", 1), ("b", 2)] {
        let read = get(&format!("{}/v1/docs/notes/{key}", node.url));
        assert_eq!(read.body["value"], json!({"v": value}), "{}", read.text);
    }
    // What devices did, in the node's metrics.
    let metrics = get(&format!("{}/metrics", node.url)).text;
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    assert_eq!(value("chorus_device_records_expired_total"), 1.0);
    assert!(value("chorus_device_bytes_total{direction=\"down\"}") > 0.0);
    assert!(value("chorus_device_requests_total{route=\"/v1/changes\"}") >= 2.0);
}

/// `chorus device sync --live` hears of a change on the node as it happens (a long
/// poll of the feed), long before its interval: here ten minutes, so only the long
/// poll can bring the change within the deadline.
#[test]
fn a_live_device_hears_of_changes_as_they_happen() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("live.redb");
    let mut live = std::process::Command::new(CHORUS)
        .args([
            "device",
            "--local",
            file.to_str().unwrap(),
            "sync",
            "--live",
        ])
        .args([
            "--collections",
            "notes",
            "--interval-ms",
            "600000",
            "--url",
            &node.url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = live.stdout.take().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&printed);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    let reports = || printed.lock().unwrap().matches("\"pending\"").count();
    wait_until("the first sync", Duration::from_secs(60), || reports() >= 1);
    put(&format!("{}/v1/docs/notes/news", node.url), r#"{"v":1}"#);
    wait_until(
        "the change to reach the device",
        Duration::from_secs(60),
        || printed.lock().unwrap().contains("\"downloaded\": 1"),
    );
    let _ = live.kill();
    let _ = live.wait();
    let device = Device::open(&file).unwrap();
    assert_eq!(
        device.get("notes", "news").unwrap().unwrap().value,
        Some(json!({"v": 1}))
    );
}
