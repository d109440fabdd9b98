//! Field-level merge of JSON documents: the `merge` policy.
//!
//! Concurrent writes of one document that change different top-level fields both
//! survive; a field changed on both sides is decided by the collection's rule for it
//! (`lww`, `max`, `min`, `sum-of-deltas`, `union`, `siblings`).
//!
//! What a write changed is found by comparing it with what its context names: when a
//! node commits a write, it merges the versions the write's context covers (the read
//! the client based it on) and compares field by field. Each version stored in a
//! merge collection carries, beside the document, a **stamp** per field (the write
//! that last changed it: dot, HLC, and the value before that change) and the context
//! of its write:
//!
//! ```text
//!  stored value = 0x00  stamps-and-context (JSON)  0x00  document (JSON)
//! ```
//! JSON text never holds a raw 0x00 byte, so [`strip_header`] tells the two forms
//! apart and strips the header; everything that shows a version to a user does so.
//!
//! Merging the live versions of a key, field by field: a candidate value is dropped
//! when another version's context covers its stamp (that version saw the change and
//! decided after it); what is left are concurrent changes, decided by the rule.
//! Concurrent deletes lose to edits: a tombstone beside live versions is ignored.
//!
//! **Invariant:** the merge is a function of the set of live versions only (sorted
//! by dot; ties broken by `(hlc, node)`), so every replica holding the same versions
//! reads the same document, whatever order the writes arrived in.

use chorus_core::{Dot, Hlc, NodeId, Version, VersionVector};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// How a field changed concurrently on several replicas is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldRule {
    /// The change with the greatest `(hlc, node)`.
    #[default]
    Lww,
    /// The greatest number (non-numbers: `lww`).
    Max,
    /// The smallest number (non-numbers: `lww`).
    Min,
    /// Every change's delta from its base added up (counters edited as whole
    /// documents; non-numbers: `lww`).
    SumOfDeltas,
    /// The union of arrays, the `lww` winner's elements first (non-arrays: `lww`).
    Union,
    /// Keep the document in conflict (no value) until a user resolves it.
    Siblings,
}

