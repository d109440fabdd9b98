//! Every decoder of bytes from outside (peer frames, stored records, context tokens,
//! CRDT states and deltas, JSON documents, CRDT operations, collection settings,
//! rights) meets arbitrary and damaged input with an error, never a panic, and what
//! it accepts encodes back to the same meaning. The CI-sized pass of what the fuzz
//! targets in `fuzz/` run for hours (`docs/security.md`).

use chorus_core::{
    ConflictRecord, ContextToken, Dot, Entry, EntryBody, Hlc, KeyState, NodeId, Op, Outcome,
    Policy, VersionVector,
};
use chorus_node::rights::Rights;
use chorus_node::{CollectionConfig, crdt, crdt_json, json};
use chorus_repl::Frame;
use chorus_store::codec;
use proptest::prelude::*;

/// Valid encodings of each kind, to damage.
fn samples() -> Vec<Vec<u8>> {
    let op = Op {
        dot: Dot::new(NodeId(3), 9),
        hlc: Hlc(77),
        collection: "c".into(),
        key: "k".into(),
        context: VersionVector::from_entries([(NodeId(1), 2)]),
        value: Some(br#"{"a":[1,2,{"b":null}]}"#.to_vec()),
    };
    let entry = Entry {
        deps: VersionVector::from_entries([(NodeId(3), 8)]),
        body: EntryBody::Write(op.clone()),
    };
    let mut state = KeyState::new();
    state.apply(&op).unwrap();
    let record = ConflictRecord::new(
        "c",
        "k",
        Policy::Lww,
        state.versions().to_vec(),
        Outcome::Winner(op.dot),
    );
    let frame = Frame::Entries {
        entries: vec![(1, entry.clone())],
        from_seq: 0,
        through_seq: 1,
        resumes: true,
    };
    vec![
        codec::encode_entry(&entry),
        codec::encode_key_state(&state),
        codec::encode_conflict(&record),
        frame.encode(),
        ContextToken::encode(&op.context, "c", "k"),
    ]
}

/// Feeds `bytes` to every decoder; checks that what one accepts re-encodes to bytes
/// that decode the same.
fn decode_everything(bytes: &[u8]) {
    if let Ok(frame) = Frame::decode(bytes) {
        assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
    }
    if let Ok(entry) = codec::decode_entry("oplog", bytes) {
        assert_eq!(
            codec::decode_entry("oplog", &codec::encode_entry(&entry)).unwrap(),
            entry
        );
    }
    if let Ok(state) = codec::decode_key_state(bytes) {
        let again = codec::decode_key_state(&codec::encode_key_state(&state)).unwrap();
        assert_eq!(again, state);
    }
    if let Ok(record) = codec::decode_conflict(bytes) {
        let again = codec::decode_conflict(&codec::encode_conflict(&record)).unwrap();
        assert_eq!(again, record);
    }
    let _ = codec::decode_meta(bytes);
    let _ = ContextToken::decode(bytes, "c", "k");
    if let Ok(map) = crdt::decode_state(bytes) {
        assert_eq!(crdt::decode_state(&crdt::encode_state(&map)).unwrap(), map);
    }
    if let Ok(delta) = crdt::decode_delta(bytes) {
        assert_eq!(
            crdt::decode_delta(&crdt::encode_delta(&delta)).unwrap(),
            delta
        );
    }
    let _ = json::check_document(bytes);
    let _ = crdt_json::parse_operations(bytes, |_| Some(NodeId(1)));
    let _ = CollectionConfig::from_json(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Rights::parse(text);
        let _ = Dot::parse(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_are_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn damaged_encodings_are_refused_not_panicked_on(
        which in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = samples()[which].clone();
        for (at, byte) in edits {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        decode_everything(&bytes);
        // A truncated one too.
        bytes.truncate(cut % (bytes.len() + 1));
        decode_everything(&bytes);
    }
}

/// The samples themselves decode (the damaged ones above start from something real).
#[test]
fn samples_decode() {
    let samples = samples();
    assert!(codec::decode_entry("oplog", &samples[0]).is_ok());
    assert!(codec::decode_key_state(&samples[1]).is_ok());
    assert!(codec::decode_conflict(&samples[2]).is_ok());
    assert!(Frame::decode(&samples[3]).is_ok());
    assert!(ContextToken::decode(&samples[4], "c", "k").is_ok());
}
