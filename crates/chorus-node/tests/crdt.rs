//! CRDT documents through the library API of real nodes: operations, what reads
//! show, replication between nodes by their op logs and by state transfer, and the
//! refusals (type mismatch, missing rights, plain writes) that change nothing.

use chorus_node::crdt::{Field, Kind, OpError, Operation, Update};
use chorus_node::crdt_json::render;
use chorus_node::limits::CRDT_VALUE_BYTES_MAX;
use chorus_node::{
    CollectionConfig, Entry, Node, NodeConfig, NodeId, Policy, ReplicationStep, StateCursor,
    WriteAck, WriteError,
};
use serde_json::{Value, json};

fn temp_node() -> (tempfile::TempDir, Node) {
    temp_node_with(None)
}

fn temp_node_with(id: Option<u64>) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        node_id: id.map(NodeId),
        ..NodeConfig::default()
    };
    let node = Node::open(&dir.path().join("node.redb"), config).unwrap();
    let config = CollectionConfig {
        policy: Policy::Crdt,
        ..CollectionConfig::default()
    };
    node.set_collection("carts", &config).unwrap();
    (dir, node)
}

fn op(path: &str, update: Update) -> Operation {
    Operation {
        path: path.split('/').skip(1).map(str::to_owned).collect(),
        update,
    }
}

/// Applies `operations` (path, update) to cart `c1` on `node`.
fn update(node: &Node, operations: &[(&str, Update)]) -> Result<WriteAck, WriteError> {
    let operations = operations.iter().map(|(p, u)| op(p, u.clone())).collect();
    node.update("carts", "c1", operations)
}

fn json_of(node: &Node, key: &str) -> Value {
    let doc = node.get("carts", key).unwrap();
    doc.value()
        .map_or(Value::Null, |v| serde_json::from_slice(v).unwrap())
}

/// Merges `from`'s whole key state into `to`, as the first part of a state transfer
/// would (not adopted: `to`'s vector does not count it yet).
fn merge_whole_state(from: &Node, to: &Node) {
    let all_buckets: Vec<u8> = (0..=u8::MAX).collect();
    let chunk = from
        .replica()
        .read_state(StateCursor::KeysFromStart, 1000, usize::MAX, &all_buckets)
        .unwrap();
    to.replica()
        .replicate_blocking(ReplicationStep::MergeState {
            keys: chunk.keys,
            conflicts: chunk.conflicts,
        })
        .unwrap();
}

/// Hands `from`'s whole log to `to` (entries `to` has are skipped by its vector).
fn sync(from: &Node, to: &Node) {
    let entries: Vec<Entry> = from
        .replica()
        .read_log(0, 100_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let outcome = to.replica().apply_remote_blocking(entries).unwrap();
    assert!(outcome.waiting.is_empty());
}

/// Concurrent increments, set edits and register writes on two nodes converge to
/// the same document, with the exact totals, once each has the other's log.
#[test]
fn concurrent_operations_converge() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    sync(&a, &b);
    update(
        &a,
        &[
            ("/n", Update::CounterAdd(5)),
            ("/tags", Update::SetAdd(b"\"x\"".to_vec())),
        ],
    )
    .unwrap();
    sync(&a, &b);
    // Concurrently: a removes "x" and adds 2; b adds "x" again (add wins) and 3.
    update(
        &a,
        &[
            ("/tags", Update::SetRemove(b"\"x\"".to_vec())),
            ("/n", Update::CounterAdd(2)),
        ],
    )
    .unwrap();
    update(
        &b,
        &[
            ("/tags", Update::SetAdd(b"\"x\"".to_vec())),
            ("/n", Update::CounterAdd(3)),
        ],
    )
    .unwrap();
    update(&b, &[("/m/title", Update::LwwSet(b"\"hi\"".to_vec()))]).unwrap();
    sync(&a, &b);
    sync(&b, &a);
    let expected = json!({"n": 10, "tags": ["x"], "m": {"title": "hi"}});
    assert_eq!(json_of(&a, "c1"), expected);
    assert_eq!(json_of(&b, "c1"), expected);
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    // The typed document is there for the library too.
    let doc = a.crdt_document("carts", "c1").unwrap().unwrap();
    assert!(matches!(
        doc.get(&["n".into()], Kind::Counter),
        Some(Field::Counter(_))
    ));
    assert_eq!(render(&doc), expected);
}