impl FieldRule {
    pub fn name(self) -> &'static str {
        match self {
            FieldRule::Lww => "lww",
            FieldRule::Max => "max",
            FieldRule::Min => "min",
            FieldRule::SumOfDeltas => "sum-of-deltas",
            FieldRule::Union => "union",
            FieldRule::Siblings => "siblings",
        }
    }

    pub fn from_name(name: &str) -> Option<FieldRule> {
        [
            FieldRule::Lww,
            FieldRule::Max,
            FieldRule::Min,
            FieldRule::SumOfDeltas,
            FieldRule::Union,
            FieldRule::Siblings,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// The rules of one merge collection: per field, and a default.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MergeRules {
    pub default: FieldRule,
    pub fields: BTreeMap<String, FieldRule>,
}

impl MergeRules {
    fn rule(&self, field: &str) -> FieldRule {
        self.fields.get(field).copied().unwrap_or(self.default)
    }
}

/// The write that last changed a field, and the field's value before it.
#[derive(Clone, Debug, PartialEq)]
struct Stamp {
    dot: Dot,
    hlc: Hlc,
    base: Option<Value>,
}

impl Stamp {
    fn order(&self) -> (Hlc, NodeId, u64) {
        (self.hlc, self.dot.node, self.dot.counter)
    }
}

/// A version of a merge collection, decoded.
#[derive(Clone, Debug, PartialEq)]
struct Stamped {
    doc: Map<String, Value>,
    /// A stamp per field, also for fields the lineage removed (absent from `doc`).
    stamps: BTreeMap<String, Stamp>,
    /// What the version's write had seen.
    context: VersionVector,
    dot: Dot,
}

/// The document part of a stored value (a merge collection's header stripped).
/// Users see values through [`crate::document_bytes`], which also renders CRDTs.
pub fn strip_header(value: &[u8]) -> &[u8] {
    match value.first() {
        Some(0) => value[1..]
            .iter()
            .position(|b| *b == 0)
            .map_or(value, |end| &value[end + 2..]),
        _ => value,
    }
}

/// The header of a stored value (stamps and context), if it has one.
fn header(value: &[u8]) -> Option<Value> {
    (value.first() == Some(&0))
        .then(|| value[1..].iter().position(|b| *b == 0))
        .flatten()
        .and_then(|end| serde_json::from_slice::<Value>(&value[1..end + 1]).ok())
}

fn context_of(header: &Value) -> VersionVector {
    VersionVector::from_entries(
        header["context"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((NodeId(e[0].as_u64()?), e[1].as_u64()?))),
    )
}

/// The context a live version was written with, when it carries a header.
pub fn written_context(version: &Version) -> Option<VersionVector> {
    header(version.value.as_deref()?).map(|h| context_of(&h))
}

/// Reads a live version: its header if it has one; otherwise (written before the
/// collection merged) every field stamped by the version itself.
fn stamped(version: &Version) -> Option<Stamped> {
    let value = version.value.as_deref()?;
    let doc = match serde_json::from_slice(strip_header(value)) {
        Ok(Value::Object(doc)) => doc,
        Ok(other) => Map::from_iter([(String::new(), other)]),
        Err(_) => return None,
    };
    let own = |base| Stamp {
        dot: version.dot,
        hlc: version.hlc,
        base,
    };
    let Some(header) = header(value) else {
        return Some(Stamped {
            stamps: doc.keys().map(|f| (f.clone(), own(None))).collect(),
            doc,
            context: VersionVector::new(),
            dot: version.dot,
        });
    };
    let context = context_of(&header);
    let mut stamps = BTreeMap::new();
    for (field, s) in header["stamps"].as_object().into_iter().flatten() {
        let (Some(node), Some(counter), Some(hlc)) = (s[0].as_u64(), s[1].as_u64(), s[2].as_u64())
        else {
            continue;
        };
        if counter == 0 {
            continue;
        }
        let base = s.get(3).filter(|b| !b.is_null()).cloned();
        stamps.insert(
            field.clone(),
            Stamp {
                dot: Dot::new(NodeId(node), counter),
                hlc: Hlc(hlc),
                base,
            },
        );
    }
    for field in doc.keys() {
        stamps.entry(field.clone()).or_insert_with(|| own(None));
    }
    Some(Stamped {
        doc,
        stamps,
        context,
        dot: version.dot,
    })
}

/// The merge of a key's live versions.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// The merged document; `None` when every version is deleted, or a `siblings`
    /// field was changed concurrently (the document stays in conflict).
    pub value: Option<Vec<u8>>,
    /// A `siblings` field holds concurrent changes.
    pub conflict: bool,
    doc: Map<String, Value>,
    stamps: BTreeMap<String, Stamp>,
    /// Fields whose merged value no single change wrote (summed, united, …): the next
    /// write stamps them afresh, with the merged value as base.
    synthesized: BTreeSet<String>,
}

/// One version's view of a field in a merge: its value (`None`: removed), the
/// change that set it, and what that version had seen.
struct Candidate<'a> {
    value: Option<&'a Value>,
    stamp: &'a Stamp,
    context: &'a VersionVector,
}

/// Merges `versions` (a key state's, sorted by dot) field by field.
pub fn merge(versions: &[Version], rules: &MergeRules) -> Merged {
    merge_stamped(versions.iter().filter_map(stamped).collect(), rules)
}

/// What a read with `context` showed, rebuilt from the versions a node holds now:
/// the base a write with that context is compared with.
///
/// A version the context covers is taken as it is. A version it does not cover may
/// have superseded what the read saw (replication can be faster than the client):
/// when that version was written with a context the read's covers, it is rolled
/// back one step, each field it changed set to its value before the change and
/// stamped as dating from within its context (so that the version itself still
/// decides that field after it). Versions that cannot be rolled back are left out,
/// and the write then counts their fields as changed.
pub fn base_for(versions: &[Version], context: &VersionVector, rules: &MergeRules) -> Merged {
    let mut seen = Vec::new();
    for version in versions {
        let Some(mut v) = stamped(version) else {
            continue;
        };
        if context.covers(v.dot) {
            seen.push(v);
            continue;
        }
        let Some(within) = v.context.iter().max_by_key(|(_, c)| *c) else {
            continue;
        };
        if !context.dominates(&v.context) {
            continue;
        }
        let before = Stamp {
            dot: Dot::new(within.0, within.1),
            hlc: Hlc(0),
            base: None,
        };
        for (field, stamp) in v.stamps.iter_mut() {
            if stamp.dot != v.dot {
                continue;
            }
            match stamp.base.take() {
                Some(old) => v.doc.insert(field.clone(), old),
                None => v.doc.remove(field),
            };
            *stamp = before.clone();
        }
        seen.push(v);
    }
    merge_stamped(seen, rules)
}

