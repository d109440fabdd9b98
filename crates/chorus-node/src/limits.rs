//! Every limit of a node, in one place. Each bounds memory, disk or work per request.
//!
//! **What replicates, and how large:** the largest thing that travels between nodes
//! whole is one key state (all versions of one document) or one conflict record (the
//! versions of one conflict). A node refuses a local write that would grow a key
//! state past [`KEY_STATE_BYTES_MAX`], so a key state grows past it only by merging
//! versions that other nodes wrote concurrently; a frame carries up to
//! `chorus_repl::frame::FRAME_BYTES_MAX` (over four times as much), in pieces of at most
//! `PIECE_BYTES_MAX`.

/// The limits of documents themselves (names, sizes, operations).
pub use chorus_rules::limits::*;

/// Bytes of documents one key may hold across its versions (siblings) when this node
/// accepts a write to it: 12 largest documents. A write that would grow the key past
/// it is refused (`WriteError::TooManyVersions`) until its siblings are resolved; a
/// write that shrinks the key is always taken.
pub const KEY_STATE_BYTES_MAX: usize = 12 * DOCUMENT_BYTES_MAX;

// A key state grown past its local bound by the writes of three other nodes still
// fits a frame, with room for the key and the versions' headers.
const _: () = assert!(
    4 * (KEY_STATE_BYTES_MAX + KEY_BYTES_MAX + COLLECTION_NAME_BYTES_MAX)
        < chorus_repl::frame::FRAME_BYTES_MAX
);

/// Writes waiting for the committer. Writers block (or await) when it is full, so a
/// burst cannot exhaust memory.
pub const WRITE_QUEUE_REQUESTS_MAX: usize = 4096;

/// Writes applied in one transaction; bounds the size of one commit.
pub const BATCH_WRITES_MAX: usize = 1024;

/// Live versions of one key beyond which the node logs a warning (Riak's
/// `max_siblings` lesson). Siblings are never dropped.
pub const KEY_VERSIONS_WARN: usize = 64;

/// Documents in one bulk write or bulk read (the body limit bounds their bytes).
pub const BULK_ITEMS_MAX: usize = 10_000;

/// Items in one page of a listing, change feed or conflict log.
pub const PAGE_ITEMS_MAX: usize = 1000;

/// Key states one listing page may examine (deleted documents are skipped), so a
/// collection of tombstones cannot make one request scan without bound.
pub const LIST_SCAN_KEYS_MAX: usize = 10_000;

/// How far ahead of the local clock a remote HLC may be before it is refused.
pub const CLOCK_DRIFT_MS_MAX: u64 = 60_000;

/// Document changes kept for a subscriber that has not read them yet; one that falls
/// further behind is told it lagged (and reads the document again).
pub const DOCUMENT_CHANGES_BUFFERED: usize = 4096;

/// CRDT documents holding texts or lists the committer keeps decoded between
/// writes (so that an operation costs what it changes; see `Committer::cached`).
pub const DOCUMENTS_CACHED_MAX: usize = 32;
