//! Conflict records: what the conflict log holds.
//!
//! A record's id is derived from the collection, the key, the policy and the dots of
//! the versions involved, and its content is a function of those versions, so two replicas that
//! detect the same conflict produce byte-identical records, and a set of records
//! replicates as a grow-only set.

use crate::{Dot, Policy, Version};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConflictId(pub [u8; 16]);

impl ConflictId {
    pub fn derive<'a>(
        collection: &str,
        key: &str,
        policy: Policy,
        dots: impl IntoIterator<Item = &'a Dot>,
    ) -> ConflictId {
        let mut hasher = Sha256::new();
        hasher.update(b"chorus-conflict-v1\0");
        for part in [collection, key, policy.name()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let mut dots: Vec<&Dot> = dots.into_iter().collect();
        dots.sort();
        for dot in dots {
            hasher.update(dot.node.0.to_le_bytes());
            hasher.update(dot.counter.to_le_bytes());
        }
        let mut id = [0; 16];
        id.copy_from_slice(&hasher.finalize()[..16]);
        ConflictId(id)
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<ConflictId> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut id = [0; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ConflictId(id))
    }
}

impl fmt::Display for ConflictId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// How the policy ended a conflict.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// All versions kept for the user to resolve.
    Siblings,
    /// This version is the value (lww); the others lost, and their values live on in
    /// the record.
    Winner(Dot),
    /// The versions merge into the value (`merge` field by field, `custom` by a
    /// handler).
    Merged,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConflictRecord {
    pub id: ConflictId,
    pub collection: String,
    pub key: String,
    pub policy: Policy,
    /// The concurrent versions, sorted by dot.
    pub versions: Vec<Version>,
    pub outcome: Outcome,
}

impl ConflictRecord {
    pub fn new(
        collection: &str,
        key: &str,
        policy: Policy,
        versions: Vec<Version>,
        outcome: Outcome,
    ) -> ConflictRecord {
        assert!(
            versions.windows(2).all(|w| w[0].dot < w[1].dot),
            "versions sorted by dot"
        );
        ConflictRecord {
            id: ConflictId::derive(collection, key, policy, versions.iter().map(|v| &v.dot)),
            collection: collection.to_owned(),
            key: key.to_owned(),
            policy,
            versions,
            outcome,
        }
    }

    /// The wall-clock milliseconds of the record's newest version (what the conflict
    /// log's retention goes by).
    pub fn newest_wall_ms(&self) -> u64 {
        self.versions
            .iter()
            .map(|v| v.hlc.wall_ms())
            .max()
            .unwrap_or(0)
    }

    /// Bytes of the documents the record holds.
    pub fn value_bytes(&self) -> usize {
        crate::key_state::value_bytes(&self.versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    /// The id depends on the set of dots, not their order, and on the key.
    #[test]
    fn id_is_order_independent_and_key_bound() {
        let a = Dot::new(NodeId(1), 1);
        let b = Dot::new(NodeId(2), 5);
        assert_eq!(
            ConflictId::derive("c", "k", Policy::Lww, [&a, &b]),
            ConflictId::derive("c", "k", Policy::Lww, [&b, &a])
        );
        assert_ne!(
            ConflictId::derive("c", "k", Policy::Lww, [&a, &b]),
            ConflictId::derive("c", "k2", Policy::Lww, [&a, &b])
        );
        assert_ne!(
            ConflictId::derive("c", "k", Policy::Lww, [&a, &b]),
            ConflictId::derive("ck", "", Policy::Lww, [&a, &b])
        );
        let id = ConflictId::derive("c", "k", Policy::Lww, [&a]);
        assert_eq!(ConflictId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ConflictId::from_hex("zz"), None);
    }
}