/// A type mismatch, a bad path, missing rights and plain document writes are
/// refused and change nothing.
#[test]
fn refusals_change_nothing() {
    let (_dir, node) = temp_node();
    update(
        &node,
        &[
            ("/n", Update::CounterAdd(1)),
            ("/stock", Update::BoundedAdd(2)),
        ],
    )
    .unwrap();
    let before = node.digest().unwrap();
    let refusals = [
        vec![op("/n", Update::SetAdd(b"1".to_vec()))],
        vec![op("/n/deeper", Update::CounterAdd(1))],
        // The first operation is fine, the second refused: neither applies.
        vec![
            op("/n", Update::CounterAdd(1)),
            op("/stock", Update::BoundedAdd(-3)),
        ],
        vec![op("/stock", Update::Remove)],
    ];
    for operations in refusals {
        let refused = node.update("carts", "c1", operations.clone());
        assert!(
            matches!(refused, Err(WriteError::Refused(_))),
            "{operations:?}: {refused:?}"
        );
    }
    match update(&node, &[("/stock", Update::BoundedAdd(-3))]) {
        Err(WriteError::Refused(OpError::InsufficientRights { held, needed, .. })) => {
            assert_eq!((held, needed), (2, 3));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        update(&node, &[("", Update::CounterAdd(1))]),
        Err(WriteError::Refused(OpError::BadPath { .. }))
    ));
    assert!(matches!(
        node.put("carts", "c1", b"{}", None),
        Err(WriteError::WholeCrdtDocument { .. })
    ));
    assert!(matches!(
        node.delete("carts", "c1", None),
        Err(WriteError::Refused(OpError::BoundedNotRemovable { .. }))
    ));
    assert!(matches!(
        node.update("plain", "k", vec![op("/n", Update::CounterAdd(1))]),
        Err(WriteError::NotCrdt { .. })
    ));
    // A value larger than a CRDT document takes (every later operation would
    // rewrite it): refused; one at the bound is taken elsewhere below.
    let large = format!("\"{}\"", "x".repeat(CRDT_VALUE_BYTES_MAX - 1)).into_bytes();
    for update in [Update::SetAdd(large.clone()), Update::LwwSet(large.clone())] {
        let refused = node.update("carts", "c1", vec![op("/big", update)]);
        assert!(
            matches!(&refused, Err(WriteError::Invalid(m)) if m.contains("plain document")),
            "{refused:?}"
        );
    }
    assert_eq!(node.digest().unwrap(), before);
    let fitting = format!("\"{}\"", "x".repeat(CRDT_VALUE_BYTES_MAX - 2)).into_bytes();
    node.update("carts", "other", vec![op("/big", Update::SetAdd(fitting))])
        .unwrap();
    assert_eq!(json_of(&node, "c1"), json!({"n": 1, "stock": 2}));
    // Spending what is held works, down to zero and no further.
    update(&node, &[("/stock", Update::BoundedAdd(-2))]).unwrap();
    assert_eq!(json_of(&node, "c1"), json!({"n": 1, "stock": 0}));
}

/// Rights move between nodes: b cannot spend until a transfers some to it.
#[test]
fn bounded_counter_rights_transfer() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    update(&a, &[("/stock", Update::BoundedAdd(10))]).unwrap();
    sync(&a, &b);
    assert!(matches!(
        update(&b, &[("/stock", Update::BoundedAdd(-1))]),
        Err(WriteError::Refused(OpError::InsufficientRights {
            held: 0,
            ..
        }))
    ));
    update(
        &a,
        &[(
            "/stock",
            Update::BoundedTransfer {
                to: b.node_id(),
                by: 4,
            },
        )],
    )
    .unwrap();
    sync(&a, &b);
    update(&b, &[("/stock", Update::BoundedAdd(-4))]).unwrap();
    update(&a, &[("/stock", Update::BoundedAdd(-6))]).unwrap();
    sync(&a, &b);
    sync(&b, &a);
    assert_eq!(json_of(&a, "c1"), json!({"stock": 0}));
    assert_eq!(json_of(&b, "c1"), json!({"stock": 0}));
}

/// A delete removes what its node had seen; an add made concurrently elsewhere
/// survives it, on both nodes.
#[test]
fn delete_is_observed_remove() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    update(&a, &[("/tags", Update::SetAdd(b"1".to_vec()))]).unwrap();
    sync(&a, &b);
    a.delete("carts", "c1", None).unwrap();
    assert!(a.get("carts", "c1").unwrap().is_absent());
    update(&b, &[("/tags", Update::SetAdd(b"2".to_vec()))]).unwrap();
    sync(&a, &b);
    sync(&b, &a);
    assert_eq!(json_of(&a, "c1"), json!({"tags": [2]}));
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    assert!(!a.get("carts", "c1").unwrap().conflict());
}

/// A state transfer joins CRDT documents instead of choosing one, and never
/// revives what the receiver removed.
#[test]
fn state_transfer_joins_documents() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    sync(&a, &b);
    update(
        &a,
        &[
            ("/n", Update::CounterAdd(1)),
            ("/tags", Update::SetAdd(b"1".to_vec())),
        ],
    )
    .unwrap();
    sync(&a, &b);
    update(
        &b,
        &[
            ("/tags", Update::SetRemove(b"1".to_vec())),
            ("/n", Update::CounterAdd(2)),
        ],
    )
    .unwrap();
    update(&a, &[("/n", Update::CounterAdd(4))]).unwrap();
    // b takes a's whole state (as a node that fell behind the log would).
    merge_whole_state(&a, &b);
    assert_eq!(json_of(&b, "c1"), json!({"n": 7}));
}

