//! Every limit of a node, in one place. Each bounds memory, disk or work per request.

/// Longest document key, in bytes: keys are stored and listed in full.
pub const KEY_BYTES_MAX: usize = 1024;

/// Longest collection name, in bytes.
pub const COLLECTION_NAME_BYTES_MAX: usize = 128;

/// Largest document, in bytes of JSON. A document is held in memory whole, and
/// twice on disk (op log and key state). Equal to the HTTP body limit's default.
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// CRDT operations in one write (`POST /v1/docs/{c}/{key}/ops`): all are checked
/// and applied in one step of the committer.
pub const OPERATIONS_MAX: usize = 1000;

/// Writes waiting for the committer. Writers block (or await) when it is full, so a
/// burst cannot exhaust memory.
pub const WRITE_QUEUE_MAX: usize = 4096;

/// Writes applied in one transaction; bounds the size of one commit.
pub const BATCH_WRITES_MAX: usize = 1024;

/// Live versions of one key beyond which the node logs a warning (Riak's
/// `max_siblings` lesson). Siblings are never dropped.
pub const SIBLINGS_WARN: usize = 64;

/// Items in one page of a listing, change feed or conflict log.
pub const PAGE_ITEMS_MAX: usize = 1000;

/// Key states one listing page may examine (deleted documents are skipped), so a
/// collection of tombstones cannot make one request scan without bound.
pub const LIST_SCAN_MAX: usize = 10_000;

/// How far ahead of the local clock a remote HLC may be before it is refused.
pub const CLOCK_DRIFT_MS_MAX: u64 = 60_000;