fn merge_stamped(live: Vec<Stamped>, rules: &MergeRules) -> Merged {
    let mut merged = Merged {
        value: None,
        conflict: false,
        doc: Map::new(),
        stamps: BTreeMap::new(),
        synthesized: BTreeSet::new(),
    };
    if live.is_empty() {
        return merged;
    }
    let fields: BTreeSet<&String> = live.iter().flat_map(|v| v.stamps.keys()).collect();
    for field in fields {
        // Each version's view of the field: its value (None: removed) and stamp.
        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        for v in &live {
            let Some(stamp) = v.stamps.get(field) else {
                continue;
            };
            // Another version saw this change and decided the field after it.
            let superseded = live.iter().any(|w| {
                w.dot != v.dot
                    && w.context.covers(stamp.dot)
                    && w.stamps.get(field).is_some_and(|theirs| theirs != stamp)
            });
            if !superseded && !candidates.iter().any(|c| c.stamp.dot == stamp.dot) {
                candidates.push(Candidate {
                    value: v.doc.get(field),
                    stamp,
                    context: &v.context,
                });
            }
        }
        candidates.sort_by_key(|c| c.stamp.order());
        let Some(winner) = candidates.last() else {
            continue;
        };
        let value = if candidates.len() == 1 {
            winner.value.cloned()
        } else {
            match decide(rules.rule(field), &candidates) {
                Some(decided) => {
                    if decided.as_ref() != winner.value {
                        merged.synthesized.insert(field.clone());
                    }
                    decided
                }
                None => {
                    merged.conflict = true;
                    winner.value.cloned()
                }
            }
        };
        if let Some(value) = value {
            merged.doc.insert(field.clone(), value);
        }
        merged.stamps.insert(field.clone(), winner.stamp.clone());
    }
    if !merged.conflict {
        let doc = match merged.doc.get("") {
            Some(whole) if merged.doc.len() == 1 => whole.clone(),
            _ => Value::Object(merged.doc.clone()),
        };
        merged.value = Some(serde_json::to_vec(&doc).expect("JSON serialises"));
    }
    merged
}

