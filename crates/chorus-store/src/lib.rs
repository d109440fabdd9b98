//! Durable tables of one Chorus node, on redb.
//!
//! ```text
//!   meta       "format" -> u32 LE          "node" -> NodeMeta
//!   keys       collection 0x00 key -> KeyState      (ground truth of reads)
//!   oplog      seq u64 -> Entry (write or conflict)  (changes feed and replication
//!                                                     source, in local apply order)
//!   conflicts  id [16] -> ConflictRecord             (grow-only)
//!   peers      peer node id -> u64 cursor            (our last seq each peer acked)
//! ```
//!
//! **Architecture Invariant:** a write batch ([`Store::write`]) is one redb
//! transaction: the entries it logs, the key states they produced, the conflicts they
//! found and the node's counters commit together or not at all, and a commit returns
//! only after fsync (redb's `Durability::Immediate`).
//!
//! **Architecture Invariant:** every value is encoded as one format byte followed by
//! postcard ([`codec`]); bytes that do not decode are [`StoreError::Corrupted`], never
//! a panic. A store written by a newer format is refused at open.

mod tables;

/// The record encodings live in `chorus-codec` (shared with the peer protocol).
pub use chorus_codec as codec;
pub use chorus_codec::NodeMeta;
pub use redb::{StorageBackend, backends};
pub use tables::{Batch, Feed, Snapshot, Store};

/// The store format this build writes and reads (it reads format 1 too, and
/// upgrades the mark: format 2 keeps texts and lists of CRDT documents in pages).
pub const STORE_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store at {path}: {source}")]
    Database {
        path: String,
        source: redb::DatabaseError,
    },
    #[error(
        "the store at {path} has format {found}, newer than this build supports ({supported}); run a newer chorus"
    )]
    NewerFormat {
        path: String,
        found: u32,
        supported: u32,
    },
    /// A restore into a place that already holds a store.
    #[error("{path} already holds a store; restore into an empty data folder")]
    Occupied { path: String },
    /// A file given as a backup that is not a Chorus store.
    #[error("{path} is not a Chorus store (no format record)")]
    NotAStore { path: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Storage(#[from] redb::Error),
    #[error("corrupted data in table {table}: {reason}")]
    Corrupted { table: &'static str, reason: String },
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> StoreError {
        StoreError::Storage(redb::Error::Io(error))
    }
}

impl StoreError {
    /// True when the failure is the disk (or the user's quota) being full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Storage(redb::Error::Io(io))
                if matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        )
    }
}

impl From<chorus_codec::Corrupted> for StoreError {
    fn from(e: chorus_codec::Corrupted) -> StoreError {
        StoreError::Corrupted {
            table: e.table,
            reason: e.reason,
        }
    }
}

macro_rules! storage_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
storage_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
