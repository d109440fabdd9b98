//! The state of one key: a dotted version vector set.
//!
//! A [`KeyState`] holds the live versions of a key (siblings), each named by its dot,
//! and the key's causal context: every dot of this key the replica has seen, whether
//! still live or superseded.
//!
//! Invariants (checked by [`KeyState::from_parts`] and asserted after every change):
//! - every live version's dot is covered by the context;
//! - versions are sorted by dot and no dot appears twice;
//! - at most one version holds a CRDT document, and it is never empty.
//!
//! Applying an op removes exactly the live versions the op's context covers and adds
//! the op's version unless the key's context already covers its dot (then the op was
//! seen before, or superseded: applying it again changes nothing). Merging two states
//! keeps a version when both have it, or when one has it and the other has never seen
//! its dot. Both are commutative, associative and idempotent (see the property tests).

use crate::{Dot, Hlc, Op, VersionVector, crdt};

/// One live version of a key. `value == None` is a tombstone (a delete).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Version {
    pub dot: Dot,
    pub hlc: Hlc,
    pub value: Option<Vec<u8>>,
}

/// Bytes of the documents `versions` hold.
pub fn value_bytes(versions: &[Version]) -> usize {
    versions
        .iter()
        .map(|v| v.value.as_ref().map_or(0, Vec::len))
        .sum()
}

impl Version {
    /// True for a deletion: no document, or a CRDT state that shows nothing (it
    /// keeps only removed texts and lists, for concurrent edits to find their places).
    pub fn is_tombstone(&self) -> bool {
        self.value.as_deref().is_none_or(crdt::is_hidden)
    }

    /// True for the version holding the key's CRDT document (see [`crate::crdt`]).
    pub fn is_crdt(&self) -> bool {
        self.value.as_deref().is_some_and(crdt::is_state)
    }
}

