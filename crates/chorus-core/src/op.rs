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

/// One entry of a node's op log: what it applied, from any origin, and replicates.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// Everything the origin had applied when it made this entry. A replica applies
    /// the entry only once it has applied all of these (causal delivery), so no
    /// replica ever exposes an op before one it depends on.
    pub deps: VersionVector,
    pub body: EntryBody,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EntryBody {
    /// A write or delete of one key.
    Write(Op),
    /// A conflict its origin detected. Conflict records replicate as entries so that
    /// every replica ends with the same conflict log, whether it saw the conflict
    /// itself or not; the record's id makes copies from several origins one record.
    Conflict {
        dot: Dot,
        hlc: Hlc,
        record: crate::ConflictRecord,
    },
}

impl Entry {
    pub fn dot(&self) -> Dot {
        match &self.body {
            EntryBody::Write(op) => op.dot,
            EntryBody::Conflict { dot, .. } => *dot,
        }
    }

    pub fn hlc(&self) -> Hlc {
        match &self.body {
            EntryBody::Write(op) => op.hlc,
            EntryBody::Conflict { hlc, .. } => *hlc,
        }
    }

    /// Whether a replica that has applied exactly `applied` may apply this entry:
    /// it is the next entry of its origin, and its dependencies are all applied.
    pub fn is_ready(&self, applied: &VersionVector) -> bool {
        let dot = self.dot();
        applied.get(dot.node) + 1 == dot.counter && applied.dominates(&self.deps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn entry(node: u64, counter: u64, deps: &[(u64, u64)]) -> Entry {
        Entry {
            deps: VersionVector::from_entries(deps.iter().map(|&(n, c)| (NodeId(n), c))),
            body: EntryBody::Write(Op {
                dot: Dot::new(NodeId(node), counter),
                hlc: Hlc(0),
                collection: "c".into(),
                key: "k".into(),
                context: VersionVector::new(),
                value: None,
            }),
        }
    }

    /// An entry is ready only as the next of its origin with its dependencies met.
    #[test]
    fn readiness() {
        let applied = VersionVector::from_entries([(NodeId(1), 2), (NodeId(2), 5)]);
        assert!(entry(1, 3, &[(1, 2), (2, 5)]).is_ready(&applied));
        assert!(
            !entry(1, 4, &[(1, 3)]).is_ready(&applied),
            "gap in origin 1"
        );
        assert!(
            !entry(1, 2, &[(1, 1)]).is_ready(&applied),
            "already applied"
        );
        assert!(
            !entry(1, 3, &[(2, 6)]).is_ready(&applied),
            "dependency missing"
        );
        assert!(entry(3, 1, &[]).is_ready(&applied));
    }
}