/// The value of a field changed concurrently (`candidates` sorted by stamp, the lww
/// winner last), by `rule`; `None` when the rule keeps them as siblings and they
/// differ.
fn decide(rule: FieldRule, candidates: &[Candidate<'_>]) -> Option<Option<Value>> {
    let winner = candidates.last().expect("not empty");
    let lww = Some(winner.value.cloned());
    let numbers: Option<Vec<f64>> = candidates
        .iter()
        .map(|c| c.value.and_then(Value::as_f64))
        .collect();
    let number = |x: f64| {
        let integers = candidates
            .iter()
            .all(|c| c.value.is_some_and(|v| v.is_i64() || v.is_u64()));
        if integers && x.fract() == 0.0 {
            json!(x as i64)
        } else {
            json!(x)
        }
    };
    match rule {
        FieldRule::Lww => lww,
        FieldRule::Max | FieldRule::Min => {
            let Some(numbers) = numbers else { return lww };
            let pick = if rule == FieldRule::Max {
                numbers.iter().copied().fold(f64::MIN, f64::max)
            } else {
                numbers.iter().copied().fold(f64::MAX, f64::min)
            };
            Some(Some(number(pick)))
        }
        FieldRule::SumOfDeltas => {
            let Some(numbers) = numbers else { return lww };
            let base_of =
                |c: &Candidate<'_>| c.stamp.base.as_ref().and_then(Value::as_f64).unwrap_or(0.0);
            // The base with the most history: the candidate that saw every other
            // one's (exact then), else the lww winner's.
            let fullest = candidates
                .iter()
                .find(|c| candidates.iter().all(|o| c.context.dominates(o.context)))
                .unwrap_or(winner);
            let deltas: f64 = numbers
                .iter()
                .zip(candidates)
                .map(|(v, c)| v - base_of(c))
                .sum();
            Some(Some(number(base_of(fullest) + deltas)))
        }
        FieldRule::Union => {
            let arrays: Option<Vec<&Vec<Value>>> = candidates
                .iter()
                .map(|c| c.value.and_then(Value::as_array))
                .collect();
            let Some(arrays) = arrays else { return lww };
            let mut out: Vec<Value> = arrays.last().expect("not empty").to_vec();
            for array in arrays.iter().rev().skip(1) {
                for item in array.iter() {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
            }
            Some(Some(Value::Array(out)))
        }
        FieldRule::Siblings => {
            let first = candidates[0].value;
            candidates
                .iter()
                .all(|c| c.value == first)
                .then(|| first.cloned())
        }
    }
}

/// The stored form of a write of `doc` (a JSON object) in a merge collection, made by
/// `dot` at `hlc` with `context`, based on `base` (the merge of the versions the
/// context covers): fields equal to the base keep their stamps, the others get this
/// write's. Fails when `doc` is not a JSON object.
pub fn stamp_write(
    doc: &[u8],
    base: &Merged,
    dot: Dot,
    hlc: Hlc,
    context: &VersionVector,
) -> Result<Vec<u8>, String> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(doc) else {
        return Err(
            "merge and custom collections hold JSON objects; write {\"field\": value, ...}".into(),
        );
    };
    let mut stamps = Map::new();
    let names: BTreeSet<&String> = fields.keys().chain(base.stamps.keys()).collect();
    for field in names {
        let (now, before) = (fields.get(field), base.doc.get(field));
        let stamp = match base.stamps.get(field) {
            Some(kept) if now == before && !base.synthesized.contains(field) => kept.clone(),
            _ => Stamp {
                dot,
                hlc,
                base: before.cloned(),
            },
        };
        let base_value = stamp.base.clone().unwrap_or(Value::Null);
        stamps.insert(
            field.clone(),
            json!([stamp.dot.node.0, stamp.dot.counter, stamp.hlc.0, base_value]),
        );
    }
    let header = json!({
        "context": context.iter().map(|(n, c)| json!([n.0, c])).collect::<Vec<_>>(),
        "stamps": stamps,
    });
    let mut out = vec![0];
    out.extend(serde_json::to_vec(&header).expect("JSON serialises"));
    out.push(0);
    out.extend_from_slice(doc);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{KeyState, Op};
    use proptest::prelude::*;

    fn rules(default: FieldRule, fields: &[(&str, FieldRule)]) -> MergeRules {
        MergeRules {
            default,
            fields: fields.iter().map(|(f, r)| (f.to_string(), *r)).collect(),
        }
    }

    /// A writer: its node, its counter, its clock.
    struct Writer {
        node: u64,
        counter: u64,
        wall_ms: u64,
    }

    impl Writer {
        fn new(node: u64) -> Writer {
            Writer {
                node,
                counter: 0,
                wall_ms: node,
            }
        }

        /// A write of `doc` based on the versions of `read` (all of them), as the
        /// committer makes it.
        fn write(&mut self, read: &KeyState, doc: Value, rules: &MergeRules) -> Op {
            self.write_at(read, read.context(), doc, rules)
        }

        /// A write with `context` at a node that holds `state`, as the committer
        /// makes it.
        fn write_at(
            &mut self,
            state: &KeyState,
            context: &VersionVector,
            doc: Value,
            rules: &MergeRules,
        ) -> Op {
            self.counter += 1;
            self.wall_ms += 10;
            let dot = Dot::new(NodeId(self.node), self.counter);
            let hlc = Hlc::from_parts(self.wall_ms, 0);
            let base = base_for(&state.versions(), context, rules);
            let bytes = serde_json::to_vec(&doc).unwrap();
            let value = stamp_write(&bytes, &base, dot, hlc, context).unwrap();
            Op {
                dot,
                hlc,
                collection: "c".into(),
                key: "k".into(),
                context: context.clone(),
                value: Some(value),
            }
        }
    }

    fn read_doc(state: &KeyState, rules: &MergeRules) -> Value {
        serde_json::from_slice(&merge(&state.versions(), rules).value.expect("a value")).unwrap()
    }

    /// Concurrent writes that change different fields both survive; a field changed
    /// on one side only takes that side's value, even though the other side still
    /// holds the old one.
    #[test]
    fn different_fields_both_survive() {
        let r = MergeRules::default();
        let (mut a, mut b, mut s) = (Writer::new(1), Writer::new(2), KeyState::new());
        s.apply(&a.write(&s, json!({"title": "t", "body": "x", "n": 1}), &r))
            .unwrap();
        let start = s.clone();
        let wa = a.write(&start, json!({"title": "T", "body": "x", "n": 1}), &r);
        let wb = b.write(&start, json!({"title": "t", "body": "y", "n": 1}), &r);
        s.apply(&wa).unwrap();
        s.apply(&wb).unwrap();
        assert_eq!(s.versions().len(), 2);
        assert_eq!(read_doc(&s, &r), json!({"title": "T", "body": "y", "n": 1}));
        // A later write based on the merge keeps it, and ends the siblings.
        let w = a.write(&s, json!({"title": "T", "body": "y", "n": 2}), &r);
        s.apply(&w).unwrap();
        assert_eq!(s.versions().len(), 1);
        assert_eq!(read_doc(&s, &r), json!({"title": "T", "body": "y", "n": 2}));
    }

    /// The read a write is based on may already be superseded at the node that takes
    /// the write (a's change arrived there first): the write is still compared with
    /// what the read showed, so only the fields it changed count as changed.
    #[test]
    fn a_superseded_read_is_rebuilt() {
        let r = rules(FieldRule::Lww, &[("n", FieldRule::SumOfDeltas)]);
        let (mut a, mut b, mut s) = (Writer::new(1), Writer::new(2), KeyState::new());
        s.apply(&a.write(&s, json!({"title": "draft", "body": "x", "n": 10}), &r))
            .unwrap();
        let read = s.context().clone();
        // a's change reaches b's node before b's client writes, with the old read.
        let wa = a.write(&s, json!({"title": "final", "body": "x", "n": 12}), &r);
        s.apply(&wa).unwrap();
        let wb = b.write_at(
            &s,
            &read,
            json!({"title": "draft", "body": "y", "n": 11}),
            &r,
        );
        s.apply(&wb).unwrap();
        assert_eq!(s.versions().len(), 2);
        assert_eq!(
            read_doc(&s, &r),
            json!({"title": "final", "body": "y", "n": 13})
        );
    }

    /// Each rule decides a field changed on both sides.
    #[test]
    fn rules_decide_concurrent_changes() {
        // a's clock is ahead of b's here: a's change is the lww winner.
        let cases = [
            (FieldRule::Lww, json!(3), json!(5), json!(3)),
            (FieldRule::Max, json!(3), json!(9), json!(9)),
            (FieldRule::Min, json!(9), json!(5), json!(5)),
            (FieldRule::SumOfDeltas, json!(12), json!(11), json!(13)),
            (
                FieldRule::Union,
                json!(["a", "x"]),
                json!(["a", "y"]),
                json!(["a", "x", "y"]),
            ),
            (FieldRule::Max, json!("z"), json!("a"), json!("z")),
        ];
        for (rule, from_a, from_b, expected) in cases {
            let r = rules(FieldRule::Lww, &[("f", rule)]);
            let (mut a, mut b, mut s) = (Writer::new(1), Writer::new(2), KeyState::new());
            let start_value = if rule == FieldRule::Union {
                json!(["a"])
            } else {
                json!(10)
            };
            s.apply(&a.write(&s, json!({ "f": start_value }), &r))
                .unwrap();
            let start = s.clone();
            let wa = a.write(&start, json!({ "f": from_a }), &r);
            let wb = b.write(&start, json!({ "f": from_b }), &r);
            s.apply(&wa).unwrap();
            s.apply(&wb).unwrap();
            assert_eq!(read_doc(&s, &r), json!({ "f": expected }), "{rule:?}");
        }
    }

    /// Under `siblings` a field changed on both sides keeps the document in
    /// conflict; equal changes do not.
    #[test]
    fn siblings_rule_keeps_the_conflict() {
        let r = rules(FieldRule::Siblings, &[]);
        let (mut a, mut b, mut s) = (Writer::new(1), Writer::new(2), KeyState::new());
        s.apply(&a.write(&s, json!({"f": 1, "g": 1}), &r)).unwrap();
        let start = s.clone();
        s.apply(&a.write(&start, json!({"f": 2, "g": 1}), &r))
            .unwrap();
        s.apply(&b.write(&start, json!({"f": 3, "g": 2}), &r))
            .unwrap();
        let merged = merge(&s.versions(), &r);
        assert!(merged.conflict);
        assert_eq!(merged.value, None);
    }

    /// A field removed on one side and untouched on the other stays removed; a
    /// concurrent delete of the whole document loses to an edit; stored values show
    /// their document only.
    #[test]
    fn removals_deletes_and_headers() {
        let r = MergeRules::default();
        let (mut a, mut b, mut s) = (Writer::new(1), Writer::new(2), KeyState::new());
        s.apply(&a.write(&s, json!({"f": 1, "g": 1}), &r)).unwrap();
        let start = s.clone();
        s.apply(&a.write(&start, json!({"f": 1}), &r)).unwrap();
        s.apply(&b.write(&start, json!({"f": 2, "g": 1}), &r))
            .unwrap();
        assert_eq!(read_doc(&s, &r), json!({"f": 2}));

        let mut delete = b.write(&s, json!({}), &r);
        delete.value = None;
        let edit = a.write(&s, json!({"f": 5}), &r);
        s.apply(&delete).unwrap();
        s.apply(&edit).unwrap();
        assert_eq!(read_doc(&s, &r), json!({"f": 5}));
        let stored = edit.value.unwrap();
        assert_eq!(strip_header(&stored), br#"{"f":5}"#);
        assert_eq!(strip_header(br#"{"plain":1}"#), br#"{"plain":1}"#);
        assert!(
            stamp_write(
                b"[1]",
                &merge(&[], &r),
                Dot::new(NodeId(1), 9),
                Hlc(1),
                &VersionVector::new()
            )
            .is_err()
        );
    }

    proptest! {
        /// Three writers edit random fields concurrently and in chains; every
        /// delivery order of their writes, with duplicates, reads the same merged
        /// document under every rule.
        #[test]
        fn every_delivery_order_reads_the_same(
            steps in proptest::collection::vec((0u64..3, 0usize..3, 0i64..5, any::<bool>()), 1..12),
            order_seed in any::<u64>(),
            rule_index in 0usize..6,
        ) {
            let all = [FieldRule::Lww, FieldRule::Max, FieldRule::Min, FieldRule::SumOfDeltas, FieldRule::Union, FieldRule::Siblings];
            let r = rules(all[rule_index], &[]);
            let mut writers = [Writer::new(1), Writer::new(2), Writer::new(3)];
            // Each writer's own view: what it has applied.
            let mut views = [KeyState::new(), KeyState::new(), KeyState::new()];
            let mut ops = Vec::new();
            for (who, field, value, sync) in steps {
                let who = who as usize;
                if sync {
                    // This writer first receives everything written so far.
                    for op in &ops { views[who].apply(op).unwrap(); }
                }
                let mut doc = match merge(&views[who].versions(), &r).value {
                    Some(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap(),
                    None => json!({}),
                };
                let v = if rule_index == 4 { json!([value]) } else { json!(value) };
                doc[["a", "b", "c"][field]] = v;
                let op = writers[who].write(&views[who], doc, &r);
                views[who].apply(&op).unwrap();
                ops.push(op);
            }
            let mut forward = KeyState::new();
            for op in &ops { forward.apply(op).unwrap(); }
            let mut shuffled = ops.clone();
            let mut x = order_seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut other = KeyState::new();
            for op in shuffled.iter().chain(ops.iter().take(2)) { other.apply(op).unwrap(); }
            prop_assert_eq!(merge(&forward.versions(), &r), merge(&other.versions(), &r));
        }
    }
}
