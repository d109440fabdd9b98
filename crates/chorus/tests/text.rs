//! Text and list fields across real `chorus serve` processes: two writers type into
//! one text on two leaders at once, at the same place and at different places,
//! while the link between the leaders is cut and restored; both leaders end with one
//! text holding each writer's words intact. Also: positions count in the read an
//! edit names (`Chorus-Context`), lists, and bad edits refused with nothing changed.

mod support;

use serde_json::{Value, json};
use std::ops::Range;
use std::time::Duration;
use support::*;

const DEADLINE: Duration = Duration::from_secs(60);
const MESH: &str = "topology = \"mesh\"\n";
const CUT: &str = "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true\n";

fn doc_url(url: &str, key: &str) -> String {
    format!("{url}/v1/docs/notes/{key}")
}

/// Posts operations on `key`, made against the read `context` (if any).
fn edit(url: &str, key: &str, context: Option<&str>, ops: &Value) -> Reply {
    let headers: Vec<(&str, &str)> = context.map(|c| ("Chorus-Context", c)).into_iter().collect();
    call(
        "POST",
        &format!("{}/ops", doc_url(url, key)),
        Some(ops.to_string().as_bytes()),
        &headers,
    )
}

/// The text at `/text` of `key` (empty when there is none yet) and the read's
/// context.
fn read_text(url: &str, key: &str) -> (String, String) {
    let read = get(&doc_url(url, key));
    assert!([200, 404].contains(&read.status), "{}", read.text);
    (
        read.body["value"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        read.body["context"].as_str().unwrap().to_owned(),
    )
}

fn crdt_notes(cluster: &Cluster) {
    set_policy(&cluster.url(0), "notes", "crdt");
    wait_until("both nodes to have the crdt setting", DEADLINE, || {
        (0..2).all(|i| {
            get(&format!("{}/v1/collections/notes", cluster.url(i))).body["policy"] == "crdt"
        })
    });
}

/// One writer: reads the text, finds the end of what it typed so far (after
/// `anchor` at first), and types its next word there: as one write of one insert per
/// character (positions in its read plus its own edits before), or keystroke by
/// keystroke, each a write against a fresh read. Returns what it typed.
fn type_words(url: String, name: char, anchor: String, words: Range<usize>) -> String {
    let mut typed = String::new();
    for w in words {
        let word = format!(" {name}{w}{name}");
        let cursor = |text: &str, typed: &str| -> u64 {
            let found = if typed.is_empty() {
                text.find(&anchor).map(|at| at + anchor.len())
            } else {
                assert_eq!(
                    text.matches(typed).count(),
                    1,
                    "{typed:?} whole once in {text:?}"
                );
                text.find(typed).map(|at| at + typed.len())
            };
            let byte = found.unwrap_or_else(|| panic!("{typed:?} after {anchor:?} in {text:?}"));
            text[..byte].chars().count() as u64
        };
        if w % 2 == 0 {
            let (text, context) = read_text(&url, "doc");
            let at = cursor(&text, &typed);
            let ops: Vec<Value> = word
                .chars()
                .enumerate()
                .map(|(k, c)| {
                    json!({"op": "text.insert", "path": "/text", "pos": at + k as u64,
                           "text": c.to_string()})
                })
                .collect();
            let reply = edit(&url, "doc", Some(&context), &Value::Array(ops));
            assert_eq!(reply.status, 200, "{}", reply.text);
            typed.push_str(&word);
        } else {
            for c in word.chars() {
                let (text, context) = read_text(&url, "doc");
                let at = cursor(&text, &typed);
                let op = json!([{"op": "text.insert", "path": "/text", "pos": at,
                                 "text": c.to_string()}]);
                let reply = edit(&url, "doc", Some(&context), &op);
                assert_eq!(reply.status, 200, "{}", reply.text);
                typed.push(c);
            }
        }
    }
    typed
}

/// Both writers type concurrently, the words numbered `words` each, at `anchors`.
fn type_together(cluster: &Cluster, anchors: [&str; 2], words: Range<usize>) -> [String; 2] {
    let writers: Vec<_> = [('a', 0), ('b', 1)]
        .into_iter()
        .map(|(name, node)| {
            let url = cluster.url(node);
            let anchor = anchors[node].to_owned();
            let words = words.clone();
            std::thread::spawn(move || type_words(url, name, anchor, words))
        })
        .collect();
    let mut typed = writers.into_iter().map(|w| w.join().unwrap());
    [typed.next().unwrap(), typed.next().unwrap()]
}

/// Waits until both leaders show one text; returns it.
fn converged_text(cluster: &Cluster) -> String {
    let mut text = String::new();
    wait_until("both leaders to show one text", DEADLINE, || {
        let (a, b) = (
            read_text(&cluster.url(0), "doc").0,
            read_text(&cluster.url(1), "doc").0,
        );
        text = a.clone();
        a == b
    });
    text
}

/// Goal: concurrent typing on two leaders converges with every word intact, while
/// the link between them is up, cut, and restored. Method: two writers type words
/// (one write per word, and keystroke by keystroke) at the same place, then at two
/// places; the link is cut mid-way (the leaders cannot exchange anything) and
/// restored; both leaders end with the same text, which holds each writer's words
/// whole and once, the text they started from around them; a live subscriber on one
/// leader, applying what it is sent, ends with that text too.
#[test]
fn two_writers_on_two_leaders_type_through_a_cut_link() {
    let mut cluster = Cluster::start(2, MESH);
    crdt_notes(&cluster);
    let start = json!([{"op": "text.insert", "path": "/text", "pos": 0, "text": "Hello, world."}]);
    assert_eq!(edit(&cluster.url(0), "doc", None, &start).status, 200);
    wait_until("n1 to have the text", DEADLINE, || {
        read_text(&cluster.url(1), "doc").0 == "Hello, world."
    });
    // A live subscriber on n1 follows everything, from both leaders.
    let mut follower = LiveClient::connect(&cluster.url(1), "doc");

    // Linked, at the same place (after "Hello,").
    let same = type_together(&cluster, ["Hello,", "Hello,"], 0..4);
    let text = converged_text(&cluster);
    for typed in &same {
        assert_eq!(
            text.matches(typed.as_str()).count(),
            1,
            "{typed:?} in {text:?}"
        );
    }

    // Cut: each leader takes its writer's words alone, at its own place.
    cluster.reconfigure(CUT, &[0, 1]);
    wait_until("the link to be down", DEADLINE, || {
        cluster.links(0).2.is_empty() && cluster.links(1).2.is_empty()
    });
    let apart = type_together(&cluster, [same[0].as_str(), " world"], 4..8);
    let (on_0, on_1) = (
        read_text(&cluster.url(0), "doc").0,
        read_text(&cluster.url(1), "doc").0,
    );
    assert!(
        on_0.contains(&apart[0]) && !on_0.contains(&apart[1]),
        "{on_0:?}"
    );
    assert!(
        on_1.contains(&apart[1]) && !on_1.contains(&apart[0]),
        "{on_1:?}"
    );

    // Restored: one text, every word whole and once, in each writer's order.
    cluster.reconfigure(MESH, &[0, 1]);
    let text = converged_text(&cluster);
    for typed in same.iter().chain(&apart) {
        assert_eq!(
            text.matches(typed.as_str()).count(),
            1,
            "{typed:?} in {text:?}"
        );
    }
    let whole_a = format!("{}{}", same[0], apart[0]);
    assert_eq!(text.matches(&whole_a).count(), 1, "{whole_a:?} in {text:?}");
    let rest: String = [&same[0], &same[1], &apart[0], &apart[1]]
        .iter()
        .fold(text.clone(), |t, typed| t.replacen(typed.as_str(), "", 1));
    assert_eq!(rest, "Hello, world.");
    cluster.wait_converged(DEADLINE);
    follower.follow_until(&text);
}

/// Positions count in the read named by `Chorus-Context`: an edit made against an
/// older read lands where it was meant, not at today's position; past the end of
/// that read, it is refused (409) and changes nothing. Lists render as arrays, and
/// a deleted document with a text is a 404.
#[test]
fn edits_land_in_the_read_they_name_and_bad_ones_change_nothing() {
    let cluster = Cluster::start(1, MESH);
    let url = cluster.url(0);
    set_policy(&url, "notes", "crdt");
    let first = json!([{"op": "text.insert", "path": "/text", "pos": 0, "text": "brown fox"},
                       {"op": "list.insert", "path": "/tags", "pos": 0, "value": {"k": 1}},
                       {"op": "list.insert", "path": "/tags", "pos": 0, "value": "x"}]);
    assert_eq!(edit(&url, "doc", None, &first).status, 200);
    let (text, old) = read_text(&url, "doc");
    assert_eq!(text, "brown fox");
    // Someone else puts a word in front.
    let front = json!([{"op": "text.insert", "path": "/text", "pos": 0, "text": "The "}]);
    assert_eq!(edit(&url, "doc", None, &front).status, 200);
    // Made against the old read: "quick " before "brown" (position 0 there), and
    // " jumps" at its end (position 9 there; 13 today).
    let late = json!([{"op": "text.insert", "path": "/text", "pos": 0, "text": "quick "},
                      {"op": "text.insert", "path": "/text", "pos": 15, "text": " jumps"},
                      {"op": "list.delete", "path": "/tags", "pos": 1, "len": 1}]);
    let reply = edit(&url, "doc", Some(&old), &late);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let read = get(&doc_url(&url, "doc")).body;
    assert_eq!(
        read["value"],
        json!({"text": "The quick brown fox jumps", "tags": ["x"]})
    );

    // A long paste (over the 64 KiB a set element may take) is one insert.
    let paste = "x".repeat(100_000);
    let pasted = json!([{"op": "text.insert", "path": "/pasted", "pos": 0, "text": paste}]);
    assert_eq!(edit(&url, "doc", None, &pasted).status, 200);
    let too_big = json!([{"op": "list.insert", "path": "/tags", "pos": 0, "value": paste}]);
    assert_eq!(edit(&url, "doc", None, &too_big).status, 400);

    let before = get(&doc_url(&url, "doc")).body;
    for (ops, status, code) in [
        (
            json!([{"op": "text.insert", "path": "/text", "pos": 10, "text": "!"}]),
            409,
            "beyond_end",
        ),
        (
            json!([{"op": "text.delete", "path": "/text", "pos": 0, "len": 99}]),
            409,
            "beyond_end",
        ),
        (
            json!([{"op": "text.insert", "path": "/tags", "pos": 0, "text": "!"}]),
            400,
            "type_mismatch",
        ),
        (
            json!([{"op": "text.insert", "path": "/text", "pos": 0, "text": ""}]),
            400,
            "bad_request",
        ),
        (
            json!([{"op": "list.insert", "path": "/tags", "pos": -1, "value": 1}]),
            400,
            "bad_request",
        ),
    ] {
        // The first two against the old read (9 characters), the rest against now.
        let context = (status == 409).then_some(old.as_str());
        let reply = edit(&url, "doc", context, &ops);
        assert_eq!(reply.status, status, "{ops}: {}", reply.text);
        assert_eq!(reply.body["error"], code, "{ops}: {}", reply.text);
    }
    assert_eq!(
        get(&doc_url(&url, "doc")).body,
        before,
        "refused edits change nothing"
    );

    let context = before["context"].as_str().unwrap();
    let deleted = call(
        "DELETE",
        &doc_url(&url, "doc"),
        None,
        &[("Chorus-Context", context)],
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(get(&doc_url(&url, "doc")).status, 404);
}

/// A client's replica of one text, fed by a live subscription.
struct LiveClient {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    text: chorus_text::Text,
    context: String,
}

impl LiveClient {
    /// Subscribes to `key` and seeds the replica from the snapshot.
    fn connect(url: &str, key: &str) -> LiveClient {
        let ws = format!("{}/live", doc_url(url, key)).replace("http://", "ws://");
        let (socket, _) = tungstenite::connect(ws).unwrap();
        let mut client = LiveClient {
            socket,
            text: chorus_text::Text::new(),
            context: String::new(),
        };
        let snapshot = client.receive();
        client.seed(&snapshot);
        client
    }

    /// Takes a snapshot's text as the replica.
    fn seed(&mut self, snapshot: &Value) {
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        use base64::Engine;
        let encoded = snapshot["sequences"]["/text"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .unwrap();
        self.text = chorus_text::Text::decode(&bytes).unwrap();
        assert_eq!(self.text.to_string(), snapshot["doc"]["value"]["text"]);
        self.context = snapshot["context"].as_str().unwrap().to_owned();
    }

    /// Applies what it is sent (changes, or snapshots after a state transfer) until
    /// its text is `wanted`.
    fn follow_until(&mut self, wanted: &str) {
        let tungstenite::stream::MaybeTlsStream::Plain(tcp) = self.socket.get_ref() else {
            unreachable!("plain ws://")
        };
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        while self.text.to_string() != wanted {
            let message = self.receive();
            match message["type"].as_str() {
                Some("snapshot") => self.seed(&message),
                _ => {
                    self.apply(&message);
                }
            }
        }
    }

    fn receive(&mut self) -> Value {
        loop {
            match self.socket.read().unwrap() {
                tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                _ => continue,
            }
        }
    }

    fn send(&mut self, message: &Value) {
        let text = tungstenite::Message::text(message.to_string());
        self.socket.send(text).unwrap();
    }

    /// Applies a `change` to the replica; returns its dot.
    fn apply(&mut self, change: &Value) -> String {
        assert_eq!(change["type"], "change", "{change}");
        for c in change["changes"].as_array().unwrap() {
            assert_eq!(c["action"], "text.ops", "{change}");
            for op in c["value"].as_array().unwrap() {
                self.text.apply(&text_op(op)).unwrap();
            }
        }
        self.context = change["context"].as_str().unwrap().to_owned();
        change["dot"].as_str().unwrap().to_owned()
    }
}

/// A text operation as the feed and live subscriptions show it.
fn text_op(op: &Value) -> chorus_text::Op {
    let id = |v: &Value| -> Option<chorus_text::Id> {
        let (node, seq) = v.as_str()?.split_once(':')?;
        Some(chorus_text::Id {
            agent: u64::from_str_radix(node, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    };
    match op.get("insert") {
        Some(content) => chorus_text::Op::Insert {
            id: id(&op["id"]).unwrap(),
            origin_left: id(&op["left"]),
            origin_right: id(&op["right"]),
            content: content.as_str().unwrap().to_owned(),
        },
        None => chorus_text::Op::Delete {
            id: id(&op["id"]).unwrap(),
            len: op["delete"].as_u64().unwrap(),
            by: id(&op["by"]).unwrap(),
        },
    }
}

/// Goal: a live subscriber keeps its own replica of a text in step with the node
/// from the operations it is sent, never re-reading the document, and writes on the
/// same connection. Method: a WebSocket client seeds a replica from the snapshot;
/// edits posted over HTTP, and its own sent on the socket (acknowledged with their
/// dot), arrive as changes that it applies: its text is the node's each time. A bad
/// message gets an error naming its id, and changes nothing; one over 1 MiB closes
/// the socket and changes nothing. A stream without the upgrade (SSE) starts with the
/// same snapshot.
#[test]
fn a_live_subscriber_follows_and_edits_a_text() {
    let cluster = Cluster::start(1, MESH);
    let url = cluster.url(0);
    set_policy(&url, "notes", "crdt");
    let hello = json!([{"op": "text.insert", "path": "/text", "pos": 0, "text": "Hello"}]);
    assert_eq!(edit(&url, "doc", None, &hello).status, 200);
    let mut client = LiveClient::connect(&url, "doc");
    assert_eq!(client.text.to_string(), "Hello");

    for (pos, typed) in [(5, " world"), (0, "Oh, ")] {
        let ops = json!([{"op": "text.insert", "path": "/text", "pos": pos, "text": typed}]);
        assert_eq!(edit(&url, "doc", None, &ops).status, 200);
        let change = client.receive();
        client.apply(&change);
        assert_eq!(client.text.to_string(), read_text(&url, "doc").0);
    }
    let delete = json!([{"op": "text.delete", "path": "/text", "pos": 0, "len": 4}]);
    assert_eq!(edit(&url, "doc", None, &delete).status, 200);
    let change = client.receive();
    client.apply(&change);
    assert_eq!(client.text.to_string(), "Hello world");

    // Its own edit, against the context of the last change it applied.
    let context = client.context.clone();
    client.send(&json!({"id": 7, "context": context,
                        "ops": [{"op": "text.insert", "path": "/text", "pos": 11, "text": "!"}]}));
    let (mut acked, mut applied) = (None, None);
    while acked.is_none() || applied.is_none() {
        let message = client.receive();
        match message["type"].as_str() {
            Some("ack") => {
                assert_eq!(message["id"], 7, "{message}");
                acked = Some(message["dot"].as_str().unwrap().to_owned());
            }
            _ => applied = Some(client.apply(&message)),
        }
    }
    assert_eq!(acked, applied, "the change with the ack's dot is the edit");
    assert_eq!(client.text.to_string(), "Hello world!");
    assert_eq!(read_text(&url, "doc").0, "Hello world!");

    for (bad, code) in [
        (
            json!({"id": "x", "ops": [{"op": "text.insert", "path": "/text", "pos": 99, "text": "?"}]}),
            "beyond_end",
        ),
        (json!({"id": "y", "ops": "none"}), "bad_request"),
        (
            json!({"id": "z", "ops": [], "context": "garbage"}),
            "bad_request",
        ),
    ] {
        client.send(&bad);
        let answer = client.receive();
        assert_eq!(
            (&answer["type"], &answer["id"]),
            (&json!("error"), &bad["id"]),
            "{answer}"
        );
        assert_eq!(answer["error"], code, "{answer}");
    }
    assert_eq!(read_text(&url, "doc").0, "Hello world!");

    // A message up to 1 MiB is read (and answered); a longer one closes the socket,
    // having changed nothing.
    let near = "x".repeat(1_000_000);
    client.send(&json!({"id": "near", "ops": near}));
    let answer = client.receive();
    assert_eq!(
        (&answer["id"], &answer["error"]),
        (&json!("near"), &json!("bad_request"))
    );
    let over = "x".repeat(1_100_000);
    client.send(&json!({"id": "over", "ops": [{"op": "text.insert", "path": "/text", "pos": 0, "text": over}]}));
    let closed = loop {
        match client.socket.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => break true,
            Ok(tungstenite::Message::Text(text)) => panic!("answered: {text}"),
            Ok(_) => continue,
        }
    };
    assert!(closed);
    assert_eq!(read_text(&url, "doc").0, "Hello world!");

    // Server-sent events: the same snapshot first.
    use std::io::{BufRead, BufReader, Write};
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /v1/docs/notes/doc/live HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let data = BufReader::new(stream)
        .lines()
        .map(Result::unwrap)
        .find_map(|line| line.strip_prefix("data:").map(str::to_owned))
        .unwrap();
    let snapshot: Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(
        snapshot["doc"]["value"]["text"], "Hello world!",
        "{snapshot}"
    );
}