/// While a transfer is merged but not adopted, a CRDT write's context stays within
/// what it depends on (so a replica applying it early skips nothing), and a bounded
/// counter's rights that may come from the transfer cannot be spent yet.
#[test]
fn writes_during_a_transfer_depend_on_what_they_saw() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    sync(&a, &b);
    update(
        &a,
        &[
            ("/n", Update::CounterAdd(1)),
            ("/stock", Update::BoundedAdd(5)),
        ],
    )
    .unwrap();
    update(
        &a,
        &[(
            "/stock",
            Update::BoundedTransfer {
                to: b.node_id(),
                by: 2,
            },
        )],
    )
    .unwrap();
    merge_whole_state(&a, &b);
    assert!(matches!(
        update(&b, &[("/stock", Update::BoundedAdd(-1))]),
        Err(WriteError::Busy(_))
    ));
    update(&b, &[("/n", Update::CounterAdd(2))]).unwrap();
    let (_, last) = b
        .replica()
        .read_log(0, 1000, usize::MAX)
        .unwrap()
        .pop()
        .unwrap();
    let chorus_node::EntryBody::Write(written) = &last.body else {
        panic!("a write")
    };
    assert!(last.deps.dominates(&written.context), "{last:?}");
    assert_eq!(json_of(&b, "c1"), json!({"n": 3, "stock": 5}));
    // Once adopted, the rights are b's to spend.
    let applied = a.replica().position().unwrap().applied;
    b.replica()
        .replicate_blocking(ReplicationStep::AdoptState {
            applied,
            buckets: vec![],
            unchanged_since: 0,
        })
        .unwrap();
    update(&b, &[("/stock", Update::BoundedAdd(-2))]).unwrap();
    assert_eq!(json_of(&b, "c1"), json!({"n": 3, "stock": 3}));
}

/// Two nodes that hold the same document hash its bucket the same, although the
/// CRDT version's dot differs between them (here: the document emptied and made
/// again on one, not on the other), so a transfer does not resend it.
#[test]
fn equal_documents_hash_equal() {
    let (_a_dir, a) = temp_node_with(Some(2));
    let (_b_dir, b) = temp_node_with(Some(1));
    sync(&a, &b);
    update(&a, &[("/f", Update::FlagEnable)]).unwrap();
    sync(&a, &b);
    update(&a, &[("/f", Update::FlagDisable)]).unwrap();
    update(&b, &[("/n", Update::CounterAdd(1))]).unwrap();
    sync(&a, &b);
    sync(&b, &a);
    assert_eq!(json_of(&a, "c1"), json!({"n": 1}));
    let dot = |node: &Node| node.get("carts", "c1").unwrap().versions[0].dot;
    assert_ne!(
        dot(&a),
        dot(&b),
        "the scenario makes the versions' dots differ"
    );
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    assert_eq!(
        a.replica().bucket_hashes().unwrap().hashes,
        b.replica().bucket_hashes().unwrap().hashes
    );
}

/// Operations made against an older read remove and replace only what that read
/// saw: an element added since stays.
#[test]
fn operations_against_an_older_read_keep_what_it_did_not_see() {
    let (_dir, node) = temp_node();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let apple = || Update::SetAdd(br#""apple""#.to_vec());
    let first = update(&node, &[("/items", apple())]).unwrap();
    let old = first.context.clone();
    update(&node, &[("/items", apple())]).unwrap();
    let remove = vec![op("/items", Update::SetRemove(br#""apple""#.to_vec()))];
    rt.block_on(node.update_async("carts", "c1", remove.clone(), Some(old)))
        .unwrap();
    assert_eq!(
        json_of(&node, "c1"),
        json!({"items": ["apple"]}),
        "added since"
    );
    rt.block_on(node.update_async("carts", "c1", remove, None))
        .unwrap();
    assert_eq!(json_of(&node, "c1"), Value::Null, "nothing left");
}

/// A text grows in inserts of any size up to what a document may hold: past
/// `DOCUMENT_BYTES_MAX` the write is refused (413) and the text is as it was; just
/// under, it is taken. (An 8 MiB insert once took 24 GB to save: a long run was split
/// into pages a piece at a time, each piece keeping the whole run's capacity.)
#[test]
fn a_text_is_bounded_by_what_a_document_may_hold() {
    use chorus_node::limits::DOCUMENT_BYTES_MAX;
    let (_dir, node) = temp_node();
    let insert = |pos: u64, len: usize| {
        let text = "x".repeat(len);
        update(&node, &[("/t", Update::TextInsert { pos, text })])
    };
    // Half of the bound each: the second goes over (with the runs' metadata).
    let half = DOCUMENT_BYTES_MAX / 2;
    insert(0, half).unwrap();
    let before = json_of(&node, "c1");
    let refused = insert(0, half + 1024);
    assert!(
        matches!(refused, Err(WriteError::TooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(
        json_of(&node, "c1"),
        before,
        "a refused insert changes nothing"
    );
    // Under the bound, with room for the runs' metadata (a few bytes per run of
    // 1,024 characters): taken.
    insert(0, half - 256 * 1024).unwrap();
    let len = json_of(&node, "c1")["t"].as_str().unwrap().len();
    assert_eq!(len, 2 * half - 256 * 1024);
}
