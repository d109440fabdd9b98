//! What the committer is asked and what it answers: the types the [`Node`] handle
//! and the committer thread share, in one home so that neither module depends on
//! the other for them.
//!
//! ```text
//!  Node::{write, update, apply_remote, replicate} ─▶ Request { job, reply } ─▶ committer
//!                                                                       ◀── WriteAck │ RemoteOutcome │ () │ WriteError
//! ```
//!
//! [`Node`]: crate::Node

use crate::devices::{Upload, UploadOutcome};
use crate::document::Context;
use chorus_core::crdt::{self, Operation};
use chorus_core::{ConflictRecord, Dot, Entry, Hlc, KeyState, NodeId, VersionVector};
use chorus_store::StoreError;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// One write or delete, before the node gives it a dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub collection: String,
    /// `None` asks the node to generate a key unique across all leaders.
    pub key: Option<String>,
    /// The JSON document, or `None` to delete.
    pub value: Option<Vec<u8>>,
    /// The context of the read this write is based on; `None` for a blind write.
    pub context: Option<Context>,
}

/// The answer to a durable write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteAck {
    pub key: String,
    /// The key's context after the write: use it for the next write to this key.
    pub context: Context,
    pub dot: Dot,
    pub hlc: Hlc,
    /// The write's position in this node's change feed.
    pub seq: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Invalid(String),
    /// CRDT operations sent to a collection whose policy is not `crdt`.
    #[error("collection {collection} has policy {policy}; CRDT operations need policy crdt")]
    NotCrdt { collection: String, policy: String },
    /// A whole document written to a `crdt` collection, whose documents change by
    /// operations only.
    #[error(
        "collection {collection} holds CRDT documents: change them with operations, not a whole document"
    )]
    WholeCrdtDocument { collection: String, key: String },
    #[error("document is {bytes} bytes; at most {max} are accepted")]
    TooLarge { bytes: usize, max: usize },
    /// The write would grow the key's versions (siblings) past
    /// `limits::KEY_STATE_BYTES_MAX`; it changed nothing.
    #[error(
        "the document's versions would hold {bytes} bytes, more than the {max} one key may hold; \
         resolve its siblings first (write with the context of a read)"
    )]
    TooManyVersions { bytes: usize, max: usize },
    #[error(
        "the store failed to commit; restart the node to recover (nothing acknowledged is lost)"
    )]
    StoreFailed,
    /// A commit failed because the disk is full; the node refuses writes until it is
    /// restarted once space is freed.
    #[error(
        "the disk of the node's data folder is full: this write was not made, and the node \
         refuses writes until space is freed and it is restarted (nothing acknowledged is lost)"
    )]
    DiskFull,
    #[error("stored data is corrupt: {0}")]
    Corrupted(String),
    /// A CRDT operation the document refuses (a type mismatch, a bad path, a
    /// bounded counter's missing rights); the write changed nothing.
    #[error("{0}")]
    Refused(#[from] crdt::OpError),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The write cannot be taken now but can shortly (or on another node); it
    /// changed nothing.
    #[error("{0}")]
    Busy(String),
}

/// Why the store refuses writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// A commit failed (an I/O error other than a full disk).
    CommitFailed,
    /// A commit failed because the disk is full.
    DiskFull,
}

impl StoreFailure {
    /// The error writes get meanwhile.
    pub fn error(self) -> WriteError {
        match self {
            StoreFailure::CommitFailed => WriteError::StoreFailed,
            StoreFailure::DiskFull => WriteError::DiskFull,
        }
    }
}

/// Whether the store takes writes. After a failed commit it does not, until the
/// node is reopened; the failure remembers whether the disk was full, so that
/// clients and `/v1/status` can say what the operator must do.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth(std::sync::atomic::AtomicU8);

impl StoreHealth {
    const FAILED: u8 = 1;
    const DISK_FULL: u8 = 2;

    pub(crate) fn fail(&self, error: &StoreError) {
        let state = if error.is_disk_full() {
            StoreHealth::DISK_FULL
        } else {
            StoreHealth::FAILED
        };
        self.0.store(state, Ordering::Release);
    }

    pub(crate) fn failure(&self) -> Option<StoreFailure> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            StoreHealth::DISK_FULL => Some(StoreFailure::DiskFull),
            _ => Some(StoreFailure::CommitFailed),
        }
    }

    /// The error every write gets while the store is failed.
    pub(crate) fn refusal(&self) -> Option<WriteError> {
        self.failure().map(StoreFailure::error)
    }
}

/// What replication (and upkeep) asks a node to commit besides entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationStep {
    /// Peer `peer` has every entry of ours up to `seq`. Cursors are kept per node id:
    /// a peer that lost its disk comes back with a new id and starts from the beginning.
    SaveCursor { peer: NodeId, seq: u64 },
    /// Merge key states and conflict records from a peer's transfer.
    MergeState {
        keys: Vec<(String, String, KeyState)>,
        conflicts: Vec<ConflictRecord>,
    },
    /// A transfer is complete: `applied` joins what this node has applied; in
    /// `buckets` (all the sender's keys were sent), a key not written since change
    /// `unchanged_since` loses its versions `applied` covers (collected at the sender).
    AdoptState {
        applied: VersionVector,
        buckets: Vec<u8>,
        unchanged_since: u64,
    },
    /// Collect op-log entries before `before_seq`.
    TruncateLog { before_seq: u64 },
    /// Collect deleted documents whose every version `stable` covers (every member
    /// has applied them). The node's version vector still covers their dots, so an
    /// old copy arriving later is recognised and not revived.
    CollectTombstones { stable: VersionVector },
    /// Move the conflict log's retention watermark to `before_wall_ms` when records
    /// older than it exist here; every node then prunes by the watermark (see
    /// `committer::RETENTION_COLLECTION`).
    PruneConflicts { before_wall_ms: u64 },
}

/// The result of applying a batch of entries from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOutcome {
    /// Everything this node has applied, durably, after the batch.
    pub applied: VersionVector,
    /// Entries of the batch still waiting for an entry they depend on, in order.
    pub waiting: Vec<Entry>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

/// One queued request: what to do, and who waits for the answer.
pub(crate) struct Request {
    pub job: Job,
    pub reply: ReplyTo,
}

pub(crate) enum Job {
    Local {
        write: Write,
        /// Supersede whatever versions exist when the write is applied (used for
        /// collection settings, whose writer means "replace the settings").
        supersede_current: bool,
    },
    /// CRDT operations on one document (see [`chorus_core::crdt`]).
    Update {
        collection: String,
        key: String,
        operations: Vec<Operation>,
        /// The read the operations were made against (`None`: what the node holds).
        read: Option<Context>,
    },
    Remote {
        entries: Vec<Entry>,
    },
    Step(ReplicationStep),
    /// A device's writes, taken in one commit with this node's record of the device
    /// (see [`crate::devices`]).
    Upload(Upload),
    /// Delete these records of devices of this node's, each if it can still go (see
    /// [`crate::devices`], "Expiry").
    ExpireDeviceRecords {
        keys: Vec<String>,
        before_ms: u64,
    },
}

pub(crate) enum ReplyTo {
    Local(Reply<WriteAck>),
    Remote(Reply<RemoteOutcome>),
    Upload(Reply<Vec<UploadOutcome>>),
    /// Told when the job is committed (a dropped receiver is fine: nobody waits).
    Done(Reply<()>),
}

/// Conflicts recorded by this node since it started, per (collection, policy).
pub type ConflictCounts = std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>;
