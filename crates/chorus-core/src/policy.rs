//! Resolution policies: deterministic functions of a key state.
//!
//! A key state keeps every concurrent version under every policy; a policy decides
//! what a read shows ([`Policy::winner`]) and how a conflict is recorded
//! ([`Policy::conflict`]). Because both depend only on the key state, every replica
//! holding the same state answers the same, and none has to write anything to agree.
//!
//! Why `lww` does not drop losers from the state: a loser `y` of `x` can come back
//! into play when a later write supersedes `x` without having seen `y`, and (with
//! skewed clocks) has a smaller timestamp than `y`. A replica that had dropped `y`
//! would then show the new write while one that had not would show `y`. Keeping the
//! concurrent versions and choosing at read time gives one answer everywhere. The
//! state stays small because a write without a context in an `lww` collection
//! supersedes every version its node holds (the node records them as overwritten),
//! so only writes concurrent across nodes remain side by side, until the next write.
//!
//! The `lww` winner is the version with the greatest `(hlc, origin node)`, unique
//! because one node's timestamps strictly increase.

use crate::{ConflictRecord, KeyState, Outcome, Version};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub enum Policy {
    /// Keep every concurrent version; the user resolves with a context write.
    #[default]
    Siblings,
    /// The greatest `(hlc, node)` wins; losers are kept in the conflict log.
    Lww,
    /// Concurrent versions of a JSON object merge field by field (the node's
    /// `merge` module: the rules are the collection's settings).
    Merge,
    /// A handler (a script in the settings, or the embedding application's) merges
    /// concurrent versions (the node's `custom` module).
    Custom,
    /// Documents are CRDTs (see [`crate::crdt`]), changed by operations that merge by
    /// themselves; the key holds one CRDT version. Plain versions beside it (written
    /// before the collection became `crdt`) are siblings.
    Crdt,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Siblings => "siblings",
            Policy::Lww => "lww",
            Policy::Merge => "merge",
            Policy::Custom => "custom",
            Policy::Crdt => "crdt",
        }
    }

    pub fn from_name(name: &str) -> Option<Policy> {
        match name {
            "siblings" => Some(Policy::Siblings),
            "lww" => Some(Policy::Lww),
            "merge" => Some(Policy::Merge),
            "custom" => Some(Policy::Custom),
            "crdt" => Some(Policy::Crdt),
            _ => None,
        }
    }

    /// The version a read presents as *the* value, when this policy yields one
    /// (under `merge` and `custom`, with several versions, the value is their merge
    /// instead).
    pub fn winner(self, versions: &[Version]) -> Option<&Version> {
        match self {
            Policy::Siblings | Policy::Merge | Policy::Custom if versions.len() == 1 => {
                versions.first()
            }
            Policy::Siblings | Policy::Merge | Policy::Custom => None,
            // A CRDT version (left from before the collection changed policy) has
            // no HLC of its own that replicas agree on, so it wins only alone.
            Policy::Lww => versions
                .iter()
                .max_by_key(|v| (!v.is_crdt(), v.hlc, v.dot.node)),
            Policy::Crdt => match live(versions).as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
    }

    /// The conflict `state` holds, if any: two or more live versions, not all
    /// tombstones (concurrent deletes lose nothing). The record lists them all; under
    /// `lww` it names the winner.
    pub fn conflict(self, collection: &str, key: &str, state: &KeyState) -> Option<ConflictRecord> {
        // A CRDT version's dot differs between replicas (it is the greatest of the
        // deltas folded in there), so it stays out of records, whose ids derive
        // from dots; it is never in conflict, only beside plain versions.
        let versions: Vec<Version> = state.plain_versions().to_vec();
        if versions.len() < 2 || versions.iter().all(Version::is_tombstone) {
            return None;
        }
        let outcome = match self {
            // Under crdt, plain versions (from before the collection became crdt)
            // conflict only when two hold documents; a delete concurrent with
            // operations removed what it saw, and the rest stands.
            Policy::Crdt if live(&versions).len() < 2 => return None,
            Policy::Siblings | Policy::Crdt => Outcome::Siblings,
            Policy::Merge | Policy::Custom => Outcome::Merged,
            Policy::Lww => Outcome::Winner(self.winner(&versions).expect("two versions").dot),
        };
        Some(ConflictRecord::new(
            collection, key, self, versions, outcome,
        ))
    }
}

