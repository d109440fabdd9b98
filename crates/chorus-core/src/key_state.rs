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
use std::borrow::Cow;

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

/// The CRDT version of a key, decoded: the document deltas fold into. Its dot and
/// HLC are the greatest of the deltas folded into it (they differ between replicas
/// that collected it at different times, so reads and digests use its document,
/// never its dot).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CrdtVersion {
    pub dot: Dot,
    pub hlc: Hlc,
    pub map: crdt::Map,
}

impl CrdtVersion {
    /// As a version: its state encoded (a whole document: reads, transfers).
    pub fn to_version(&self) -> Version {
        Version {
            dot: self.dot,
            hlc: self.hlc,
            value: Some(crdt::encode_state(&self.map)),
        }
    }
}

/// A key's versions and context. The CRDT version, if any, is kept decoded, so that
/// an operation changes it in place (what it costs grows with what it changes, not
/// with the document); plain versions hold their bytes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct KeyState {
    context: VersionVector,
    /// Plain versions (documents and tombstones), sorted by dot.
    versions: Vec<Version>,
    crdt: Option<CrdtVersion>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeyState {
    #[error("version {0} is not covered by the key's context")]
    VersionOutsideContext(Dot),
    #[error("versions are not sorted by dot or repeat a dot")]
    VersionsUnsorted,
    #[error("more than one version holds a CRDT document")]
    CrdtVersionRepeated,
    #[error("{0}")]
    Crdt(#[from] crdt::Corrupted),
}

impl KeyState {
    pub fn new() -> KeyState {
        KeyState::default()
    }

    /// Rebuilds a state from stored parts, refusing parts that break the invariants.
    /// A version holding a CRDT state is decoded (see [`KeyState::from_decoded`]).
    pub fn from_parts(
        context: VersionVector,
        mut versions: Vec<Version>,
    ) -> Result<KeyState, InvalidKeyState> {
        let mut crdt = None;
        if versions.iter().filter(|v| v.is_crdt()).count() > 1 {
            return Err(InvalidKeyState::CrdtVersionRepeated);
        }
        if let Some(at) = versions.iter().position(Version::is_crdt) {
            let version = versions.remove(at);
            let value = version.value.as_deref().expect("is_crdt");
            crdt = Some(CrdtVersion {
                dot: version.dot,
                hlc: version.hlc,
                map: crdt::decode_state(value)?,
            });
        }
        KeyState::from_decoded(context, versions, crdt)
    }

    /// Rebuilds a state from its plain versions and its decoded CRDT version,
    /// refusing parts that break the invariants.
    pub fn from_decoded(
        context: VersionVector,
        versions: Vec<Version>,
        crdt: Option<CrdtVersion>,
    ) -> Result<KeyState, InvalidKeyState> {
        if versions.iter().any(Version::is_crdt) {
            return Err(InvalidKeyState::CrdtVersionRepeated);
        }
        let mut dots: Vec<Dot> = versions.iter().map(|v| v.dot).collect();
        if dots.windows(2).any(|w| w[0] >= w[1]) {
            return Err(InvalidKeyState::VersionsUnsorted);
        }
        dots.extend(crdt.as_ref().map(|c| c.dot));
        if let Some(dot) = dots.into_iter().find(|d| !context.covers(*d)) {
            return Err(InvalidKeyState::VersionOutsideContext(dot));
        }
        if let Some(c) = &crdt
            && (c.map.is_empty() || versions.iter().any(|v| v.dot == c.dot))
        {
            return Err(InvalidKeyState::VersionsUnsorted);
        }
        Ok(KeyState {
            context,
            versions,
            crdt,
        })
    }

    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// Live versions, sorted by dot, the CRDT version's state encoded (which costs
    /// as much as its document: the hot paths use [`KeyState::plain_versions`] and
    /// [`KeyState::crdt`]).
    pub fn versions(&self) -> Cow<'_, [Version]> {
        let Some(crdt) = &self.crdt else {
            return Cow::Borrowed(&self.versions);
        };
        let mut all = self.versions.clone();
        let at = all.partition_point(|v| v.dot < crdt.dot);
        all.insert(at, crdt.to_version());
        Cow::Owned(all)
    }

    /// The live versions other than the CRDT version, sorted by dot.
    pub fn plain_versions(&self) -> &[Version] {
        &self.versions
    }

    /// The CRDT version, decoded.
    pub fn crdt(&self) -> Option<&CrdtVersion> {
        self.crdt.as_ref()
    }

    /// The CRDT version, to be saved (its texts and lists keep what they wrote).
    pub fn crdt_mut(&mut self) -> Option<&mut CrdtVersion> {
        self.crdt.as_mut()
    }

    /// The dots of its live versions, the CRDT version's among them.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.versions
            .iter()
            .map(|v| v.dot)
            .chain(self.crdt.as_ref().map(|c| c.dot))
    }

    /// Bytes of the documents its versions hold: what dominates its size in memory,
    /// on disk and in a frame. A CRDT version counts its document's encoding, which
    /// takes encoding it.
    pub fn value_bytes(&self) -> usize {
        value_bytes(&self.versions)
            + self
                .crdt
                .as_ref()
                .map_or(0, |c| crdt::encode_state(&c.map).len())
    }

    /// True when no live version holds a document (never written, or deleted).
    pub fn is_absent(&self) -> bool {
        self.versions.iter().all(Version::is_tombstone)
            && self.crdt.as_ref().is_none_or(|c| !c.map.is_shown())
    }

    /// Applies one op. Returns false, changing nothing, when the key's context already
    /// covers the op's dot.
    ///
    /// A CRDT delta is folded into the key's CRDT version (made if absent); a plain
    /// write removes from that version what its context covers (it replaces what its
    /// writer saw). Either way the plain versions the context covers are superseded.
    /// On an error (a delta that does not decode or apply) the state is left part
    /// changed: drop it.
    pub fn apply(&mut self, op: &Op) -> Result<bool, crdt::Corrupted> {
        if self.context.covers(op.dot) {
            return Ok(false);
        }
        let delta = match op.value.as_deref() {
            Some(value) if crdt::is_delta(value) => Some(crdt::decode_delta(value)?),
            _ => None,
        };
        self.versions.retain(|v| !op.context.covers(v.dot));
        match delta {
            Some(delta) => {
                let doc = self.crdt_for(op);
                for change in &delta.changes {
                    doc.map.apply(change, op.dot, op.hlc, &op.context)?;
                }
                self.settle_crdt(op);
            }
            None => {
                if let Some(doc) = &mut self.crdt {
                    doc.map.remove_covered(&op.context, op.dot)?;
                    if doc.map.is_empty() {
                        self.crdt = None;
                    }
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

    /// The CRDT document a write `dot` with `hlc` prepares its delta in (made empty
    /// if there is none): [`crdt::prepare`] applies the changes as it makes them,
    /// then [`KeyState::apply_prepared`] records the write.
    pub fn crdt_to_prepare(&mut self, dot: Dot, hlc: Hlc) -> &mut crdt::Map {
        &mut self
            .crdt
            .get_or_insert_with(|| CrdtVersion {
                dot,
                hlc,
                map: crdt::Map::default(),
            })
            .map
    }

    /// Records a CRDT write whose delta [`crdt::prepare`] made, and applied, in this
    /// state's document ([`KeyState::crdt_to_prepare`]): what [`KeyState::apply`]
    /// does but for applying the changes again (a remove would delete again).
    pub fn apply_prepared(&mut self, op: &Op) {
        assert!(!self.context.covers(op.dot), "a new write");
        self.versions.retain(|v| !op.context.covers(v.dot));
        self.crdt_for(op);
        self.settle_crdt(op);
        self.context.join(&op.context);
        self.context.add(op.dot);
        self.assert_invariants();
    }

    fn crdt_for(&mut self, op: &Op) -> &mut CrdtVersion {
        self.crdt.get_or_insert_with(|| CrdtVersion {
            dot: op.dot,
            hlc: op.hlc,
            map: crdt::Map::default(),
        })
    }

    /// After a CRDT write: its dot and HLC count; an empty document goes.
    fn settle_crdt(&mut self, op: &Op) {
        if let Some(doc) = &mut self.crdt {
            doc.dot = doc.dot.max(op.dot);
            doc.hlc = doc.hlc.max(op.hlc);
            if doc.map.is_empty() {
                self.crdt = None;
            }
        }
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
        let mut merged = Vec::with_capacity(self.versions.len() + other.versions.len());
        let (mut a, mut b) = (
            self.versions.iter().peekable(),
            other.versions.iter().peekable(),
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
        let empty = crdt::Map::default();
        match (&mut self.crdt, &other.crdt) {
            (None, None) => {}
            (Some(mine), theirs) => {
                let tmap = theirs.as_ref().map_or(&empty, |t| &t.map);
                mine.map.join(tmap, seen, &other.context)?;
                if let Some(t) = theirs {
                    mine.dot = mine.dot.max(t.dot);
                    mine.hlc = mine.hlc.max(t.hlc);
                }
            }
            (None, Some(theirs)) => {
                let mut map = crdt::Map::default();
                map.join(&theirs.map, seen, &other.context)?;
                self.crdt = Some(CrdtVersion {
                    dot: theirs.dot,
                    hlc: theirs.hlc,
                    map,
                });
            }
        }
        if self.crdt.as_ref().is_some_and(|c| c.map.is_empty()) {
            self.crdt = None;
        }
        self.context.join(&other.context);
        self.assert_invariants();
        Ok(())
    }

    /// The key's CRDT document, if it has one.
    pub fn crdt_document(&self) -> Option<&crdt::Map> {
        self.crdt.as_ref().map(|c| &c.map)
    }

    fn insert(&mut self, version: Version) {
        let at = self.versions.partition_point(|v| v.dot < version.dot);
        self.versions.insert(at, version);
    }

    /// This state without the plain versions `drop` selects, and without its CRDT
    /// version if `drop_crdt` selects it; the context still covers them, so a late
    /// copy of one is recognised as old.
    pub fn without_versions(
        &self,
        drop: impl Fn(&Version) -> bool,
        drop_crdt: impl Fn(&CrdtVersion) -> bool,
    ) -> KeyState {
        KeyState {
            context: self.context.clone(),
            versions: self.versions.iter().filter(|v| !drop(v)).cloned().collect(),
            crdt: self.crdt.clone().filter(|c| !drop_crdt(c)),
        }
    }

    fn assert_invariants(&self) {
        debug_assert!(self.versions.windows(2).all(|w| w[0].dot < w[1].dot));
        debug_assert!(self.dots().all(|dot| self.context.covers(dot)));
        debug_assert!(!self.versions.iter().any(Version::is_crdt));
        debug_assert!(self.crdt.as_ref().is_none_or(|c| !c.map.is_empty()));
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