/// The CRDT version of a key, decoded. Its dot and HLC are the greatest of the
/// deltas folded into it (they differ between replicas that collected it at
/// different times, so reads and digests use its document, never its dot).
struct CrdtVersion {
    dot: Dot,
    hlc: Hlc,
    map: crdt::Map,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct KeyState {
    context: VersionVector,
    versions: Vec<Version>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeyState {
    #[error("version {0} is not covered by the key's context")]
    VersionOutsideContext(Dot),
    #[error("versions are not sorted by dot or repeat a dot")]
    VersionsUnsorted,
    #[error("more than one version holds a CRDT document")]
    CrdtVersionRepeated,
}

impl KeyState {
    pub fn new() -> KeyState {
        KeyState::default()
    }

    /// Rebuilds a state from stored parts, refusing parts that break the invariants.
    pub fn from_parts(
        context: VersionVector,
        versions: Vec<Version>,
    ) -> Result<KeyState, InvalidKeyState> {
        if versions.windows(2).any(|w| w[0].dot >= w[1].dot) {
            return Err(InvalidKeyState::VersionsUnsorted);
        }
        if let Some(v) = versions.iter().find(|v| !context.covers(v.dot)) {
            return Err(InvalidKeyState::VersionOutsideContext(v.dot));
        }
        if versions.iter().filter(|v| v.is_crdt()).count() > 1 {
            return Err(InvalidKeyState::CrdtVersionRepeated);
        }
        Ok(KeyState { context, versions })
    }

    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// Live versions, sorted by dot.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Bytes of the documents its versions hold: what dominates its size in memory,
    /// on disk and in a frame.
    pub fn value_bytes(&self) -> usize {
        value_bytes(&self.versions)
    }

    /// True when no live version holds a document (never written, or deleted).
    pub fn is_absent(&self) -> bool {
        self.versions.iter().all(Version::is_tombstone)
    }

    /// Applies one op. Returns false, changing nothing, when the key's context already
    /// covers the op's dot.
    ///
    /// A CRDT delta is folded into the key's CRDT version (made if absent); a plain
    /// write removes from that version what its context covers (it replaces what its
    /// writer saw). Either way the plain versions the context covers are superseded.
    pub fn apply(&mut self, op: &Op) -> Result<bool, crdt::Corrupted> {
        if self.context.covers(op.dot) {
            return Ok(false);
        }
        let delta = match op.value.as_deref() {
            Some(value) if crdt::is_delta(value) => Some(crdt::decode_delta(value)?),
            _ => None,
        };
        let doc = self.take_crdt()?;
        self.versions.retain(|v| !op.context.covers(v.dot));
        match delta {
            Some(delta) => {
                let mut doc = doc.unwrap_or_else(|| CrdtVersion {
                    dot: op.dot,
                    hlc: op.hlc,
                    map: crdt::Map::default(),
                });
                for change in &delta.changes {
                    doc.map.apply(change, op.dot, op.hlc, &op.context)?;
                }
                doc.dot = doc.dot.max(op.dot);
                doc.hlc = doc.hlc.max(op.hlc);
                self.put_crdt(doc);
            }
            None => {
                if let Some(mut doc) = doc {
                    doc.map.remove_covered(&op.context, op.dot)?;
                    self.put_crdt(doc);
                }
                self.insert(Version {
                    dot: op.dot,
                    hlc: op.hlc,
                    value: op.value.clone(),
                });
            }
        }
        self.context.join(&op.context);
        self.context.add(op.dot);
        self.assert_invariants();
        Ok(true)
    }

    /// Joins another replica's state of the same key into this one.
    pub fn merge(&mut self, other: &KeyState) -> Result<(), crdt::Corrupted> {
        let seen = self.context.clone();
        self.merge_seen(other, &seen)
    }

    /// [`KeyState::merge`] for a replica that has applied every dot `applied`
    /// covers: what `other` holds that this replica has seen (`applied` or this
    /// key's context covers it) but this state lacks was superseded here, and is not
    /// revived.
    pub fn merge_seen(
        &mut self,
        other: &KeyState,
        applied: &VersionVector,
    ) -> Result<(), crdt::Corrupted> {
        let mut seen = applied.clone();
        seen.join(&self.context);
        let seen = &seen;
        let mine = self.take_crdt()?;
        let theirs = other.crdt()?;
        let plain = |v: &&Version| !v.is_crdt();
        let mut merged = Vec::with_capacity(self.versions.len() + other.versions.len());
        let (mut a, mut b) = (
            self.versions.iter().filter(plain).peekable(),
            other.versions.iter().filter(plain).peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(x), Some(y)) if x.dot == y.dot => {
                    b.next();
                    a.next()
                }
                (Some(x), Some(y)) if x.dot < y.dot => {
                    a.next().filter(|v| !other.context.covers(v.dot))
                }
                (Some(_), None) => a.next().filter(|v| !other.context.covers(v.dot)),
                (_, Some(_)) => b.next().filter(|v| !seen.covers(v.dot)),
            };
            merged.extend(next.cloned());
        }
        self.versions = merged;
        let joined = match (mine, theirs) {
            (None, None) => None,
            (Some(mut m), t) => {
                let empty = crdt::Map::default();
                let tmap = t.as_ref().map_or(&empty, |t| &t.map);
                m.map.join(tmap, seen, &other.context)?;
                if let Some(t) = &t {
                    m.dot = m.dot.max(t.dot);
                    m.hlc = m.hlc.max(t.hlc);
                }
                Some(m)
            }
            (None, Some(mut t)) => {
                let mut map = crdt::Map::default();
                map.join(&t.map, seen, &other.context)?;
                t.map = map;
                Some(t)
            }
        };
        if let Some(doc) = joined {
            self.put_crdt(doc);
        }
        self.context.join(&other.context);
        self.assert_invariants();
        Ok(())
    }

    /// The key's CRDT document, if it has one.
    pub fn crdt_document(&self) -> Result<Option<crdt::Map>, crdt::Corrupted> {
        Ok(self.crdt()?.map(|doc| doc.map))
    }

    fn crdt(&self) -> Result<Option<CrdtVersion>, crdt::Corrupted> {
        self.versions
            .iter()
            .find(|v| v.is_crdt())
            .map(|v| {
                Ok(CrdtVersion {
                    dot: v.dot,
                    hlc: v.hlc,
                    map: crdt::decode_state(v.value.as_deref().expect("is_crdt"))?,
                })
            })
            .transpose()
    }

    fn take_crdt(&mut self) -> Result<Option<CrdtVersion>, crdt::Corrupted> {
        let doc = self.crdt()?;
        self.versions.retain(|v| !v.is_crdt());
        Ok(doc)
    }

    /// Stores the CRDT version, unless its document is empty (all removed).
    fn put_crdt(&mut self, doc: CrdtVersion) {
        if !doc.map.is_empty() {
            self.insert(Version {
                dot: doc.dot,
                hlc: doc.hlc,
                value: Some(crdt::encode_state(&doc.map)),
            });
        }
    }

