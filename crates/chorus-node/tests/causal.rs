//! Causal delivery on a real node: entries handed over out of causal order (the
//! mesh "overtaking" anomaly: an update arriving before the insert it followed) are
//! held back until what they depend on is applied, across keys and across origins.

use chorus_node::{Entry, Node, StateCursor, open};

fn temp_node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path().join("node.redb")).unwrap();
    (dir, node)
}

fn log(node: &Node) -> Vec<Entry> {
    node.replica()
        .read_log(0, 1000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// An update that arrives before the insert it depends on stays invisible; once the
/// insert arrives, both apply, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_before_insert_is_held_back() {
    let (_a_dir, a) = temp_node();
    let (_c_dir, c) = temp_node();
    let (_b_dir, b) = temp_node();
    // On a: insert "order"; c receives it and writes the follow-up "invoice".
    let insert =
        tokio::task::block_in_place(|| a.put("shop", "order", br#"{"id":1}"#, None).unwrap());
    assert_eq!(insert.seq, 1);
    let insert_entries = log(&a);
    c.replica()
        .apply_remote(insert_entries.clone())
        .await
        .unwrap();
    tokio::task::block_in_place(|| c.put("shop", "invoice", br#"{"order":1}"#, None).unwrap());
    let invoice_entry = log(&c).pop().unwrap();

    // b receives the invoice first (another path was faster): it must wait.
    let outcome = b
        .replica()
        .apply_remote(vec![invoice_entry.clone()])
        .await
        .unwrap();
    assert_eq!(outcome.waiting, vec![invoice_entry.clone()]);
    assert!(
        b.get("shop", "invoice").unwrap().is_absent(),
        "the invoice showed before its order"
    );
    assert!(b.changes(0, 10, None, "").unwrap().changes.is_empty());

    // Then the insert arrives; handed over together with the held entry, both apply.
    let outcome = b
        .replica()
        .apply_remote([insert_entries, vec![invoice_entry]].concat())
        .await
        .unwrap();
    assert!(outcome.waiting.is_empty());
    assert!(!b.get("shop", "order").unwrap().is_absent());
    assert!(!b.get("shop", "invoice").unwrap().is_absent());
    let keys: Vec<String> = b
        .changes(0, 10, None, "")
        .unwrap()
        .changes
        .into_iter()
        .map(|c| c.doc.key)
        .collect();
    assert_eq!(keys, ["order", "invoice"], "applied in causal order");
}

/// Entries given twice, or in one batch in reverse order, apply exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_reversed_batches_apply_once() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    tokio::task::block_in_place(|| {
        for i in 0..5 {
            a.put("docs", &format!("k{i}"), b"1", None).unwrap();
        }
    });
    let mut entries = log(&a);
    entries.reverse();
    let outcome = b.replica().apply_remote(entries.clone()).await.unwrap();
    assert!(outcome.waiting.is_empty());
    let again = b.replica().apply_remote(entries).await.unwrap();
    assert_eq!(again.applied, outcome.applied);
    assert_eq!(b.changes(0, 100, None, "").unwrap().changes.len(), 5);
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
}

/// A collected tombstone leaves no key state, and neither an old entry nor an old
/// key state arriving later brings the deleted document back: the node's version
/// vector still covers the superseded write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_tombstones_are_never_revived() {
    use chorus_node::{ReplicationStep, STATE_BUCKETS};
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    let all_buckets: Vec<u8> = (0..STATE_BUCKETS).map(|i| i as u8).collect();
    // b receives the write (and keeps its state, as a lagging peer would); a then
    // deletes it.
    tokio::task::block_in_place(|| a.put("docs", "gone", b"1", None).unwrap());
    let write = log(&a);
    b.replica().apply_remote(write.clone()).await.unwrap();
    let old_state = b
        .replica()
        .read_state(StateCursor::KeysFromStart, 100, usize::MAX, &all_buckets)
        .unwrap()
        .keys;
    tokio::task::block_in_place(|| {
        let context = a.get("docs", "gone").unwrap().context;
        a.delete("docs", "gone", Some(&context)).unwrap();
    });
    let deleted = a.digest().unwrap();
    let stable = a.replica().position().unwrap().applied;
    a.replica()
        .replicate(ReplicationStep::CollectTombstones { stable })
        .await
        .unwrap();
    assert!(
        a.replica()
            .read_state(StateCursor::KeysFromStart, 100, usize::MAX, &all_buckets)
            .unwrap()
            .keys
            .is_empty(),
        "the tombstone was collected"
    );
    let collected = a.digest().unwrap();
    assert_eq!(
        collected, deleted,
        "collecting a tombstone does not change the digest"
    );

    a.replica().apply_remote(write).await.unwrap();
    a.replica()
        .replicate(ReplicationStep::MergeState {
            keys: old_state,
            conflicts: vec![],
        })
        .await
        .unwrap();
    assert!(
        a.get("docs", "gone").unwrap().is_absent(),
        "a deleted document came back"
    );
    assert_eq!(a.digest().unwrap(), collected);
}

/// Goal: conflict logs stay identical whatever each node's clock says. Method: two
/// nodes record one conflict; the node whose clock says the record is old prunes it;
/// the other, whose clock says it is young, prunes it too once the retention
/// watermark replicates, a later prune by its slower clock moves nothing back, and a
/// third node that receives everything in log order ends without the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_logs_prune_alike_by_a_replicated_watermark() {
    let (_a_dir, a) = temp_node();
    let (_b_dir, b) = temp_node();
    let (_c_dir, c) = temp_node();
    tokio::task::block_in_place(|| {
        a.put("docs", "k", b"1", None).unwrap();
        b.put("docs", "k", b"2", None).unwrap();
    });
    let (from_a, from_b) = (log(&a), log(&b));
    a.replica().apply_remote(from_b).await.unwrap();
    b.replica().apply_remote(from_a).await.unwrap();
    let record = a
        .conflicts(None, 10, &Default::default())
        .unwrap()
        .conflicts[0]
        .clone();
    let newest = record.newest_wall_ms();
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());

    a.prune_conflicts(newest + 1).await.unwrap();
    assert_eq!(a.conflict(record.id).unwrap(), None);
    let b_has = b.replica().position().unwrap().applied;
    let news: Vec<Entry> = log(&a)
        .into_iter()
        .filter(|e| !b_has.covers(e.dot()))
        .collect();
    b.replica().apply_remote(news).await.unwrap();
    assert_eq!(
        b.conflict(record.id).unwrap(),
        None,
        "pruned by a's watermark"
    );
    b.prune_conflicts(newest - 10_000).await.unwrap();
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());

    c.replica().apply_remote(log(&a)).await.unwrap();
    assert_eq!(c.conflict(record.id).unwrap(), None);
    assert_eq!(c.digest().unwrap(), a.digest().unwrap());
}

