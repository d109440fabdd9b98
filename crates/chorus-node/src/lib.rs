//! The Chorus node runtime: one replica's store, its write path and its read path.
//!
//! ```text
//!  put/delete ──▶ bounded queue ──▶ committer thread ──▶ one redb txn + fsync per batch
//!  (any thread)    (WRITE_QUEUE_REQUESTS_MAX)   (sole writer)         │
//!                                                            ├──▶ replies (acks)
//!  get/list/changes ◀── redb read txn (snapshot)             └──▶ committed-seq watch
//! ```
//!
//! The same [`Node`] is what `chorus serve` runs behind its HTTP API and what an
//! application embeds with [`open`].
//!
//! **Architecture Invariant:** the committer thread is the only writer. It applies a
//! batch of writes in one transaction, commits it durably, and only then answers any
//! of them: an acknowledged write has been fsynced.
//!
//! **Architecture Invariant:** after a failed commit the node refuses every later
//! write ([`WriteError::StoreFailed`]) until it is reopened, because redb's state
//! after an I/O error is not trusted (the same rule redb follows).

mod committer;
pub mod devices;
pub mod leases;
pub mod limits;
mod node;
mod request;
pub mod tokens;

// The document rules, from their own crate (`chorus-rules`): the modules embedders
// use stay reachable here, the others serve this crate only.
use chorus_rules::{collections, document};
pub use chorus_rules::{crdt_json, custom, json, merge, rights};

/// The CRDT types (operations, documents) for embedders: see [`Node::update`].
pub use chorus_core::crdt;
pub use chorus_core::{
    ConflictId, ConflictRecord, Dot, Entry, EntryBody, Hlc, KeyState, NodeId, Op, Outcome, Policy,
    VersionVector,
};
pub use chorus_repl::{LogPosition, PeerStatus, StateCursor};
pub use chorus_store::{Feed, OpenError};
pub use collections::{CollectionConfig, Home, check_collection_name};
pub use committer::DocumentChange;
pub use document::{
    Change, ChangesPage, ConflictsPage, Context, DocVersion, Document, DocumentsPage, KeysPage,
    document_bytes,
};
pub use node::{
    BucketHashes, ConflictFilter, Node, NodeConfig, NodeStatus, ReadError, RemoteOutcome, Replica,
    ReplicationStep, Resolution, ResolveError, STATE_BUCKETS, StateChunk, StoreFailure, Write,
    WriteAck, WriteError, bucket_of, open, restore_backup,
};
