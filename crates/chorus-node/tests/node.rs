//! Black-box tests of an embedded node through its library API: write semantics,
//! policies, durability across reopen, the change feed, listings, bad input, and the
//! refusal of writes after a storage failure.

use chorus_node::custom::MergeHandler;
use chorus_node::{
    CollectionConfig, Context, Node, NodeConfig, Policy, Resolution, ResolveError, StoreFailure,
    Write, WriteError, open,
};
use chorus_store::StorageBackend;
use chorus_store::backends::InMemoryBackend;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn temp_node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path().join("node.redb")).unwrap();
    (dir, node)
}

fn values(node: &Node, collection: &str, key: &str) -> Vec<Option<String>> {
    node.get(collection, key)
        .unwrap()
        .versions
        .into_iter()
        .map(|v| v.value.map(|b| String::from_utf8(b).unwrap()))
        .collect()
}

/// Two blind writes are siblings; a write with the read's context replaces both.
#[test]
fn blind_writes_conflict_and_context_write_resolves() {
    let (_dir, node) = temp_node();
    node.put("docs", "k", br#"{"v":1}"#, None).unwrap();
    node.put("docs", "k", br#"{"v":2}"#, None).unwrap();
    let doc = node.get("docs", "k").unwrap();
    assert!(doc.conflict());
    assert_eq!(doc.value(), None);
    assert_eq!(
        values(&node, "docs", "k"),
        [Some(r#"{"v":1}"#.into()), Some(r#"{"v":2}"#.into())]
    );
    let conflicts = node
        .conflicts(None, 10, &Default::default())
        .unwrap()
        .conflicts;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].policy, Policy::Siblings);

    node.put("docs", "k", br#"{"v":3}"#, Some(&doc.context))
        .unwrap();
    let doc = node.get("docs", "k").unwrap();
    assert!(!doc.conflict());
    assert_eq!(doc.value(), Some(&br#"{"v":3}"#[..]));
}

/// A conflict ends through its record: picking a version keeps exactly its value;
/// an unknown version or record is refused; the record goes once older than the
/// retention, and the counts say what was recorded.
#[test]
fn conflicts_resolve_through_their_record_and_expire() {
    let (_dir, node) = temp_node();
    node.put("docs", "k", br#"{"v":1}"#, None).unwrap();
    node.put("docs", "k", br#"{"v":2}"#, None).unwrap();
    let record = node
        .conflicts(None, 10, &Default::default())
        .unwrap()
        .conflicts
        .remove(0);
    assert_eq!(node.conflict(record.id).unwrap(), Some(record.clone()));

    let stranger = chorus_node::Dot::new(chorus_node::NodeId(7), 1);
    assert!(matches!(
        node.resolution(record.id, Resolution::Pick(stranger)),
        Err(ResolveError::NotInRecord(_))
    ));
    let first = record.versions[0].dot;
    let write = node.resolution(record.id, Resolution::Pick(first)).unwrap();
    node.write(write).unwrap();
    assert_eq!(values(&node, "docs", "k"), [Some(r#"{"v":1}"#.into())]);
    assert_eq!(
        node.conflict_counts(),
        [("docs".to_string(), "siblings", 1)]
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let newest = record.newest_wall_ms();
    rt.block_on(node.prune_conflicts(newest)).unwrap();
    assert!(
        node.conflict(record.id).unwrap().is_some(),
        "not older than the bound"
    );
    rt.block_on(node.prune_conflicts(newest + 1)).unwrap();
    assert_eq!(node.conflict(record.id).unwrap(), None);
    assert!(matches!(
        node.resolution(record.id, Resolution::Pick(first)),
        Err(ResolveError::NoSuchConflict(_))
    ));
}

/// A `custom` collection's conflicts are merged by the handler the application
/// registers (a trait object); without one, they stay in conflict and say why.
#[test]
fn a_library_merge_handler_resolves_conflicts() {
    struct Largest;
    impl MergeHandler for Largest {
        fn merge(
            &self,
            versions: &[serde_json::Value],
            _ancestor: Option<&serde_json::Value>,
        ) -> Result<serde_json::Value, String> {
            let n = versions.iter().filter_map(|v| v["n"].as_i64()).max();
            Ok(serde_json::json!({ "n": n }))
        }
    }
    let (_dir, node) = temp_node();
    let config = CollectionConfig::from_json(br#"{"policy":"custom"}"#).unwrap();
    node.set_collection("c", &config).unwrap();
    node.put("c", "k", br#"{"n":4}"#, None).unwrap();
    node.put("c", "k", br#"{"n":9}"#, None).unwrap();
    let doc = node.get("c", "k").unwrap();
    assert!(doc.conflict());
    assert!(
        doc.merge_error
            .as_deref()
            .unwrap()
            .contains("no merge handler")
    );

    node.set_merge_handler("c", std::sync::Arc::new(Largest));
    let doc = node.get("c", "k").unwrap();
    assert!(!doc.conflict());
    assert_eq!(doc.value(), Some(&br#"{"n":9}"#[..]));
    assert_eq!(doc.versions.len(), 2);
}

/// Leases: one owner at a time until expiry or release; fencing numbers grow; only
/// the live lease's token passes the fencing check, and a token pieced together from
/// what others are shown (the fencing number, with any secret) does not.
#[test]
fn leases_grant_one_owner_and_fence_tokens() {
    use chorus_node::leases::{LeaseError, LeaseToken};
    let (_dir, node) = temp_node();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (_, first) = rt
        .block_on(node.acquire_lease("c", "k", "alice", 100, 1_000))
        .unwrap();
    assert!(matches!(
        rt.block_on(node.acquire_lease("c", "k", "bob", 100, 1_050)),
        Err(LeaseError::Held(held)) if held.owner == "alice"
    ));
    assert!(node.check_fencing("c", "k", &first, 1_050).is_ok());
    let shown = node.lease("c", "k").unwrap().unwrap();
    let forged = LeaseToken::parse(&format!("{}.{}", shown.fencing, "0".repeat(32))).unwrap();
    assert!(node.check_fencing("c", "k", &forged, 1_050).is_err());
    assert_eq!(LeaseToken::parse(&first.to_string()), Some(first.clone()));
    for bad in [
        "12",
        "12.",
        "x.00000000000000000000000000000000",
        "1.0g000000000000000000000000000000",
    ] {
        assert_eq!(LeaseToken::parse(bad), None, "{bad}");
    }
    // Expired while held: bob gets a larger number, alice's token is refused.
    let (_, second) = rt
        .block_on(node.acquire_lease("c", "k", "bob", 100, 1_100))
        .unwrap();
    assert!(second.fencing > first.fencing);
    assert!(matches!(
        node.check_fencing("c", "k", &first, 1_150),
        Err(LeaseError::Stale { current: Some(t), .. }) if t == second.fencing
    ));
    rt.block_on(node.release_lease("c", "k", &second, 1_150))
        .unwrap();
    assert!(node.check_fencing("c", "k", &second, 1_160).is_err());
    let (_, third) = rt
        .block_on(node.acquire_lease("c", "k", "carol", 100, 1_160))
        .unwrap();
    assert!(third.fencing > second.fencing);
    assert!(matches!(
        rt.block_on(node.acquire_lease("c", "k2", "x", 0, 1)),
        Err(LeaseError::BadLength)
    ));
}

/// A delete with context leaves an absent document whose context still supersedes.
#[test]
fn delete_leaves_tombstone_with_context() {
    let (_dir, node) = temp_node();
    let ack = node.put("docs", "k", b"1", None).unwrap();
    let del = node.delete("docs", "k", Some(&ack.context)).unwrap();
    let doc = node.get("docs", "k").unwrap();
    assert!(doc.is_absent());
    assert_eq!(doc.context, del.context);
    node.put("docs", "k", b"2", Some(&doc.context)).unwrap();
    assert_eq!(values(&node, "docs", "k"), [Some("2".into())]);
}

/// Under lww the newest write wins and the overwritten concurrent value is kept in
/// the conflict log with its origin.
#[test]
fn lww_keeps_loser_in_conflict_log() {
    let (_dir, node) = temp_node();
    node.set_collection(
        "prefs",
        &CollectionConfig {
            policy: Policy::Lww,
            ..CollectionConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        node.collection("prefs").unwrap(),
        (
            CollectionConfig {
                policy: Policy::Lww,
                ..CollectionConfig::default()
            },
            true
        )
    );
    node.put("prefs", "k", br#""old""#, None).unwrap();
    node.put("prefs", "k", br#""new""#, None).unwrap();
    let doc = node.get("prefs", "k").unwrap();
    assert!(!doc.conflict());
    assert_eq!(doc.value(), Some(&br#""new""#[..]));
    let conflicts = node
        .conflicts(None, 10, &Default::default())
        .unwrap()
        .conflicts;
    assert_eq!(conflicts.len(), 1);
    let loser = conflicts[0]
        .versions
        .iter()
        .find(|v| v.value.as_deref() == Some(&br#""old""#[..]));
    assert_eq!(loser.unwrap().dot.node, node.node_id());
}

/// Everything acknowledged is there after reopening, and the dot counter and HLC
/// continue rather than restart.
#[test]
fn reopen_keeps_data_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let (first, id) = {
        let node = open(&path).unwrap();
        (node.put("docs", "a", b"1", None).unwrap(), node.node_id())
    };
    let node = open(&path).unwrap();
    assert_eq!(node.node_id(), id);
    assert_eq!(values(&node, "docs", "a"), [Some("1".into())]);
    let second = node.put("docs", "b", b"2", None).unwrap();
    assert!(second.dot.counter > first.dot.counter);
    assert!(second.hlc > first.hlc);
    assert_eq!(second.seq, first.seq + 1);
}

/// Many threads writing at once are all acknowledged, each with its own dot and
/// feed position, and every write is readable.
#[test]
fn concurrent_writers_share_commits() {
    let (_dir, node) = temp_node();
    let acks: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let node = node.clone();
                s.spawn(move || {
                    (0..25)
                        .map(|i| node.put("docs", &format!("{t}-{i}"), b"{}", None).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    assert_eq!(node.list("docs", "", None, 1000).unwrap().keys.len(), 400);
}

/// Generated keys are unique and increase in creation order.
#[test]
fn generated_keys_are_unique_and_ordered() {
    let (_dir, node) = temp_node();
    let keys: Vec<String> = (0..20)
        .map(|_| {
            node.write(Write {
                collection: "ids".into(),
                key: None,
                value: Some(b"{}".to_vec()),
                context: None,
            })
            .unwrap()
            .key
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, keys);
}

/// The change feed lists each changed document once, in the order of its latest
/// change (a rewrite moves it to the end), deleted ones too, without reserved
/// collections; it pages from any cursor, filters by collection and prefix, and
/// `next` moves past everything examined.
#[test]
fn change_feed_lists_each_document_at_its_latest_change() {
    let (_dir, node) = temp_node();
    let keys = |page: &chorus_node::ChangesPage| -> Vec<String> {
        page.changes
            .iter()
            .map(|c| format!("{}/{}", c.doc.collection, c.doc.key))
            .collect()
    };
    for i in 0..5 {
        node.put("docs", &format!("k{i}"), b"{}", None).unwrap();
    }
    node.put("other", "x", b"{}", None).unwrap();
    node.put("docs", "k1", br#"{"again":true}"#, None).unwrap();
    let read = node.get("docs", "k2").unwrap();
    node.delete("docs", "k2", Some(&read.context)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(node.create_token("t", "admin")).unwrap();
    let all = node.changes(0, 100, None, "").unwrap();
    assert_eq!(
        keys(&all),
        [
            "docs/k0", "docs/k3", "docs/k4", "other/x", "docs/k1", "docs/k2"
        ],
        "each once, by latest change; the token's reserved document is not listed"
    );
    assert!(all.changes[5].doc.is_absent(), "the deletion is listed");
    assert_eq!(
        all.next,
        node.feed().unwrap().last_seq,
        "next is past the token too"
    );
    let first = node.changes(0, 2, None, "").unwrap();
    assert_eq!(keys(&first), ["docs/k0", "docs/k3"]);
    let rest = node.changes(first.next, 100, None, "").unwrap();
    assert_eq!(keys(&rest), ["docs/k4", "other/x", "docs/k1", "docs/k2"]);
    let filtered = node.changes(0, 100, Some("docs"), "k1").unwrap();
    assert_eq!(keys(&filtered), ["docs/k1"]);
    assert_eq!(filtered.next, all.next);
    let empty = node.changes(all.next, 10, None, "").unwrap();
    assert!(empty.changes.is_empty());
    assert_eq!(empty.next, all.next);
}

/// The feed survives a restart: the same id, the same cursors, nothing listed twice.
#[test]
fn change_feed_cursors_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let (feed, next) = {
        let node = open(&path).unwrap();
        node.put("c", "a", b"{}", None).unwrap();
        (
            node.feed().unwrap(),
            node.changes(0, 10, None, "").unwrap().next,
        )
    };
    let node = open(&path).unwrap();
    assert_eq!(node.feed().unwrap(), feed);
    assert!(node.changes(next, 10, None, "").unwrap().changes.is_empty());
    node.put("c", "b", b"{}", None).unwrap();
    let after = node.changes(next, 10, None, "").unwrap();
    assert_eq!(after.changes.len(), 1);
    assert_eq!(after.changes[0].doc.key, "b");
    let elsewhere = tempfile::tempdir().unwrap();
    let other = open(elsewhere.path().join("node.redb")).unwrap();
    assert_ne!(
        other.feed().unwrap().id,
        feed.id,
        "each store has its own feed"
    );
}

/// Listing honours prefix, cursor and limit and skips deleted documents.
#[test]
fn listing_pages_by_prefix() {
    let (_dir, node) = temp_node();
    for key in ["a1", "b1", "b2", "b3", "c1"] {
        node.put("docs", key, b"{}", None).unwrap();
    }
    let ctx = node.get("docs", "b2").unwrap().context;
    node.delete("docs", "b2", Some(&ctx)).unwrap();
    let page = node.list("docs", "b", None, 1).unwrap();
    assert_eq!(page.keys, ["b1"]);
    let page = node.list("docs", "b", page.next.as_deref(), 10).unwrap();
    assert_eq!(page.keys, ["b3"]);
    assert_eq!(page.next, None);
    assert_eq!(node.list("docs", "", Some("b3"), 10).unwrap().keys, ["c1"]);
}

/// Bad input is refused with a reason and changes nothing.
#[test]
fn bad_input_changes_nothing() {
    let (_dir, node) = temp_node();
    node.put("docs", "k", b"{}", None).unwrap();
    let before = node.digest().unwrap();
    let invalid = |r: Result<_, WriteError>| matches!(r, Err(WriteError::Invalid(_)));
    assert!(invalid(node.put("docs", "k", b"{not json", None)));
    assert!(invalid(node.put("docs", "", b"{}", None)));
    assert!(invalid(node.put("docs", &"k".repeat(1025), b"{}", None)));
    assert!(invalid(node.put("_collections", "docs", b"{}", None)));
    assert!(invalid(node.put("bad/name", "k", b"{}", None)));
    let huge = vec![b' '; chorus_node::limits::DOCUMENT_BYTES_MAX + 1];
    assert!(matches!(
        node.put("docs", "k", &huge, None),
        Err(WriteError::TooLarge { .. })
    ));
    // A context naming writes this node never made would make it drop its own
    // future writes to the key; it is refused.
    let mut forged = chorus_core::VersionVector::new();
    forged.add(chorus_core::Dot::new(node.node_id(), 1_000_000));
    let token = chorus_core::ContextToken::encode(&forged, "docs", "k");
    let forged = Context::from_token(&token, "docs", "k").unwrap();
    assert!(invalid(node.put("docs", "k", b"{}", Some(&forged))));
    assert_eq!(node.digest().unwrap(), before);
    assert_eq!(node.status().unwrap().last_seq, 1);
}

/// A redb backend that starts failing every write when told to: with a full disk's
/// error when `full` is set, else with another I/O error.
#[derive(Debug)]
struct FailingBackend<B> {
    inner: B,
    failing: Arc<AtomicBool>,
    full: bool,
}

impl<B> FailingBackend<B> {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            if self.full {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            return Err(std::io::Error::other("injected I/O failure"));
        }
        Ok(())
    }
}

impl<B: StorageBackend> StorageBackend for FailingBackend<B> {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

/// After a failed commit the write is not acknowledged, later writes are refused,
/// and reads still serve what was committed before.
#[test]
fn storage_failure_refuses_writes() {
    let failing = Arc::new(AtomicBool::new(false));
    let backend = FailingBackend {
        inner: InMemoryBackend::new(),
        failing: Arc::clone(&failing),
        full: false,
    };
    let node = Node::open_backend(backend, NodeConfig::default()).unwrap();
    node.put("docs", "kept", b"1", None).unwrap();
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        node.put("docs", "lost", b"2", None),
        Err(WriteError::StoreFailed)
    );
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        node.put("docs", "later", b"3", None),
        Err(WriteError::StoreFailed)
    );
    assert!(node.status().unwrap().store_failed);
    assert_eq!(values(&node, "docs", "kept"), [Some("1".into())]);
    assert!(node.get("docs", "lost").unwrap().is_absent());
}

/// Goal: a full disk is named as such, and freeing space then reopening the node
/// (a restart) loses nothing acknowledged. Method: a file-backed store whose writes
/// fail with the full-disk error, then succeed again after a reopen.
#[test]
fn a_full_disk_is_named_and_a_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let failing = Arc::new(AtomicBool::new(false));
    let open_failing = || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let backend = FailingBackend {
            inner: chorus_store::backends::FileBackend::new(file).unwrap(),
            failing: Arc::clone(&failing),
            full: true,
        };
        Node::open_backend(backend, NodeConfig::default()).unwrap()
    };
    let node = open_failing();
    node.put("docs", "kept", b"1", None).unwrap();
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        node.put("docs", "lost", b"2", None),
        Err(WriteError::DiskFull)
    );
    assert_eq!(
        node.put("docs", "later", b"3", None),
        Err(WriteError::DiskFull)
    );
    let status = node.status().unwrap();
    assert_eq!(status.store_failure, Some(StoreFailure::DiskFull));
    assert!(WriteError::DiskFull.to_string().contains("space is freed"));
    drop(node);
    failing.store(false, Ordering::SeqCst);
    let node = open_failing();
    assert_eq!(values(&node, "docs", "kept"), [Some("1".into())]);
    assert!(node.get("docs", "lost").unwrap().is_absent());
    node.put("docs", "after", b"4", None).unwrap();
    assert_eq!(node.status().unwrap().store_failure, None);
}

/// The retention limit is the newest entry beyond the byte bound or the age bound,
/// and 0 while the whole log is within both.
#[test]
fn retention_limit_follows_bytes_and_age() {
    let (_dir, node) = temp_node();
    let acks: Vec<_> = (0..10)
        .map(|i| node.put("docs", &format!("k{i}"), b"{}", None).unwrap())
        .collect();
    let now_ms = acks.last().unwrap().hlc.wall_ms();
    assert_eq!(
        node.replica()
            .retention_limit(u64::MAX, u64::MAX, now_ms)
            .unwrap(),
        0
    );
    let by_bytes = node
        .replica()
        .retention_limit(200, u64::MAX, now_ms)
        .unwrap();
    assert!(by_bytes > 0 && by_bytes < 10, "{by_bytes}");
    assert_eq!(
        node.replica()
            .retention_limit(u64::MAX, 0, now_ms + 1_000)
            .unwrap(),
        10,
        "all older than now"
    );
}

/// Goal: one key's versions stay within the key-state bound where this node can
/// know it, so that every key state fits a frame. Method: with the bound lowered to
/// three documents' worth, blind writes pile up siblings until the next is refused
/// (changing nothing); a write with the read's context, which shrinks the key, is
/// still taken; the bound cannot be raised past `KEY_STATE_BYTES_MAX`.
#[test]
fn siblings_stop_growing_at_the_key_state_bound() {
    let config = NodeConfig {
        key_state_bytes_max: 3000,
        ..NodeConfig::default()
    };
    let node = Node::open_backend(InMemoryBackend::new(), config).unwrap();
    let document = format!("\"{}\"", "x".repeat(998)).into_bytes();
    for _ in 0..3 {
        node.put("docs", "big", &document, None).unwrap();
    }
    let before = node.digest().unwrap();
    let refused = node.put("docs", "big", &document, None);
    assert!(
        matches!(
            refused,
            Err(WriteError::TooManyVersions {
                bytes: 4000,
                max: 3000
            })
        ),
        "{refused:?}"
    );
    assert_eq!(node.digest().unwrap(), before);
    let context = node.get("docs", "big").unwrap().context;
    node.put("docs", "big", b"\"resolved\"", Some(&context))
        .unwrap();
    assert_eq!(values(&node, "docs", "big"), [Some("\"resolved\"".into())]);
}

/// A token authenticates only with its own secret, carries its rights, is listed
/// without its secret, and stops working once revoked or replaced.
#[test]
fn tokens_authenticate_with_their_secret_until_revoked() {
    use chorus_node::rights::Right;
    use chorus_node::tokens::TokenError;
    let (_dir, node) = temp_node();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let token = rt
        .block_on(node.create_token("ci", "read:*,write:orders"))
        .unwrap();
    let found = node.authenticate(&token).unwrap().expect("the token works");
    assert_eq!(found.name, "ci");
    assert!(found.rights.allow(Right::Write, Some("orders")));
    assert!(!found.rights.allow(Right::Write, Some("users")));
    let (name, secret) = token.split_once('.').unwrap();
    let mut wrong = secret.to_owned().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = format!("{name}.{}", String::from_utf8(wrong).unwrap());
    for bad in [wrong.as_str(), "ci", "ci.", "nobody.00", "", "../x.y"] {
        assert!(
            node.authenticate(bad).unwrap().is_none(),
            "{bad:?} was taken"
        );
    }
    assert_eq!(node.tokens().unwrap().len(), 1);
    // Replacing gives a new secret; the old one stops working.
    let renewed = rt.block_on(node.create_token("ci", "admin")).unwrap();
    assert!(node.authenticate(&token).unwrap().is_none());
    assert!(node.authenticate(&renewed).unwrap().is_some());
    rt.block_on(node.revoke_token("ci")).unwrap();
    assert!(node.authenticate(&renewed).unwrap().is_none());
    assert!(node.tokens().unwrap().is_empty());
    assert!(matches!(
        rt.block_on(node.revoke_token("ci")),
        Err(TokenError::Unknown(_))
    ));
    assert!(matches!(
        rt.block_on(node.create_token("bad name", "admin")),
        Err(TokenError::BadName(_))
    ));
    assert!(matches!(
        rt.block_on(node.create_token("x", "everything")),
        Err(TokenError::BadRights(_))
    ));
}
