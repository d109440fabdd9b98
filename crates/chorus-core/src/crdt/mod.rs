//! Replicated data types: documents whose fields are counters, bounded counters,
//! sets, registers, flags, texts, lists and nested maps, which merge by themselves.
//!
//! They share the node's causality instead of bringing their own: every write to a
//! CRDT document is an ordinary op with the node's dot, HLC and the key's context,
//! whose value is a [`Delta`] (what the write changed) rather than a document. The
//! key state keeps one CRDT version whose value is the document's state (a [`Map`]),
//! and [`crate::KeyState::apply`] folds each delta into it. Plain versions, if a key
//! has any, stay beside it as usual.
//!
//! ```text
//!   client ops ──prepare (writer's committer: kinds, rights)──▶ Delta ──op log──▶ peers
//!                                                                 │
//!        KeyState::apply (every replica, causal order) ◀──────────┘
//!          └▶ Map::apply: remove the dots the writer had seen, add the write's dot
//! ```
//!
//! Why deltas and not whole states in the log: an op then costs what it changed,
//! not the size of the document, on disk and on the wire. Why this is enough for
//! convergence: deltas are applied exactly once (the node's version vector) and in
//! causal order (`Entry::is_ready`), and concurrent deltas commute, because a
//! delta only removes dots its writer had seen and adds its own. A state transfer
//! joins whole states instead ([`Map::join`]), which is a semilattice join.
//!
//! Metadata is bounded by the number of writers, not by history: a field, set
//! element or register keeps at most one dot per node that wrote it concurrently,
//! a counter one total per node, and removed things leave nothing behind (the key's
//! context, a version vector, remembers them). So there is nothing left to collect
//! once removes are stable: they are collected when applied. Texts and lists are
//! the exception: their deleted items stay, in runs, to order concurrent inserts
//! (`sequenced`); a document left with only removed ones is stored as a *hidden*
//! state, which reads treat as deleted.
//!
//! Invariants: a stored state has no empty field (empties are dropped as soon as
//! they appear); a dot's value never changes; a bounded counter's entry for a node
//! is written only by that node.

mod bounded;
mod codec;
mod dots;
mod map;
mod ops;
mod sequenced;

pub use bounded::{Bounded, Rights};
pub use chorus_text::Saved;
pub use codec::{
    PageReader, decode_delta, decode_state, encode_delta, encode_state, load_state, save_state,
};
pub use dots::DotFun;
pub use map::{Action, Change, Delta, Field, Kind, Map};
pub use ops::{OpError, Operation, Update, path_text, prepare};
pub use sequenced::Sequenced;

/// First byte of a version value that holds a CRDT document's state.
pub const STATE_MARKER: u8 = 0x01;
/// First byte of a state that reads show nothing of (only removed texts and lists
/// are left in it): the version stands for a deletion.
pub const HIDDEN_STATE_MARKER: u8 = 0x03;
/// First byte of an op value that holds a CRDT delta.
pub const DELTA_MARKER: u8 = 0x02;
/// Byte format of states and deltas (the second byte of each).
pub const FORMAT: u8 = 1;
/// Byte format of states as the store keeps them: texts and lists in pages.
pub const PAGED_FORMAT: u8 = 2;
/// How deep maps may nest; bounds recursion on corrupt input too.
pub const PATH_DEPTH_MAX: usize = 32;

/// True when `value` is a CRDT document's state (JSON text never starts with 0x01
/// or 0x03).
pub fn is_state(value: &[u8]) -> bool {
    matches!(value.first(), Some(&(STATE_MARKER | HIDDEN_STATE_MARKER)))
}

/// True when `value` is a CRDT state that reads show nothing of.
pub fn is_hidden(value: &[u8]) -> bool {
    value.first() == Some(&HIDDEN_STATE_MARKER)
}

/// True when `value` is a CRDT delta.
pub fn is_delta(value: &[u8]) -> bool {
    value.first() == Some(&DELTA_MARKER)
}

