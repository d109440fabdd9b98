//! Black-box tests of the store: durability across reopen, atomic batches, format
//! checks, and agreement with a `BTreeMap` reference model.

use chorus_core::{Dot, Entry, EntryBody, Hlc, KeyState, NodeId, Op, VersionVector, crdt};
use chorus_store::{NodeMeta, OpenError, Store, StoreError};
use proptest::prelude::*;
use redb::{ReadableDatabase, ReadableTable};
use std::collections::BTreeMap;

fn meta() -> NodeMeta {
    NodeMeta {
        node_id: 7,
        name: "a".into(),
        hlc: 0,
        next_seq: 1,
        log_start: 1,
        floor: vec![],
        applied: vec![],
    }
}

fn op(counter: u64, key: &str, value: &str) -> Op {
    Op {
        dot: Dot::new(NodeId(7), counter),
        hlc: Hlc(counter),
        collection: "docs".into(),
        key: key.into(),
        context: VersionVector::new(),
        value: Some(value.as_bytes().to_vec()),
    }
}

fn entry(op: Op) -> Entry {
    Entry {
        deps: VersionVector::new(),
        body: EntryBody::Write(op),
    }
}

/// A committed batch is there after reopening; the meta written at creation is kept.
#[test]
fn committed_batch_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path, meta).unwrap();
        store
            .write(|batch| {
                let op = op(1, "k", "{}");
                let mut state = batch.key_state("docs", "k")?;
                state.apply(&op).unwrap();
                batch.put_key_state("docs", "k", &mut state.clone())?;
                batch.append_entry(1, &entry(op.clone()))?;
                batch.set_peer_cursor(9, 1)?;
                batch.set_meta(&NodeMeta {
                    next_seq: 2,
                    applied: vec![(7, 1)],
                    ..meta()
                })
            })
            .unwrap();
    }
    let store = Store::open(&path, || panic!("must not re-initialise")).unwrap();
    assert_eq!(store.meta_at_open().applied, vec![(7, 1)]);
    let snapshot = store.read().unwrap();
    assert_eq!(snapshot.key_state("docs", "k").unwrap().versions().len(), 1);
    assert_eq!(snapshot.peer_cursor(9).unwrap(), 1);
    assert_eq!(snapshot.peer_cursor(10).unwrap(), 0);
    let entries: Vec<_> = snapshot
        .entries_from(1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(entries, vec![(1, entry(op(1, "k", "{}")))]);
}

/// A batch whose closure fails leaves no trace.
#[test]
fn failed_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), meta).unwrap();
    let result: Result<(), StoreError> = store.write(|batch| {
        batch.append_entry(1, &entry(op(1, "k", "{}")))?;
        Err(StoreError::Corrupted {
            table: "test",
            reason: "abort".into(),
        })
    });
    assert!(result.is_err());
    assert_eq!(store.read().unwrap().entries_from(0).unwrap().count(), 0);
}

