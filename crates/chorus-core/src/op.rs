//! The op: the unit every replica logs, applies and (later) replicates.

use crate::{Dot, Hlc, VersionVector};

/// One write or delete of one key, as made by its origin node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Op {
    /// Unique id of this write; `dot.node` is the origin.
    pub dot: Dot,
    pub hlc: Hlc,
    pub collection: String,
    pub key: String,
    /// The versions of this key that the write supersedes: the context of the read
    /// it was based on. Empty for a blind write, which supersedes nothing.
    pub context: VersionVector,
    /// The new document, or `None` for a delete (a tombstone version).
    pub value: Option<Vec<u8>>,
}