/// A write made against a read of a document whose deletion was collected since is
/// taken (nothing the writer meant is dropped) and the conflict with that deletion
/// is recorded (nothing comes back silently); a write naming no history is just a
/// new document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_against_a_collected_deletion_is_recorded() {
    use chorus_node::{ConflictFilter, Outcome, ReplicationStep};
    let (_dir, a) = temp_node();
    let read = tokio::task::block_in_place(|| {
        a.put("docs", "k", br#"{"v":"read"}"#, None).unwrap();
        a.put("docs", "fresh", br#"{"v":"read"}"#, None).unwrap();
        let read = a.get("docs", "k").unwrap().context;
        a.delete("docs", "k", Some(&read)).unwrap();
        let fresh = a.get("docs", "fresh").unwrap().context;
        a.delete("docs", "fresh", Some(&fresh)).unwrap();
        read
    });
    let stable = a.replica().position().unwrap().applied;
    a.replica()
        .replicate(ReplicationStep::CollectTombstones { stable })
        .await
        .unwrap();
    let records = |key: &str| {
        let filter = ConflictFilter {
            collection: Some("docs".into()),
            key: Some(key.into()),
        };
        a.conflicts(None, 100, &filter).unwrap().conflicts
    };
    tokio::task::block_in_place(|| {
        let ack = a.put("docs", "k", br#"{"v":"late"}"#, Some(&read)).unwrap();
        assert_eq!(
            a.get("docs", "k").unwrap().value(),
            Some(&br#"{"v":"late"}"#[..])
        );
        let recorded = records("k");
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].outcome, Outcome::Winner(ack.dot));
        assert!(recorded[0].versions.iter().any(|v| v.is_tombstone()));
        a.put("docs", "fresh", br#"{"v":"new"}"#, None).unwrap();
        assert!(
            records("fresh").is_empty(),
            "a blind write claims no history"
        );
    });
}
