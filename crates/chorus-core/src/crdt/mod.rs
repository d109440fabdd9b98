//! Replicated data types: documents whose fields are counters, bounded counters,
//! sets, registers, flags and nested maps, which merge by themselves.
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
//! once removes are stable: they are collected when applied.
//!
//! Invariants: a stored state has no empty field (empties are dropped as soon as
//! they appear); a dot's value never changes; a bounded counter's entry for a node
//! is written only by that node.

mod bounded;
mod codec;
mod dots;
mod map;
mod ops;

pub use bounded::{Bounded, Rights};
pub use codec::{decode_delta, decode_state, encode_delta, encode_state};
pub use dots::DotFun;
pub use map::{Action, Change, Delta, Field, Kind, Map};
pub use ops::{OpError, Operation, Update, path_text, prepare};

/// First byte of a version value that holds a CRDT document's state.
pub const STATE_MARKER: u8 = 0x01;
/// First byte of an op value that holds a CRDT delta.
pub const DELTA_MARKER: u8 = 0x02;
/// Byte format of states and deltas (the second byte of each).
pub const FORMAT: u8 = 1;
/// How deep maps may nest; bounds recursion on corrupt input too.
pub const PATH_DEPTH_MAX: usize = 32;

/// True when `value` is a CRDT document's state (JSON text never starts with 0x01).
pub fn is_state(value: &[u8]) -> bool {
    value.first() == Some(&STATE_MARKER)
}

/// True when `value` is a CRDT delta.
pub fn is_delta(value: &[u8]) -> bool {
    value.first() == Some(&DELTA_MARKER)
}

/// CRDT bytes that do not decode: from a damaged disk or a faulty peer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt CRDT value: {0}")]
pub struct Corrupted(pub String);
