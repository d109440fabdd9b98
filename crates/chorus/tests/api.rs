//! The HTTP API over real HTTP against a real `chorus serve` process: every
//! endpoint, every error path and the limits. Each refused request must leave the
//! node's digest unchanged.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use support::*;

fn node() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &dir.path().join("data"),
        &["--body-bytes-max", "4096", "--name", "alpha"],
    );
    (dir, node)
}

/// Writes, reads, sibling conflicts, context writes and deletes behave as the
/// contract says, including the 404 of a deleted document carrying its context.
#[test]
fn document_lifecycle() {
    let (_dir, node) = node();
    let url = format!("{}/v1/docs/people/ada", node.url);
    let absent = get(&url);
    assert_eq!(absent.status, 404);
    assert_eq!(absent.body["error"], "not_found");

    let first = put(&url, r#"{"name":"Ada"}"#);
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.body["context"].is_string());
    let read = get(&url);
    assert_eq!(read.status, 200);
    assert_eq!(read.body["key"], "ada");
    assert_eq!(read.body["value"], json!({"name": "Ada"}));
    assert_eq!(read.body["conflict"], false);
    assert_eq!(read.body["versions"][0]["origin"], "alpha");
    assert!(read.body["versions"][0]["hlc"]["wall_ms"].as_u64().unwrap() > 0);

    // A blind write is concurrent with the existing version: two siblings.
    put(&url, r#"{"name":"Ada L."}"#);
    let conflicted = get(&url);
    assert_eq!(conflicted.body["conflict"], true);
    assert!(conflicted.body.get("value").is_none());
    assert_eq!(conflicted.body["versions"].as_array().unwrap().len(), 2);

    // A write with the read's context replaces exactly those versions.
    let context = conflicted.body["context"].as_str().unwrap();
    assert_eq!(
        put_with_context(&url, r#"{"name":"Ada Lovelace"}"#, context).status,
        200
    );
    let resolved = get(&url);
    assert_eq!(resolved.body["conflict"], false);
    assert_eq!(resolved.body["value"]["name"], "Ada Lovelace");

    // Delete with context; the 404 still carries a context that supersedes the tombstone.
    let context = resolved.body["context"].as_str().unwrap();
    let deleted = call("DELETE", &url, None, &[("Chorus-Context", context)]);
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    let gone = get(&url);
    assert_eq!(gone.status, 404);
    let tombstone_context = gone.body["context"].as_str().unwrap();
    put_with_context(&url, r#"{"name":"again"}"#, tombstone_context);
    let back = get(&url);
    assert_eq!(back.body["conflict"], false, "{}", back.text);
    assert_eq!(back.body["value"]["name"], "again");

    let conflicts = get(&format!("{}/v1/conflicts", node.url));
    assert_eq!(conflicts.body["conflicts"].as_array().unwrap().len(), 1);
    assert_eq!(conflicts.body["conflicts"][0]["outcome"], "siblings");
}

/// Generated keys come back with 201 and are readable; listing pages by prefix.
#[test]
fn generated_keys_and_listing() {
    let (_dir, node) = node();
    let created = call(
        "POST",
        &format!("{}/v1/docs/events", node.url),
        Some(b"{\"n\":1}"),
        &[],
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let key = created.body["key"].as_str().unwrap();
    assert_eq!(
        get(&format!("{}/v1/docs/events/{key}", node.url)).body["value"]["n"],
        1
    );

    for key in ["a1", "b1", "b2", "b3", "c1"] {
        put(&format!("{}/v1/docs/list/{key}", node.url), "{}");
    }
    let page = get(&format!("{}/v1/docs/list?prefix=b&limit=2", node.url));
    assert_eq!(page.body["keys"], json!(["b1", "b2"]));
    let next = page.body["next"].as_str().unwrap();
    let page = get(&format!("{}/v1/docs/list?prefix=b&after={next}", node.url));
    assert_eq!(page.body["keys"], json!(["b3"]));
    assert_eq!(page.body["next"], Value::Null);

    // A range read: the same pages, each document as a read shows it, deleted ones
    // skipped, siblings shown as siblings.
    let b2 = format!("{}/v1/docs/list/b2", node.url);
    let context = get(&b2).body["context"].as_str().unwrap().to_owned();
    call("DELETE", &b2, None, &[("Chorus-Context", &context)]);
    put(&format!("{}/v1/docs/list/b3", node.url), r#"{"v":3}"#);
    put(&format!("{}/v1/docs/list/b4", node.url), r#"{"v":4}"#);
    let range = format!("{}/v1/docs/list?prefix=b&include_docs=true", node.url);
    let page = get(&format!("{range}&limit=2"));
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["keys"], json!(["b1", "b3"]));
    let docs = page.body["docs"].as_array().unwrap();
    assert_eq!(docs[0], get(&format!("{}/v1/docs/list/b1", node.url)).body);
    assert_eq!(docs[1]["conflict"], true, "two blind writes: {}", docs[1]);
    assert_eq!(docs[1]["versions"].as_array().unwrap().len(), 2);
    let next = page.body["next"].as_str().unwrap();
    let page = get(&format!("{range}&after={next}"));
    assert_eq!(page.body["docs"][0]["value"], json!({"v": 4}));
    assert_eq!(page.body["next"], Value::Null);
    let bad = get(&format!("{range}&include_docs=maybe"));
    assert_eq!(bad.status, 400, "{}", bad.text);

    // Keys may hold any character when percent-encoded.
    let odd = format!("{}/v1/docs/list/a%2Fb%20c", node.url);
    assert_eq!(put(&odd, "1").status, 200);
    assert_eq!(get(&odd).body["key"], "a/b c");
}

/// Collection settings: lww keeps the newest write and logs the loser, with who
/// wrote it and when.
#[test]
fn lww_collection_and_conflict_log() {
    let (_dir, node) = node();
    let settings = format!("{}/v1/collections/prefs", node.url);
    assert_eq!(
        get(&settings).body,
        json!({"name": "prefs", "policy": "siblings", "explicit": false})
    );
    let set = put(&settings, r#"{"policy":"lww"}"#);
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(
        get(&settings).body,
        json!({"name": "prefs", "policy": "lww", "explicit": true})
    );

    let url = format!("{}/v1/docs/prefs/theme", node.url);
    put(&url, r#""dark""#);
    put(&url, r#""light""#);
    let read = get(&url);
    assert_eq!(read.body["value"], "light");
    assert_eq!(read.body["conflict"], false);
    let log = get(&format!("{}/v1/conflicts", node.url)).body;
    let record = &log["conflicts"][0];
    assert_eq!(record["policy"], "lww");
    assert_eq!(record["outcome"], "winner");
    let loser = record["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "dark")
        .unwrap();
    assert_eq!(loser["origin"], "alpha");
    assert!(loser["hlc"]["wall_ms"].is_u64());

    // The log filters by collection and key, in the same answer shape.
    put(&format!("{}/v1/docs/prefs/font", node.url), r#""serif""#);
    put(&format!("{}/v1/docs/prefs/font", node.url), r#""sans""#);
    put(&format!("{}/v1/docs/other/k", node.url), "1");
    put(&format!("{}/v1/docs/other/k", node.url), "2");
    let keys = |query: &str| -> Vec<String> {
        let page = get(&format!("{}/v1/conflicts?{query}", node.url)).body;
        assert!(page.get("next").is_some(), "{page}");
        let mut keys: Vec<String> = page["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c["collection"].as_str().unwrap(),
                    c["key"].as_str().unwrap()
                )
            })
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(keys("collection=prefs"), ["prefs/font", "prefs/theme"]);
    assert_eq!(keys("collection=prefs&key=font"), ["prefs/font"]);
    assert_eq!(keys("key=k"), ["other/k"]);
    assert_eq!(keys("collection=nothing"), Vec::<String>::new());
    assert_eq!(keys("limit=1000").len(), 3);
}

/// The change feed pages with a resumable cursor, long-polls until a write arrives,
/// and streams live as server-sent events; it lists each document once at its latest
/// change, with its document on request, filtered by collection and prefix, and
/// refuses a cursor of another node's feed.
#[test]
fn change_feed() {
    let (_dir, node) = node();
    for i in 0..3 {
        put(&format!("{}/v1/docs/feed/k{i}", node.url), &i.to_string());
    }
    put(&format!("{}/v1/docs/elsewhere/x", node.url), "0");
    let page = get(&format!("{}/v1/changes?limit=2", node.url)).body;
    assert_eq!(page["changes"].as_array().unwrap().len(), 2);
    assert_eq!(page["changes"][0]["key"], "k0");
    assert_eq!(page["changes"][0]["deleted"], false);
    assert!(page["changes"][0]["context"].is_string());
    let next = page["next"].as_str().unwrap().to_owned();
    let rest = get(&format!(
        "{}/v1/changes?since={next}&include_docs=true",
        node.url
    ))
    .body;
    assert_eq!(rest["changes"][0]["key"], "k2");
    assert_eq!(rest["changes"][0]["doc"]["value"], 2);
    let tail = rest["next"].as_str().unwrap().to_owned();
    let only = get(&format!(
        "{}/v1/changes?collection=feed&prefix=k1",
        node.url
    ))
    .body;
    assert_eq!(only["changes"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(
        only["next"],
        tail.as_str(),
        "next moves past what the filter skipped"
    );

    // A cursor of another feed is refused, not misread.
    let (_other_dir, other) = self::node();
    let foreign = get(&format!("{}/v1/changes?since={tail}", other.url));
    assert_eq!(foreign.status, 400);
    assert_eq!(foreign.body["error"], "foreign_cursor");

    // A long poll from the tail returns the next write, whenever it lands.
    let poll_url = format!(
        "{}/v1/changes?since={tail}&feed=longpoll&timeout_ms=20000",
        node.url
    );
    let poller = std::thread::spawn(move || get(&poll_url).body);
    put(&format!("{}/v1/docs/feed/late", node.url), "\"late\"");
    let polled = poller.join().unwrap();
    assert_eq!(polled["changes"][0]["key"], "late");

    // The live stream starts with the history after the cursor.
    let mut builder = ureq::http::Request::builder()
        .uri(format!(
            "{}/v1/changes?since={tail}&include_docs=true",
            node.url
        ))
        .header("Accept", "text/event-stream");
    builder = builder.method("GET");
    let response = ureq::Agent::new_with_defaults()
        .run(builder.body(()).unwrap())
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let mut next_event = || {
        let data = lines
            .by_ref()
            .map(Result::unwrap)
            .find(|l| l.starts_with("data:"))
            .unwrap();
        serde_json::from_str::<Value>(data.trim_start_matches("data:").trim()).unwrap()
    };
    assert_eq!(next_event()["key"], "late");

    // Live: a blind second write (siblings now) and a later write stream through.
    put(&format!("{}/v1/docs/feed/late", node.url), "\"again\"");
    put(&format!("{}/v1/docs/feed/after", node.url), "1");
    let again = next_event();
    assert_eq!(again["key"], "late");
    assert_eq!(
        again["doc"]["versions"].as_array().unwrap().len(),
        2,
        "{again}"
    );
    assert_eq!(next_event()["key"], "after");
}

/// Every bad request gets a clear 4xx in the error format and changes nothing.
#[test]
fn bad_requests_change_nothing() {
    let (_dir, node) = node();
    let base = node.url.clone();
    put(&format!("{base}/v1/docs/c/k"), "{}");
    let context = get(&format!("{base}/v1/docs/c/k")).body["context"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = digest(&base);
    let last_seq = get(&format!("{base}/v1/status")).body["last_seq"].clone();

    let long_key = "k".repeat(1025);
    let too_big = format!("\"{}\"", "x".repeat(5000));
    let mut corrupt = context.clone().into_bytes();
    corrupt[3] = if corrupt[3] == b'A' { b'B' } else { b'A' };
    let corrupt = String::from_utf8(corrupt).unwrap();
    // (method, url, body, headers, expected status, expected error code)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            format!("{base}/v1/docs/c/k"),
            Some("{not json"),
            vec![],
            400,
            "invalid_json",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/k"),
            Some(""),
            vec![],
            400,
            "invalid_json",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/k"),
            Some(&too_big),
            vec![],
            413,
            "payload_too_large",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/{long_key}"),
            Some("{}"),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/_collections/c"),
            Some("{}"),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/k"),
            Some("{}"),
            vec![("Chorus-Context", "%%%")],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/k"),
            Some("{}"),
            vec![("Chorus-Context", &corrupt)],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/other"),
            Some("{}"),
            vec![("Chorus-Context", &context)],
            400,
            "bad_request",
        ),
        (
            "DELETE",
            format!("{base}/v1/docs/c/k"),
            None,
            vec![("Chorus-Context", "AAAA")],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/collections/c"),
            Some(r#"{"policy":"nope"}"#),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/collections/c"),
            Some(r#"{"policy":"lww","x":1}"#),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/collections/%2E"),
            Some(r#"{"policy":"lww"}"#),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/%2E%2E/k"),
            Some("{}"),
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/docs/c?limit=0"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/docs/c?limit=5000"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/changes?limit=0"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/conflicts?limit=1001"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/conflicts?collection=_collections"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/50%zz"),
            Some("{}"),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/docs/c/100%"),
            Some("{}"),
            vec![],
            400,
            "bad_request",
        ),
        (
            "PUT",
            format!("{base}/v1/collections/bad%20name"),
            Some(r#"{"policy":"lww"}"#),
            vec![],
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("{base}/v1/docs/c"),
            Some("[1,"),
            vec![],
            400,
            "invalid_json",
        ),
        (
            "GET",
            format!("{base}/v1/changes?since=abc"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/changes?feed=weird"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/docs/c?limit=-1"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/docs/c?bogus=1"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/conflicts?after=xyz"),
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/v1/nothing"),
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            "PATCH",
            format!("{base}/v1/docs/c/k"),
            Some("{}"),
            vec![],
            405,
            "method_not_allowed",
        ),
    ];
    for (method, url, body, headers, status, code) in cases {
        let reply = call(method, &url, body.map(str::as_bytes), &headers);
        assert_eq!(reply.status, status, "{method} {url}: {}", reply.text);
        assert_eq!(reply.body["error"], code, "{method} {url}: {}", reply.text);
        assert!(
            reply.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(digest(&base), before);
    assert_eq!(get(&format!("{base}/v1/status")).body["last_seq"], last_seq);
}

/// Bodies that once got 200 and then read back as `null` (invalid UTF-8 in a string,
/// a lone surrogate, nesting 128 deep, a number out of range, a repeated field) are
/// refused at the door in every kind of collection, and change nothing.
#[test]
fn unreadable_json_is_refused_at_the_door() {
    let (_dir, node) = node();
    let base = node.url.clone();
    set_policy(&base, "last", "lww");
    let before = digest(&base);
    let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
    let bodies: [&[u8]; 5] = [
        b"{\"name\": \"\xc3\x28\"}",
        br#"{"name": "\ud800"}"#,
        deep.as_bytes(),
        b"1e99999",
        br#"{"a": 1, "a": 2}"#,
    ];
    for collection in ["plain", "last"] {
        for body in bodies {
            let url = format!("{base}/v1/docs/{collection}/k");
            let reply = call("PUT", &url, Some(body), &[]);
            assert_eq!(reply.status, 400, "{collection}: {}", reply.text);
            assert_eq!(reply.body["error"], "invalid_json", "{}", reply.text);
            assert_eq!(get(&url).status, 404);
        }
    }
    assert_eq!(digest(&base), before);
    // What the door lets in reads back as written (100 deep: the answer wraps the
    // document, and this test's own parser stops at 128 too).
    let url = format!("{base}/v1/docs/plain/k");
    let shallow = format!("{}{}", "[".repeat(100), "]".repeat(100));
    put(&url, &shallow);
    let value = get(&url).body["value"].clone();
    assert_eq!(value, serde_json::from_str::<Value>(&shallow).unwrap());
}

/// Status, digest and metrics answer; the digest moves with a write; the metrics
/// count writes, reads, conflicts, commits (fsyncs) and their latency.
#[test]
fn status_digest_and_metrics() {
    let (_dir, node) = node();
    let status = get(&format!("{}/v1/status", node.url)).body;
    assert_eq!(status["node"], "alpha");
    assert_eq!(status["peers"], json!([]));
    let empty = digest(&node.url);
    put(&format!("{}/v1/docs/m/k", node.url), "1");
    put(&format!("{}/v1/docs/m/k", node.url), "2");
    get(&format!("{}/v1/docs/m/k", node.url));
    assert_ne!(digest(&node.url), empty);
    let metrics = get(&format!("{}/metrics", node.url)).text;
    for name in [
        "chorus_writes_total 2",
        "chorus_reads_total",
        "chorus_conflicts_total{collection=\"m\",policy=\"siblings\"} 1",
        "chorus_fsyncs_total",
        "chorus_commit_latency_seconds_bucket",
        "# HELP chorus_writes_total",
        "chorus_state_transfers_total 0",
        "chorus_http_requests_total{route=\"/v1/docs/{collection}/{key}\",method=\"PUT\",status=\"200\"}",
        "chorus_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
}

/// The CLI client commands work against a node, print JSON, and fail with one line
/// on stderr and a non-zero exit code.
#[test]
fn cli_client() {
    let (_dir, node) = node();
    let chorus = |args: &[&str]| {
        std::process::Command::new(CHORUS)
            .args(args)
            .args(["--url", &node.url])
            .output()
            .unwrap()
    };
    let out = chorus(&["put", "cli", "k", r#"{"a":1}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = chorus(&["get", "cli", "k"]);
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read["value"], json!({"a": 1}));
    let context = read["context"].as_str().unwrap();
    assert!(
        chorus(&["put", "cli", "k", "2", "--context", context])
            .status
            .success()
    );
    let table = chorus(&["status"]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("alpha"));
    let json: Value = serde_json::from_slice(&chorus(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["node"], "alpha");
    assert!(chorus(&["conflicts"]).status.success());
    let ctx =
        serde_json::from_slice::<Value>(&chorus(&["get", "cli", "k"]).stdout).unwrap()["context"]
            .clone();
    assert!(
        chorus(&["delete", "cli", "k", "--context", ctx.as_str().unwrap()])
            .status
            .success()
    );

    let missing = chorus(&["get", "cli", "k"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    let bad = chorus(&["put", "cli", "k", "{oops"]);
    assert!(!bad.status.success());

    // Without --context, put and delete replace what the node shows: two puts leave
    // one version, a delete leaves none; --blind writes concurrently (siblings).
    assert!(chorus(&["put", "cli", "r", "1"]).status.success());
    assert!(chorus(&["put", "cli", "r", "2"]).status.success());
    assert_eq!(versions(&node.url, "cli", "r"), [json!(2)]);
    assert!(
        chorus(&["put", "cli", "r", "3", "--blind"])
            .status
            .success()
    );
    assert_eq!(versions(&node.url, "cli", "r").len(), 2);
    assert!(chorus(&["delete", "cli", "r"]).status.success());
    assert_eq!(get(&format!("{}/v1/docs/cli/r", node.url)).status, 404);

    // list, changes, collections.
    assert!(chorus(&["put", "cli", "a/1", "{}"]).status.success());
    let listed = String::from_utf8(chorus(&["list", "cli", "--prefix", "a/"]).stdout).unwrap();
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["a/1"]);
    let feed = String::from_utf8(chorus(&["changes", "--collection", "cli"]).stdout).unwrap();
    let keys: Vec<String> = feed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        keys,
        ["k", "r", "a/1"],
        "each document once, by latest change: {feed}"
    );
    assert!(
        chorus(&["collections", "set", "cli", "--policy", "lww"])
            .status
            .success()
    );
    let shown: Value =
        serde_json::from_slice(&chorus(&["collections", "show", "cli"]).stdout).unwrap();
    assert_eq!(shown["policy"], "lww");
    let table = String::from_utf8(chorus(&["collections"]).stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("cli") && l.contains("lww")),
        "{table}"
    );

    // CRDT operations, and their refusal in one line.
    let crdt = r#"{"policy":"crdt"}"#;
    assert_eq!(
        put(&format!("{}/v1/collections/tally", node.url), crdt).status,
        200
    );
    let out = chorus(&[
        "ops",
        "tally",
        "t",
        r#"[{"op":"counter.add","path":"/n","by":2}]"#,
    ]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["value"], json!({"n": 2}));
    let refused = chorus(&[
        "ops",
        "tally",
        "t",
        r#"[{"op":"set.add","path":"/n","value":1}]"#,
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(
        stderr.contains("counter") && stderr.lines().count() == 1,
        "{stderr}"
    );

    for sub in [
        "serve",
        "get",
        "put",
        "delete",
        "ops",
        "status",
        "conflicts",
        "list",
        "changes",
        "collections",
        "token",
        "cluster",
    ] {
        let help = std::process::Command::new(CHORUS)
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(
            help.status.success() && !help.stdout.is_empty(),
            "{sub} --help"
        );
    }
}

/// A bulk write answers every item in order, once durable: good items are written
/// (with their contexts, deletes included), a bad item gets its own error and the
/// others still commit; a bulk read answers from one snapshot; requests beyond the
/// limits are refused whole and change nothing.
#[test]
fn bulk_writes_and_reads() {
    let (_dir, node) = node();
    let base = node.url.clone();
    put(&format!("{base}/v1/docs/b/old"), r#"{"v":0}"#);
    let context = get(&format!("{base}/v1/docs/b/old")).body["context"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"docs": [
        {"key": "a", "value": {"n": 1}},
        {"key": "old", "value": {"v": 1}, "context": context},
        {"key": "bad", "value": {"x": 1}, "deleted": true},
        {"key": "c", "value": [1, 2]},
        {"key": "old2", "deleted": true},
        {"key": "", "value": 1},
    ]});
    let reply = call(
        "POST",
        &format!("{base}/v1/bulk/b"),
        Some(body.to_string().as_bytes()),
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = reply.body["results"].as_array().unwrap();
    let keys: Vec<&str> = results.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a", "old", "bad", "c", "old2", ""]);
    assert!(results[0]["context"].is_string());
    assert_eq!(results[2]["error"], "bad_request", "{}", results[2]);
    assert_eq!(results[5]["error"], "bad_request", "{}", results[5]);
    assert_eq!(
        versions(&base, "b", "old"),
        [json!({"v": 1})],
        "the context replaced it"
    );
    assert_eq!(
        get(&format!("{base}/v1/docs/b/c")).body["value"],
        json!([1, 2])
    );

    let read = json!({"keys": ["a", "missing", "c"]});
    let got = call(
        "POST",
        &format!("{base}/v1/bulk/b/get"),
        Some(read.to_string().as_bytes()),
        &[],
    );
    assert_eq!(got.status, 200, "{}", got.text);
    let docs = got.body["docs"].as_array().unwrap();
    assert_eq!(docs[0]["value"], json!({"n": 1}));
    assert_eq!(docs[1]["error"], "not_found");
    assert!(docs[1]["context"].is_string());
    assert_eq!(docs[2]["key"], "c");

    let before = digest(&base);
    for bad in [
        "{\"docs\": [".to_owned(),
        json!({"documents": []}).to_string(),
    ] {
        let reply = call(
            "POST",
            &format!("{base}/v1/bulk/b"),
            Some(bad.as_bytes()),
            &[],
        );
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert!(reply.body["message"].is_string(), "{}", reply.text);
    }
    assert_eq!(digest(&base), before);

    // More items than a bulk request takes (on a node whose body limit lets them in).
    let roomy_dir = tempfile::tempdir().unwrap();
    let roomy = NodeProcess::start(
        &roomy_dir.path().join("data"),
        &["--body-bytes-max", "4000000"],
    );
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"key": format!("k{i}"), "value": 1}))
        .collect();
    let body = json!({"docs": too_many}).to_string();
    let reply = call(
        "POST",
        &format!("{}/v1/bulk/b", roomy.url),
        Some(body.as_bytes()),
        &[],
    );
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("10000"), "{}", reply.text);
    let listed = get(&format!("{}/v1/docs/b", roomy.url)).body;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 0, "{listed}");
    // Exactly the limit is taken, every item written.
    let at_limit: Vec<Value> = (0..10_000)
        .map(|i| json!({"key": format!("k{i}"), "value": 1}))
        .collect();
    let body = json!({"docs": at_limit}).to_string();
    let reply = call(
        "POST",
        &format!("{}/v1/bulk/b", roomy.url),
        Some(body.as_bytes()),
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = reply.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().all(|r| r["context"].is_string()));
}

/// Browser pages of an allowed origin get CORS answers (a preflight too, before any
/// token check); other origins get none. `GET /` says what the node is. A node that
/// cannot listen leaves no data folder behind.
#[test]
fn cors_the_root_and_a_failed_bind() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &dir.path().join("data"),
        &["--cors-origin", "https://app.example", "--auth"],
    );
    let preflight = request(
        "OPTIONS",
        &format!("{}/v1/docs/c/k", node.url),
        None,
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "PUT"),
        ],
    )
    .unwrap();
    assert_eq!(preflight.status, 204, "{}", preflight.text);
    let token = call(
        "POST",
        &format!("{}/v1/tokens", node.url),
        Some(br#"{"name":"root","rights":"admin"}"#),
        &[],
    )
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let answer = |origin: &str| {
        agent
            .get(&format!("{}/", node.url))
            .header("Origin", origin)
            .header("Authorization", &bearer)
            .call()
            .unwrap()
    };
    let allowed = answer("https://app.example");
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let root: Value = serde_json::from_str(&allowed.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(root["node"], "local");
    let other = answer("https://evil.example");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // The port is taken by the node above: a second node fails and creates nothing.
    let address = node.url.trim_start_matches("http://").to_owned();
    let fresh = dir.path().join("never");
    let out = std::process::Command::new(CHORUS)
        .args(["serve", "--http", &address, "--data"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    assert!(!fresh.exists(), "a data folder was left behind");
}

/// `chorus export` writes settings and documents as JSON lines (siblings as
/// versions, deleted documents left out); `chorus import` of them into an empty node
/// gives the same documents and settings.
#[test]
fn export_then_import_gives_the_same_documents() {
    let (_a_dir, a) = node();
    let (_b_dir, b) = node();
    put(
        &format!("{}/v1/collections/people", a.url),
        r#"{"policy":"lww"}"#,
    );
    put(
        &format!("{}/v1/docs/people/ada", a.url),
        r#"{"name":"Ada"}"#,
    );
    put(&format!("{}/v1/docs/notes/n1", a.url), r#"{"v":1}"#);
    put(&format!("{}/v1/docs/notes/n1", a.url), r#"{"v":2}"#); // blind: siblings
    put(&format!("{}/v1/docs/notes/gone", a.url), "1");
    let gone = get(&format!("{}/v1/docs/notes/gone", a.url)).body["context"].clone();
    call(
        "DELETE",
        &format!("{}/v1/docs/notes/gone", a.url),
        None,
        &[("Chorus-Context", gone.as_str().unwrap())],
    );
    let exported = std::process::Command::new(CHORUS)
        .args(["export", "--url", &a.url])
        .output()
        .unwrap();
    assert!(exported.status.success(), "{exported:?}");
    let lines = String::from_utf8(exported.stdout.clone()).unwrap();
    assert_eq!(lines.lines().count(), 3, "settings, ada, n1:\n{lines}");
    let mut import = std::process::Command::new(CHORUS)
        .args(["import", "--url", &b.url])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    import
        .stdin
        .take()
        .unwrap()
        .write_all(&exported.stdout)
        .unwrap();
    assert!(import.wait().unwrap().success());
    assert_eq!(
        get(&format!("{}/v1/collections/people", b.url)).body["policy"],
        "lww"
    );
    assert_eq!(versions(&b.url, "people", "ada"), [json!({"name": "Ada"})]);
    let mut n1 = versions(&b.url, "notes", "n1");
    n1.sort_by_key(|v| v.to_string());
    assert_eq!(n1, [json!({"v": 1}), json!({"v": 2})]);
    assert_eq!(get(&format!("{}/v1/docs/notes/gone", b.url)).status, 404);
}

/// The head of the answer to a raw `GET path` sent with `headers`, lower-cased.
fn answer_head(base: &str, path: &str, headers: &str) -> String {
    use std::io::{Read, Write};
    let at = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(at).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {at}\r\n{headers}\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Answers are gzipped for clients that accept it, and only for them; event
/// streams are not (each event must leave at once).
#[test]
fn answers_are_compressed_for_clients_that_accept_it() {
    let (_dir, node) = node();
    for k in 0..20 {
        put(
            &format!("{}/v1/docs/c/k{k}", node.url),
            r#"{"text":"some words"}"#,
        );
    }
    let page = "/v1/docs/c?include_docs=true";
    let gzip = "Accept-Encoding: gzip\r\n";
    assert!(answer_head(&node.url, page, gzip).contains("content-encoding: gzip"));
    assert!(!answer_head(&node.url, page, "").contains("content-encoding"));
    let stream = answer_head(
        &node.url,
        "/v1/changes?since=0",
        "Accept-Encoding: gzip\r\nAccept: text/event-stream\r\n",
    );
    assert!(stream.contains("text/event-stream"), "{stream}");
    assert!(!stream.contains("content-encoding"), "{stream}");
    // The Rust client asks for it and reads it back as written.
    let read = get(&format!("{}{page}", node.url));
    assert_eq!(read.body["docs"].as_array().unwrap().len(), 20);
}