/// A store whose format is newer than this build is refused with a clear message.
#[test]
fn newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    drop(Store::open(&path, meta).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            table
                .insert("format", 99u32.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(&path, meta).err().unwrap();
    assert!(matches!(
        err,
        OpenError::NewerFormat {
            found: 99,
            supported: chorus_store::STORE_FORMAT,
            ..
        }
    ));
    assert!(err.to_string().contains("newer chorus"), "{err}");
}

/// A CRDT write to `docs/t`: `text` inserted at `pos` of `/text`, made against
/// `state` (as node 7's write number `counter`).
fn text_write(state: &KeyState, counter: u64, pos: u64, text: &str) -> Op {
    let dot = Dot::new(NodeId(7), counter);
    let mut doc = state.crdt_document().cloned().unwrap_or_default();
    let update = crdt::Update::TextInsert {
        pos,
        text: text.into(),
    };
    let operation = crdt::Operation {
        path: vec!["text".into()],
        update,
    };
    let delta = crdt::prepare(&mut doc, state.context(), dot, Hlc(counter), &[operation]).unwrap();
    Op {
        dot,
        hlc: Hlc(counter),
        collection: "docs".into(),
        key: "t".into(),
        context: state.context().clone(),
        value: Some(crdt::encode_delta(&delta)),
    }
}

fn text_of(state: &KeyState) -> String {
    match state
        .crdt_document()
        .and_then(|d| d.get(&["text".into()], crdt::Kind::Text))
    {
        Some(crdt::Field::Text(t)) => t.items().content(),
        _ => String::new(),
    }
}

/// Bytes of every row of the `pages` table.
fn page_bytes(path: &std::path::Path) -> usize {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let pages = txn
        .open_table(redb::TableDefinition::<&[u8], &[u8]>::new("pages"))
        .unwrap();
    pages
        .iter()
        .unwrap()
        .map(|row| row.unwrap().1.value().len())
        .sum()
}

/// A long text is stored in pages: an edit in its middle writes a few of them, the
/// state read back (also after reopening) is the one written, and removing the key
/// removes its pages.
#[test]
fn texts_are_stored_in_pages_and_go_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut state = KeyState::new();
    {
        let store = Store::open(&path, meta).unwrap();
        for (counter, piece) in (1..=20u64).zip(std::iter::repeat("lorem ipsum ".repeat(1000))) {
            let op = text_write(
                &state,
                counter,
                text_of(&state).chars().count() as u64,
                &piece,
            );
            state.apply(&op).unwrap();
            store
                .write(|b| b.put_key_state("docs", "t", &mut state))
                .unwrap();
        }
        let op = text_write(&state, 21, 100_000, "!");
        state.apply(&op).unwrap();
        store
            .write(|b| b.put_key_state("docs", "t", &mut state))
            .unwrap();
        let read = store.read().unwrap().key_state("docs", "t").unwrap();
        assert_eq!(read, state);
    }
    let stored = page_bytes(&path);
    assert!(stored > 240_000, "the text is in pages: {stored} bytes");
    let store = Store::open(&path, meta).unwrap();
    assert_eq!(store.read().unwrap().key_state("docs", "t").unwrap(), state);
    store
        .write(|b| {
            b.rewrite_key_states(|_, key, _| key == "t", |_, _, _| Some(None))
                .map(|_| ())
        })
        .unwrap();
    drop(store);
    assert_eq!(page_bytes(&path), 0, "the key's pages go with it");
}

/// A store of format 1 (CRDT documents whole in `keys`) opens: its documents read
/// as they were, the next write keeps the text in pages, and the store is marked
/// format 2 (which an older build refuses).
#[test]
fn a_format_1_store_reads_and_moves_to_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    drop(Store::open(&path, meta).unwrap());
    let mut state = KeyState::new();
    state.apply(&text_write(&state, 1, 0, "old text")).unwrap();
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta_table = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta_table
                .insert("format", 1u32.to_le_bytes().as_slice())
                .unwrap();
            let mut keys = txn
                .open_table(redb::TableDefinition::<&[u8], &[u8]>::new("keys"))
                .unwrap();
            let mut row = 1u64.to_le_bytes().to_vec();
            row.extend(chorus_codec::encode_key_state(&state));
            keys.insert(b"docs\0t".as_slice(), row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, meta).unwrap();
    let mut read = store.read().unwrap().key_state("docs", "t").unwrap();
    assert_eq!(text_of(&read), "old text");
    let op = text_write(&read, 2, 3, ",");
    read.apply(&op).unwrap();
    store
        .write(|b| b.put_key_state("docs", "t", &mut read))
        .unwrap();
    assert_eq!(
        text_of(&store.read().unwrap().key_state("docs", "t").unwrap()),
        "old, text"
    );
    drop(store);
    assert!(page_bytes(&path) > 0);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta_table = txn
        .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap();
    let format = meta_table.get("format").unwrap().unwrap().value().to_vec();
    assert_eq!(format, chorus_store::STORE_FORMAT.to_le_bytes());
}

