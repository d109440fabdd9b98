//! The limits of documents themselves: names, sizes, operations. A node's own
//! limits (queues, batches, pages, what replicates) are in `chorus_node::limits`,
//! which re-exports these, so that every limit is found in one place.

/// Longest document key, in bytes: keys are stored and listed in full.
pub const KEY_BYTES_MAX: usize = 1024;

/// Longest collection name, in bytes.
pub const COLLECTION_NAME_BYTES_MAX: usize = 128;

/// Largest document, in bytes of JSON. A document is held in memory whole, and
/// twice on disk (op log and key state). Equal to the HTTP body limit's default.
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest set element or register value of a CRDT document, in bytes of JSON.
/// Every operation reads and rewrites its whole document, so one large value would
/// make every later operation on the document slow (a 15 MiB element cost each
/// small operation tens of milliseconds); large content belongs in a plain document
/// that the CRDT one names.
pub const CRDT_VALUE_BYTES_MAX: usize = 64 * 1024;

/// CRDT operations in one write (`POST /v1/docs/{c}/{key}/ops`): all are checked
/// and applied in one step of the committer.
pub const WRITE_OPERATIONS_MAX: usize = 1000;

const _: () = assert!(CRDT_VALUE_BYTES_MAX < DOCUMENT_BYTES_MAX);
