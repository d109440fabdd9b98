//! The dot store every dot-based type is made of: a map from dots to values.
//!
//! A [`DotFun`] together with a causal context (a version vector supplied by the
//! caller: the key's, or the replica's) describes which writes are live (the dots
//! present) and which were seen and removed (covered by the context, absent).
//! Joining two of them keeps a dot when both have it, or when one has it and the
//! other's context does not cover it (the other has never seen it). That join is
//! commutative, associative and idempotent, so state transfers converge.
//!
//! Invariant: a dot's value never changes; a new value always comes with a new dot.

use crate::{Dot, VersionVector};
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DotFun<V> {
    entries: BTreeMap<Dot, V>,
}

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        DotFun {
            entries: BTreeMap::new(),
        }
    }
}

impl<V: Clone> DotFun<V> {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Live entries, sorted by dot.
    pub fn iter(&self) -> impl Iterator<Item = (Dot, &V)> {
        self.entries.iter().map(|(dot, value)| (*dot, value))
    }

    pub(crate) fn insert(&mut self, dot: Dot, value: V) {
        self.entries.insert(dot, value);
    }

    /// Removes every dot `covered` accepts: what a writer observed.
    pub(crate) fn remove_covered(&mut self, covered: &dyn Fn(Dot) -> bool) {
        self.entries.retain(|dot, _| !covered(*dot));
    }

    /// Joins `other` into this store; `mine` and `theirs` are the contexts of the
    /// two sides.
    pub(crate) fn join(&mut self, other: &DotFun<V>, mine: &VersionVector, theirs: &VersionVector) {
        self.entries
            .retain(|dot, _| other.entries.contains_key(dot) || !theirs.covers(*dot));
        for (dot, value) in &other.entries {
            if !mine.covers(*dot) {
                self.entries.entry(*dot).or_insert_with(|| value.clone());
            }
        }
    }
}