/// CRDT bytes that do not decode: from a damaged disk or a faulty peer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt CRDT value: {0}")]
pub struct Corrupted(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, Hlc, NodeId, VersionVector};

    fn path(p: &str) -> Vec<String> {
        p.split('/').skip(1).map(str::to_owned).collect()
    }

    /// Writes `operations` as node `node`'s write number `counter` on `doc` (seen
    /// with `context`), applied there, and returns its delta.
    fn write(
        doc: &mut Map,
        context: &mut VersionVector,
        node: u64,
        counter: u64,
        operations: &[(&str, Update)],
    ) -> Result<Delta, OpError> {
        let dot = Dot::new(NodeId(node), counter);
        let operations: Vec<Operation> = operations
            .iter()
            .map(|(p, update)| Operation {
                path: path(p),
                update: update.clone(),
            })
            .collect();
        // Prepared in a copy: a refused write leaves `doc` as it was.
        let mut work = doc.clone();
        let delta = prepare(&mut work, context, dot, Hlc(counter), &operations)?;
        *doc = work;
        context.add(dot);
        Ok(delta)
    }

    fn sample() -> (Map, VersionVector, Vec<Delta>) {
        let (mut doc, mut context) = (Map::default(), VersionVector::new());
        let deltas = vec![
            write(
                &mut doc,
                &mut context,
                1,
                1,
                &[
                    ("/n", Update::CounterAdd(-7)),
                    ("/b", Update::BoundedAdd(9)),
                    ("/s", Update::SetAdd(b"\"x\"".to_vec())),
                    ("/m/r", Update::MvSet(b"1".to_vec())),
                    ("/m/l", Update::LwwSet(b"2".to_vec())),
                    ("/m/f", Update::FlagEnable),
                    (
                        "/t",
                        Update::TextInsert {
                            pos: 0,
                            text: "héllo".into(),
                        },
                    ),
                    (
                        "/m/q",
                        Update::ListInsert {
                            pos: 0,
                            value: b"[1]".to_vec(),
                        },
                    ),
                    ("/t", Update::TextDelete { pos: 1, len: 2 }),
                ],
            )
            .unwrap(),
            write(
                &mut doc,
                &mut context,
                1,
                2,
                &[(
                    "/b",
                    Update::BoundedTransfer {
                        to: NodeId(2),
                        by: 4,
                    },
                )],
            )
            .unwrap(),
        ];
        (doc, context, deltas)
    }

    /// States and deltas survive a round trip through their byte format.
    #[test]
    fn codec_round_trips() {
        let (doc, _, deltas) = sample();
        let bytes = encode_state(&doc);
        assert!(is_state(&bytes) && !is_delta(&bytes));
        assert_eq!(decode_state(&bytes).unwrap(), doc);
        for delta in deltas {
            let bytes = encode_delta(&delta);
            assert!(is_delta(&bytes));
            assert_eq!(decode_delta(&bytes).unwrap(), delta);
        }
    }

    /// Every truncation and every flipped byte of a state is refused or decodes to
    /// a valid state; none panics. An unknown format names itself.
    #[test]
    fn corrupt_bytes_are_refused_not_panicked_on() {
        let (doc, _, deltas) = sample();
        let state = encode_state(&doc);
        for cut in 0..state.len() {
            assert!(decode_state(&state[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..state.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bytes = state.clone();
                bytes[at] ^= flip;
                if let Ok(decoded) = decode_state(&bytes) {
                    assert_eq!(decode_state(&encode_state(&decoded)).unwrap(), decoded);
                }
            }
        }
        let delta = encode_delta(&deltas[0]);
        for cut in 0..delta.len() {
            assert!(decode_delta(&delta[..cut]).is_err(), "cut at {cut}");
        }
        let mut future = state.clone();
        future[1] = FORMAT + 1;
        assert!(decode_state(&future).unwrap_err().0.contains("format"));
    }

    /// Rights: the creating node holds what it added, transfers move them, and a
    /// node cannot spend or send more than it holds.
    #[test]
    fn bounded_counter_rights() {
        let (mut doc, mut context, _) = sample();
        let Some(Field::Bounded(b)) = doc.get(&path("/b"), Kind::Bounded) else {
            panic!("bounded counter")
        };
        assert_eq!(
            (b.value(), b.rights(NodeId(1)), b.rights(NodeId(2))),
            (9, 5, 4)
        );
        let refused = write(
            &mut doc,
            &mut context,
            1,
            3,
            &[("/b", Update::BoundedAdd(-6))],
        );
        assert_eq!(
            refused,
            Err(OpError::InsufficientRights {
                path: "/b".into(),
                held: 5,
                needed: 6,
                holders: vec![(NodeId(1), 5), (NodeId(2), 4)],
            })
        );
        let send = Update::BoundedTransfer {
            to: NodeId(1),
            by: 1,
        };
        assert!(matches!(
            write(&mut doc, &mut context, 1, 3, &[("/b", send)]),
            Err(OpError::SelfTransfer { .. })
        ));
        write(
            &mut doc,
            &mut context,
            2,
            1,
            &[("/b", Update::BoundedAdd(-4))],
        )
        .unwrap();
        let Some(Field::Bounded(b)) = doc.get(&path("/b"), Kind::Bounded) else {
            panic!("bounded counter")
        };
        assert_eq!((b.value(), b.rights(NodeId(2))), (5, 0));
    }

    /// Operations of one write apply in order: an add then a remove of one element
    /// leaves nothing, and a later operation sees the field an earlier one made.
    #[test]
    fn one_write_applies_in_order() {
        let (mut doc, mut context) = (Map::default(), VersionVector::new());
        write(
            &mut doc,
            &mut context,
            1,
            1,
            &[
                ("/s", Update::SetAdd(b"1".to_vec())),
                ("/s", Update::SetRemove(b"1".to_vec())),
                ("/n", Update::CounterAdd(1)),
                ("/n", Update::CounterAdd(2)),
            ],
        )
        .unwrap();
        assert!(doc.get(&path("/s"), Kind::Set).is_none());
        let Some(Field::Counter(n)) = doc.get(&path("/n"), Kind::Counter) else {
            panic!("counter")
        };
        assert_eq!((Field::counter_value(n), n.len()), (3, 1));
        let mismatch = write(
            &mut doc,
            &mut context,
            1,
            2,
            &[("/x", Update::FlagEnable), ("/x", Update::CounterAdd(1))],
        );
        assert!(matches!(mismatch, Err(OpError::TypeMismatch { .. })));
    }

    fn text_of(doc: &Map) -> Option<String> {
        match doc.get(&path("/t"), Kind::Text) {
            Some(Field::Text(t)) if t.is_shown() => Some(t.items().content()),
            _ => None,
        }
    }

    fn insert(pos: u64, text: &str) -> Update {
        Update::TextInsert {
            pos,
            text: text.into(),
        }
    }

    /// A write made against an old read (a device's, offline) whose node took other
    /// writes since: each of its edits counts positions in the read plus the edits
    /// before it in the same write, not in what the node holds now.
    #[test]
    fn edits_of_one_write_against_an_old_read_land_where_meant() {
        let (mut doc, mut context) = (Map::default(), VersionVector::new());
        write(&mut doc, &mut context, 1, 1, &[("/t", insert(0, "world"))]).unwrap();
        let read = context.clone();
        // Node 1 takes another client's write at the start...
        write(&mut doc, &mut context, 1, 2, &[("/t", insert(0, ">> "))]).unwrap();
        // ...then the device's, made against its read of "world".
        let mut old = read.clone();
        let delta = write(
            &mut doc,
            &mut old,
            1,
            3,
            &[
                ("/t", insert(0, "hello")),
                ("/t", insert(5, ", ")),
                ("/t", Update::TextDelete { pos: 7, len: 1 }),
                ("/t", insert(7, "W")),
            ],
        )
        .unwrap();
        context.add(Dot::new(NodeId(1), 3));
        // Both inserts at the start are concurrent: they go side by side, whole.
        assert_eq!(text_of(&doc).unwrap(), ">> hello, World");
        // Past the end of the read (5 characters), though not of the text now.
        let mut stale = read.clone();
        let refused = write(&mut doc, &mut stale, 1, 4, &[("/t", insert(7, "!"))]);
        assert!(
            matches!(refused, Err(OpError::Beyond { shown: 5, .. })),
            "{refused:?}"
        );
        // Another replica applying the same writes in order agrees.
        let mut other = Map::default();
        let mut seen = VersionVector::new();
        write(&mut other, &mut seen, 1, 1, &[("/t", insert(0, "world"))]).unwrap();
        let mut then = seen.clone();
        write(&mut other, &mut then, 1, 2, &[("/t", insert(0, ">> "))]).unwrap();
        for change in &delta.changes {
            other
                .apply(change, Dot::new(NodeId(1), 3), Hlc(3), &read)
                .unwrap();
        }
        assert_eq!(text_of(&other), text_of(&doc));
    }

    /// Removing a text deletes what its remover saw and keeps what was typed
    /// concurrently; a document left with only removed texts is stored hidden (a
    /// deletion), and still places a concurrent edit.
    #[test]
    fn a_removed_text_keeps_concurrent_typing_and_hides_the_document() {
        let (mut doc, mut context) = (Map::default(), VersionVector::new());
        write(&mut doc, &mut context, 1, 1, &[("/t", insert(0, "abc"))]).unwrap();
        let seen_by_both = context.clone();
        let mut concurrent = doc.clone();
        let remove = write(&mut doc, &mut context, 1, 2, &[("/t", Update::Remove)]).unwrap();
        assert_eq!(text_of(&doc), None);
        assert!(!doc.is_empty() && !doc.is_shown());
        assert!(is_hidden(&encode_state(&doc)));
        assert_eq!(decode_state(&encode_state(&doc)).unwrap(), doc);
        // Node 2, which saw "abc" but not the remove, types between b and c.
        let mut theirs = seen_by_both.clone();
        let typed = write(
            &mut concurrent,
            &mut theirs,
            2,
            1,
            &[("/t", insert(2, "XY"))],
        )
        .unwrap();
        for change in &typed.changes {
            doc.apply(change, Dot::new(NodeId(2), 1), Hlc(1), &seen_by_both)
                .unwrap();
        }
        for change in &remove.changes {
            concurrent
                .apply(change, Dot::new(NodeId(1), 2), Hlc(2), &seen_by_both)
                .unwrap();
        }
        assert_eq!(text_of(&doc).as_deref(), Some("XY"));
        assert_eq!(doc, concurrent);
        assert!(!is_hidden(&encode_state(&doc)));
    }

    /// A counter keeps one total per writing node, however many increments: its
    /// metadata is bounded by the number of writers.
    #[test]
    fn counter_metadata_is_bounded_by_writers() {
        let (mut doc, mut context) = (Map::default(), VersionVector::new());
        for counter in 1..=100 {
            let node = counter % 3 + 1;
            write(
                &mut doc,
                &mut context,
                node,
                counter,
                &[("/n", Update::CounterAdd(1))],
            )
            .unwrap();
        }
        let Some(Field::Counter(n)) = doc.get(&path("/n"), Kind::Counter) else {
            panic!("counter")
        };
        assert_eq!((Field::counter_value(n), n.len()), (100, 3));
    }

    /// Goal: counters are never silently wrong. Method: a node refuses an add that
    /// takes the sum it sees past an i64 (plain and bounded counters); two nodes
    /// adding `i64::MAX` concurrently make a sum no node could refuse, and it is
    /// exact; from there, adds that move further out are refused, one back is taken.
    #[test]
    fn counter_sums_are_exact_and_refused_past_i64_where_known() {
        let (mut doc, mut context) = (Map::default(), VersionVector::new());
        let add = |by| {
            [
                ("/n", Update::CounterAdd(by)),
                ("/b", Update::BoundedAdd(by)),
            ]
        };
        write(&mut doc, &mut context, 1, 1, &add(i64::MAX)).unwrap();
        for op in add(1) {
            let refused = write(&mut doc, &mut context, 2, 1, &[op]);
            assert!(
                matches!(refused, Err(OpError::Overflow { .. })),
                "{refused:?}"
            );
        }
        let (mut other, mut other_context) = (Map::default(), VersionVector::new());
        write(&mut other, &mut other_context, 2, 1, &add(i64::MAX)).unwrap();
        doc.join(&other, &context, &other_context).unwrap();
        context.join(&other_context);
        let (Some(Field::Counter(n)), Some(Field::Bounded(b))) = (
            doc.get(&path("/n"), Kind::Counter).cloned(),
            doc.get(&path("/b"), Kind::Bounded).cloned(),
        ) else {
            panic!("both counters")
        };
        let sum = 2 * i128::from(i64::MAX);
        assert_eq!(Field::counter_value(&n), sum);
        assert_eq!(b.value() as i128, sum);
        for op in add(1) {
            let refused = write(&mut doc, &mut context, 1, 2, &[op]);
            assert!(
                matches!(refused, Err(OpError::Overflow { .. })),
                "{refused:?}"
            );
        }
        write(
            &mut doc,
            &mut context,
            1,
            2,
            &[("/n", Update::CounterAdd(-5))],
        )
        .unwrap();
    }
}
