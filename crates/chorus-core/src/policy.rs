//! Resolution policies: deterministic functions of a key state.
//!
//! After every op that changes a key, the node calls [`Policy::settle`]. It detects a
//! conflict (two or more live versions) and records it; for `lww` it keeps only the
//! winner and records each loser on its own, so the record of a lost write has the
//! same id and content wherever it is detected. The winner is the version with the greatest
//! `(hlc, origin node)`, which is unique because one node's timestamps strictly
//! increase. The losers' dots stay in the key's context, so a late copy of a loser is
//! recognised as old; their values stay in the [`ConflictRecord`].
//!
//! Because settling depends only on the key state, every replica settles the same way
//! and none has to write anything to agree.

use crate::{ConflictRecord, KeyState, Outcome, Version};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub enum Policy {
    /// Keep every concurrent version; the user resolves with a context write.
    #[default]
    Siblings,
    /// The greatest `(hlc, node)` wins; losers are kept in the conflict log.
    Lww,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Siblings => "siblings",
            Policy::Lww => "lww",
        }
    }

    pub fn from_name(name: &str) -> Option<Policy> {
        match name {
            "siblings" => Some(Policy::Siblings),
            "lww" => Some(Policy::Lww),
            _ => None,
        }
    }

    /// The version a read presents as *the* value, when this policy yields one.
    pub fn winner(self, versions: &[Version]) -> Option<&Version> {
        match self {
            Policy::Siblings if versions.len() == 1 => versions.first(),
            Policy::Siblings => None,
            Policy::Lww => versions.iter().max_by_key(|v| (v.hlc, v.dot.node)),
        }
    }

    /// Resolves `state` in place and returns the conflicts it found: under
    /// `siblings` one record of all live versions; under `lww` one record per version
    /// that lost (a delete losing to a delete loses nothing and is not recorded).
    pub fn settle(self, collection: &str, key: &str, state: &mut KeyState) -> Settlement {
        let versions = state.versions();
        if versions.len() < 2 {
            return Settlement {
                conflicts: Vec::new(),
            };
        }
        match self {
            Policy::Siblings => {
                let conflicts = if versions.iter().all(Version::is_tombstone) {
                    Vec::new()
                } else {
                    vec![ConflictRecord::new(
                        collection,
                        key,
                        self,
                        versions.to_vec(),
                        Outcome::Siblings,
                    )]
                };
                Settlement { conflicts }
            }
            Policy::Lww => {
                let winner = self.winner(versions).expect("two versions").clone();
                let conflicts = versions
                    .iter()
                    .filter(|v| v.dot != winner.dot && !(v.is_tombstone() && winner.is_tombstone()))
                    .map(|loser| {
                        ConflictRecord::new(
                            collection,
                            key,
                            self,
                            vec![loser.clone()],
                            Outcome::Lost,
                        )
                    })
                    .collect();
                state.retain_versions(|v| v.dot == winner.dot);
                Settlement { conflicts }
            }
        }
    }
}

/// What settling a key found.
#[derive(Debug, PartialEq, Eq)]
pub struct Settlement {
    pub conflicts: Vec<ConflictRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, Hlc, NodeId, Op, VersionVector};

    fn write(state: &mut KeyState, node: u64, counter: u64, wall_ms: u64, value: &str) {
        state.apply(&Op {
            dot: Dot::new(NodeId(node), counter),
            hlc: Hlc::from_parts(wall_ms, 0),
            collection: "c".into(),
            key: "k".into(),
            context: VersionVector::new(),
            value: Some(value.as_bytes().to_vec()),
        });
    }

    /// LWW keeps the highest HLC, records the loser with its value, and keeps the
    /// loser's dot in the context.
    #[test]
    fn lww_keeps_winner_and_logs_loser() {
        let mut s = KeyState::new();
        write(&mut s, 1, 1, 200, "late");
        write(&mut s, 2, 1, 100, "early");
        let records = Policy::Lww.settle("c", "k", &mut s).conflicts;
        assert_eq!(s.versions().len(), 1);
        assert_eq!(s.versions()[0].value.as_deref(), Some(&b"late"[..]));
        assert!(s.context().covers(Dot::new(NodeId(2), 1)));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, Outcome::Lost);
        assert_eq!(records[0].versions[0].value.as_deref(), Some(&b"early"[..]));
    }

    /// Equal timestamps break ties by node id, the same way everywhere.
    #[test]
    fn lww_ties_break_by_node() {
        let mut s = KeyState::new();
        write(&mut s, 1, 1, 100, "one");
        write(&mut s, 2, 1, 100, "two");
        Policy::Lww.settle("c", "k", &mut s);
        assert_eq!(s.versions()[0].dot.node, NodeId(2));
    }

    /// Siblings stay, and the conflict is recorded; a single version is no conflict.
    #[test]
    fn siblings_are_kept() {
        let mut s = KeyState::new();
        write(&mut s, 1, 1, 100, "a");
        assert!(
            Policy::Siblings
                .settle("c", "k", &mut s)
                .conflicts
                .is_empty()
        );
        write(&mut s, 2, 1, 100, "b");
        let records = Policy::Siblings.settle("c", "k", &mut s).conflicts;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, Outcome::Siblings);
        assert_eq!(records[0].versions.len(), 2);
        assert_eq!(s.versions().len(), 2);
        assert_eq!(Policy::Siblings.winner(s.versions()), None);
    }
}
