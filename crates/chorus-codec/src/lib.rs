//! The byte formats of Chorus's records: what the store writes to disk and what the
//! peer protocol carries on the wire, one format for both (an entry is the same bytes
//! in the op log and in a frame). Serde mirrors of the core types, encoded as
//! `[format byte] postcard`; core types themselves are not `Serialize`.
//!
//! **Architecture Invariant:** no I/O and no storage engine here: `chorus-store`
//! (redb) and `chorus-repl` (the I/O-free replication engine) both build on it, so the
//! engine does not pull in the store. Bytes that do not decode are [`Corrupted`],
//! never a panic. A change to a record's layout bumps its format byte and keeps a
//! decoder for the older one (`docs/design/storage.md`).

pub mod bytes;
mod records;

pub use records::*;

/// Bytes that do not decode as the record they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupted data in table {table}: {reason}")]
pub struct Corrupted {
    /// Where the bytes came from: a table of the store, or `frame`.
    pub table: &'static str,
    pub reason: String,
}