/// The versions that hold a document (not tombstones).
fn live(versions: &[Version]) -> Vec<&Version> {
    versions.iter().filter(|v| !v.is_tombstone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, Hlc, NodeId, Op, VersionVector};

    fn write(state: &mut KeyState, node: u64, counter: u64, wall_ms: u64, value: &str) {
        let applied = state.apply(&Op {
            dot: Dot::new(NodeId(node), counter),
            hlc: Hlc::from_parts(wall_ms, 0),
            collection: "c".into(),
            key: "k".into(),
            context: VersionVector::new(),
            value: Some(value.as_bytes().to_vec()),
        });
        assert_eq!(applied, Ok(true));
    }

    /// LWW shows the highest HLC, keeps every concurrent version in the state, and
    /// records the conflict naming the winner.
    #[test]
    fn lww_shows_winner_and_records_conflict() {
        let mut s = KeyState::new();
        write(&mut s, 1, 1, 200, "late");
        write(&mut s, 2, 1, 100, "early");
        let record = Policy::Lww.conflict("c", "k", &s).unwrap();
        assert_eq!(s.versions().len(), 2);
        let versions = s.versions();
        let winner = Policy::Lww.winner(&versions).unwrap();
        assert_eq!(winner.value.as_deref(), Some(&b"late"[..]));
        assert_eq!(record.outcome, Outcome::Winner(Dot::new(NodeId(1), 1)));
        assert_eq!(record.versions.len(), 2);
    }

    /// Equal timestamps break ties by node id, the same way everywhere.
    #[test]
    fn lww_ties_break_by_node() {
        let mut s = KeyState::new();
        write(&mut s, 1, 1, 100, "one");
        write(&mut s, 2, 1, 100, "two");
        assert_eq!(
            Policy::Lww.winner(&s.versions()).unwrap().dot.node,
            NodeId(2)
        );
    }

    /// A CRDT version beside a plain one (the collection changed policy) is never
    /// in a record, whose id must not depend on its replica-dependent dot, and under
    /// lww the plain version shows.
    #[test]
    fn crdt_version_stays_out_of_records() {
        use crate::crdt::{Operation, Update, encode_delta, prepare};
        let mut s = KeyState::new();
        let dot = Dot::new(NodeId(1), 1);
        let set = Operation {
            path: vec!["n".into()],
            update: Update::CounterAdd(1),
        };
        let delta = prepare(
            &mut Default::default(),
            &VersionVector::new(),
            dot,
            Hlc(900),
            &[set],
        );
        let applied = s.apply(&Op {
            dot,
            hlc: Hlc(900),
            collection: "c".into(),
            key: "k".into(),
            context: VersionVector::new(),
            value: Some(encode_delta(&delta.unwrap())),
        });
        assert_eq!(applied, Ok(true));
        write(&mut s, 2, 1, 100, "plain");
        assert_eq!(s.versions().len(), 2);
        for policy in [Policy::Lww, Policy::Siblings, Policy::Crdt] {
            assert_eq!(policy.conflict("c", "k", &s), None, "{policy:?}");
        }
        let versions = s.versions();
        let winner = Policy::Lww.winner(&versions).unwrap();
        assert_eq!(winner.value.as_deref(), Some(&b"plain"[..]));
    }

    /// Siblings are all shown and the conflict recorded; a single version, or only
    /// concurrent deletes, is no conflict.
    #[test]
    fn siblings_are_kept() {
        let mut s = KeyState::new();
        write(&mut s, 1, 1, 100, "a");
        assert_eq!(Policy::Siblings.conflict("c", "k", &s), None);
        write(&mut s, 2, 1, 100, "b");
        let record = Policy::Siblings.conflict("c", "k", &s).unwrap();
        assert_eq!(record.outcome, Outcome::Siblings);
        assert_eq!(record.versions.len(), 2);
        assert_eq!(Policy::Siblings.winner(&s.versions()), None);
    }
}