    fn insert(&mut self, version: Version) {
        let at = self.versions.partition_point(|v| v.dot < version.dot);
        self.versions.insert(at, version);
    }

    /// This state without the versions `drop` selects; the context still covers
    /// them, so a late copy of one is recognised as old.
    pub fn without_versions(&self, drop: impl Fn(&Version) -> bool) -> KeyState {
        let versions = self.versions.iter().filter(|v| !drop(v)).cloned().collect();
        KeyState {
            context: self.context.clone(),
            versions,
        }
    }

    fn assert_invariants(&self) {
        debug_assert!(self.versions.windows(2).all(|w| w[0].dot < w[1].dot));
        debug_assert!(self.versions.iter().all(|v| self.context.covers(v.dot)));
        debug_assert!(self.versions.iter().filter(|v| v.is_crdt()).count() <= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    pub(crate) fn op(node: u64, counter: u64, context: &[(u64, u64)], value: Option<&str>) -> Op {
        Op {
            dot: Dot::new(NodeId(node), counter),
            hlc: Hlc::from_parts(counter * 10 + node, 0),
            collection: "c".into(),
            key: "k".into(),
            context: VersionVector::from_entries(context.iter().map(|&(n, c)| (NodeId(n), c))),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    fn values(state: &KeyState) -> Vec<Option<String>> {
        state
            .versions()
            .iter()
            .map(|v| {
                v.value
                    .as_ref()
                    .map(|b| String::from_utf8(b.clone()).unwrap())
            })
            .collect()
    }

    /// Two blind writes leave two siblings; a write with the read's context replaces
    /// exactly those.
    #[test]
    fn blind_writes_are_siblings_and_context_writes_supersede() {
        let mut s = KeyState::new();
        assert!(s.apply(&op(1, 1, &[], Some("a"))).unwrap());
        assert!(s.apply(&op(2, 1, &[], Some("b"))).unwrap());
        assert_eq!(values(&s), [Some("a".into()), Some("b".into())]);
        let ctx: Vec<_> = s.context().iter().map(|(n, c)| (n.0, c)).collect();
        assert!(s.apply(&op(1, 2, &ctx, Some("c"))).unwrap());
        assert_eq!(values(&s), [Some("c".into())]);
    }

    /// A write whose context saw only one sibling leaves the other in place.
    #[test]
    fn partial_context_keeps_unseen_sibling() {
        let mut s = KeyState::new();
        s.apply(&op(1, 1, &[], Some("a"))).unwrap();
        s.apply(&op(2, 1, &[], Some("b"))).unwrap();
        s.apply(&op(3, 1, &[(1, 1)], Some("c"))).unwrap();
        assert_eq!(values(&s), [Some("b".into()), Some("c".into())]);
    }

    /// A delete is a tombstone version; the key is absent but its context remains.
    #[test]
    fn delete_is_a_tombstone() {
        let mut s = KeyState::new();
        s.apply(&op(1, 1, &[], Some("a"))).unwrap();
        s.apply(&op(1, 2, &[(1, 1)], None)).unwrap();
        assert!(s.is_absent());
        assert_eq!(s.versions().len(), 1);
        assert!(s.context().covers(Dot::new(NodeId(1), 1)));
    }

    /// Applying an op twice, or after it was superseded, changes nothing.
    #[test]
    fn reapplying_is_a_no_op() {
        let mut s = KeyState::new();
        let first = op(1, 1, &[], Some("a"));
        s.apply(&first).unwrap();
        s.apply(&op(1, 2, &[(1, 1)], Some("b"))).unwrap();
        let before = s.clone();
        assert!(!s.apply(&first).unwrap());
        assert_eq!(s, before);
    }

    /// Stored parts that break the invariants are refused rather than trusted.
    #[test]
    fn from_parts_checks_invariants() {
        let v = |n, c| Version {
            dot: Dot::new(NodeId(n), c),
            hlc: Hlc(0),
            value: None,
        };
        let ctx = VersionVector::from_entries([(NodeId(1), 2)]);
        assert!(KeyState::from_parts(ctx.clone(), vec![v(1, 1), v(1, 2)]).is_ok());
        assert_eq!(
            KeyState::from_parts(ctx.clone(), vec![v(1, 2), v(1, 1)]),
            Err(InvalidKeyState::VersionsUnsorted)
        );
        assert_eq!(
            KeyState::from_parts(ctx, vec![v(2, 1)]),
            Err(InvalidKeyState::VersionOutsideContext(Dot::new(
                NodeId(2),
                1
            )))
        );
    }
}
