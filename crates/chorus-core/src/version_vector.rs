//! Version vectors: a downward-closed set of dots, stored as `node -> max counter`.
//!
//! A vector *covers* a dot when its entry for the dot's node is at least the dot's
//! counter. Join is the pointwise maximum, so it is commutative, associative and
//! idempotent. The compact form is exact because replication delivers each origin's
//! ops in counter order (causal delivery): by the time a replica's vector says
//! `n: c`, it has seen every dot of `n` up to `c`.

use crate::dot::{Dot, NodeId};
use std::collections::BTreeMap;

#[derive(Clone, Default, PartialEq, Eq, Debug, Hash)]
pub struct VersionVector {
    entries: BTreeMap<NodeId, u64>,
}

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Builds a vector from `(node, counter)` pairs; zero counters are dropped and a
    /// node named twice keeps its maximum.
    pub fn from_entries(entries: impl IntoIterator<Item = (NodeId, u64)>) -> VersionVector {
        let mut vv = VersionVector::new();
        for (node, counter) in entries {
            vv.raise(node, counter);
        }
        vv
    }

    pub fn get(&self, node: NodeId) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.node) >= dot.counter
    }

    /// Adds `dot` and, by downward closure, every earlier dot of its node.
    pub fn add(&mut self, dot: Dot) {
        self.raise(dot.node, dot.counter);
    }

    fn raise(&mut self, node: NodeId, counter: u64) {
        if counter == 0 {
            return;
        }
        let entry = self.entries.entry(node).or_insert(0);
        *entry = (*entry).max(counter);
    }

    pub fn join(&mut self, other: &VersionVector) {
        for (&node, &counter) in &other.entries {
            self.raise(node, counter);
        }
    }

    /// The dots both vectors cover: the pointwise minimum.
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector::from_entries(
            self.entries
                .iter()
                .map(|(&node, &counter)| (node, counter.min(other.get(node)))),
        )
    }

    /// True when every dot `other` covers is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other
            .entries
            .iter()
            .all(|(&node, &counter)| self.get(node) >= counter)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries in node order, never with a zero counter.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().map(|(&node, &counter)| (node, counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_entries(pairs.iter().map(|&(n, c)| (NodeId(n), c)))
    }

    /// Covering is downward closed per node, and join is the pointwise maximum.
    #[test]
    fn covers_and_join() {
        let mut a = vv(&[(1, 3), (2, 1)]);
        assert!(a.covers(Dot::new(NodeId(1), 1)));
        assert!(a.covers(Dot::new(NodeId(1), 3)));
        assert!(!a.covers(Dot::new(NodeId(1), 4)));
        assert!(!a.covers(Dot::new(NodeId(3), 1)));
        a.join(&vv(&[(1, 2), (3, 5)]));
        assert_eq!(a, vv(&[(1, 3), (2, 1), (3, 5)]));
        assert!(a.dominates(&vv(&[(3, 4)])));
        assert_eq!(
            a.meet(&vv(&[(1, 1), (3, 9), (4, 2)])),
            vv(&[(1, 1), (3, 5)])
        );
        assert!(!vv(&[(3, 4)]).dominates(&a));
    }

    /// Zero counters never appear as entries, so equal sets have equal vectors.
    #[test]
    fn zero_counters_are_dropped() {
        assert_eq!(vv(&[(1, 0)]), VersionVector::new());
        assert!(vv(&[(1, 0)]).is_empty());
    }
}