proptest! {
    /// Listing keys after any cursor agrees with a BTreeMap of the same writes, and
    /// never strays into a neighbouring collection.
    #[test]
    fn keys_after_matches_reference(
        keys in prop::collection::btree_set("[a-c\u{0}]{0,4}", 0..20),
        after in prop::option::of("[a-c]{0,3}"),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), meta).unwrap();
        let mut reference = BTreeMap::new();
        store.write(|batch| {
            for (i, key) in keys.iter().enumerate() {
                let mut state = KeyState::new();
                state.apply(&op(i as u64 + 1, key, "{}")).unwrap();
                batch.put_key_state("docs", key, &mut state.clone())?;
                batch.put_key_state("docs2", key, &mut state.clone())?;
                reference.insert(key.clone(), ());
            }
            Ok(())
        }).unwrap();
        let snapshot = store.read().unwrap();
        let listed: Vec<String> = snapshot
            .keys_from("docs", after.as_deref().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded))
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        let expected: Vec<String> = match &after {
            Some(a) => reference.range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)).map(|(k, _)| k.clone()).collect(),
            None => reference.keys().cloned().collect(),
        };
        prop_assert_eq!(listed, expected);
    }
}

/// The by-sequence index lists each key once, at its latest write; a key collected
/// away keeps its place, and written again it is listed once, at its new place.
#[test]
fn the_feed_lists_each_key_once_at_its_latest_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), meta).unwrap();
    let put = |keys: &[&str]| {
        store
            .write(|batch| {
                for key in keys {
                    let mut state = KeyState::new();
                    state
                        .apply(&op(1, key, &format!("{{\"{key}\":1}}")))
                        .unwrap();
                    batch.put_key_state("docs", key, &mut state.clone())?;
                }
                Ok(())
            })
            .unwrap();
    };
    let listed = || -> Vec<(u64, String)> {
        let snapshot = store.read().unwrap();
        let changes: Vec<_> = snapshot
            .changes_after(0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        changes
            .into_iter()
            .map(|(seq, _, key)| (seq, key))
            .collect()
    };
    put(&["a", "b", "c"]);
    put(&["a"]);
    assert_eq!(
        listed(),
        [(2, "b".into()), (3, "c".into()), (4, "a".into())]
    );
    // Collect "b" away (as tombstone collection removes a deleted document).
    store
        .write(|batch| {
            batch.rewrite_key_states(|_, key, _| key == "b", |_, _, _| Some(None))?;
            Ok(())
        })
        .ok();
    assert_eq!(
        store.read().unwrap().key_state("docs", "b").unwrap(),
        KeyState::new()
    );
    assert_eq!(listed().len(), 3, "the collected key keeps its place");
    put(&["b"]);
    let keys: Vec<String> = listed().into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys.iter().filter(|k| *k == "b").count(), 1, "{keys:?}");
    assert_eq!(keys.last().unwrap(), "b");
}

/// A store restored as a new replica gets the new id, remembers its former ids, and
/// starts a later incarnation than any before it; a plain reopen changes none of it.
#[test]
fn a_restored_store_remembers_its_former_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        let store = Store::open(&path, meta).unwrap();
        assert_eq!((store.former_ids(), store.incarnation()), (&[][..], 0));
    }
    Store::restore_as_new_replica(&path, 8).unwrap();
    let (first, incarnation) = {
        let store = Store::open(&path, meta).unwrap();
        assert_eq!(store.meta_at_open().node_id, 8);
        assert_eq!(store.former_ids(), [7]);
        assert!(store.incarnation() > 0);
        (
            store.read().unwrap().feed().unwrap().id,
            store.incarnation(),
        )
    };
    Store::restore_as_new_replica(&path, 9).unwrap();
    let store = Store::open(&path, meta).unwrap();
    assert_eq!(store.former_ids(), [7, 8]);
    assert!(
        store.incarnation() > incarnation,
        "later than the one before"
    );
    assert_ne!(
        store.read().unwrap().feed().unwrap().id,
        first,
        "a new feed"
    );
}
