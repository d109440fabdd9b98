//! The persisted form of core types: serde mirrors encoded as `[format byte] postcard`.
//!
//! Core types are not `Serialize` (see `chorus-core`); the structs here are the
//! on-disk schema, version 1. A change to any of them must bump its format byte and
//! keep a decoder for the older one.

use crate::Corrupted;
use chorus_core::crdt::{self, Saved};
use chorus_core::{
    ConflictId, ConflictRecord, CrdtVersion, Dot, Entry, EntryBody, Hlc, KeyState, NodeId, Op,
    Outcome, Policy, Version, VersionVector,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const RECORD_FORMAT: u8 = 1;

/// What a node knows about itself; rewritten by every batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub node_id: u64,
    pub name: String,
    /// The last HLC this node issued or observed.
    pub hlc: u64,
    /// Sequence number the next op-log entry gets.
    pub next_seq: u64,
    /// The first sequence number still in the op log: entries before it were
    /// collected (every neighbour had them, or the retention bound passed).
    pub log_start: u64,
    /// What the node has applied without the entries in its log (collected entries,
    /// adopted transfers), as `(node, counter)`.
    pub floor: Vec<(u64, u64)>,
    /// The node's version vector: for each origin, the counter of the last entry of
    /// it this node applied (entries are applied in counter order per origin).
    pub applied: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct DotV1(u64, u64);

#[derive(Serialize, Deserialize)]
struct VersionV1 {
    dot: DotV1,
    hlc: u64,
    #[serde(with = "crate::bytes::option")]
    value: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct KeyStateV1 {
    context: Vec<(u64, u64)>,
    versions: Vec<VersionV1>,
}

#[derive(Serialize, Deserialize)]
struct OpV1 {
    dot: DotV1,
    hlc: u64,
    collection: String,
    key: String,
    context: Vec<(u64, u64)>,
    #[serde(with = "crate::bytes::option")]
    value: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
enum EntryBodyV1 {
    Write(OpV1),
    Conflict {
        dot: DotV1,
        hlc: u64,
        record: ConflictV1,
    },
}

#[derive(Serialize, Deserialize)]
struct EntryV1 {
    deps: Vec<(u64, u64)>,
    body: EntryBodyV1,
}

#[derive(Serialize, Deserialize)]
struct ConflictV1 {
    collection: String,
    key: String,
    policy: String,
    versions: Vec<VersionV1>,
    /// The lww winner; `None` for siblings and merge.
    winner: Option<DotV1>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT];
    out.extend(postcard::to_stdvec(value).expect("encoding into a Vec cannot fail"));
    out
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, Corrupted> {
    let corrupted = |reason: String| Corrupted { table, reason };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| corrupted(e.to_string()))
        }
        Some((other, _)) => Err(corrupted(format!("unknown record format {other}"))),
        None => Err(corrupted("empty record".into())),
    }
}

fn dot_v1(dot: Dot) -> DotV1 {
    DotV1(dot.node.0, dot.counter)
}

fn dot_from(table: &'static str, d: &DotV1) -> Result<Dot, Corrupted> {
    if d.1 == 0 {
        return Err(Corrupted {
            table,
            reason: "dot with counter 0".into(),
        });
    }
    Ok(Dot::new(NodeId(d.0), d.1))
}

fn vv_v1(vv: &VersionVector) -> Vec<(u64, u64)> {
    vv.iter().map(|(n, c)| (n.0, c)).collect()
}

fn vv_from(entries: &[(u64, u64)]) -> VersionVector {
    VersionVector::from_entries(entries.iter().map(|&(n, c)| (NodeId(n), c)))
}

fn versions_v1(versions: &[Version]) -> Vec<VersionV1> {
    versions
        .iter()
        .map(|v| VersionV1 {
            dot: dot_v1(v.dot),
            hlc: v.hlc.0,
            value: v.value.clone(),
        })
        .collect()
}

fn versions_from(table: &'static str, versions: Vec<VersionV1>) -> Result<Vec<Version>, Corrupted> {
    versions
        .into_iter()
        .map(|v| {
            Ok(Version {
                dot: dot_from(table, &v.dot)?,
                hlc: Hlc(v.hlc),
                value: v.value,
            })
        })
        .collect()
}

pub fn encode_meta(meta: &NodeMeta) -> Vec<u8> {
    encode(meta)
}

pub fn decode_meta(bytes: &[u8]) -> Result<NodeMeta, Corrupted> {
    decode("meta", bytes)
}

pub fn encode_key_state(state: &KeyState) -> Vec<u8> {
    encode(&KeyStateV1 {
        context: vv_v1(state.context()),
        versions: versions_v1(&state.versions()),
    })
}

/// A key state as the store keeps it: its CRDT document's texts and lists as the
/// headers of their pages, the pages changed since the last save handed to `pages`
/// with their field's path (see `chorus_core::crdt::save_state`).
pub fn encode_key_state_paged(
    state: &mut KeyState,
    pages: &mut dyn FnMut(&[String], Saved),
) -> Vec<u8> {
    let mut versions = versions_v1(state.plain_versions());
    if let Some(c) = state.crdt_mut() {
        let version = VersionV1 {
            dot: dot_v1(c.dot),
            hlc: c.hlc.0,
            value: Some(crdt::save_state(&mut c.map, pages)),
        };
        let at = versions.partition_point(|v| (v.dot.0, v.dot.1) < (version.dot.0, version.dot.1));
        versions.insert(at, version);
    }
    encode(&KeyStateV1 {
        context: vv_v1(state.context()),
        versions,
    })
}

/// A key state [`encode_key_state_paged`] wrote, its pages read by `page(path, id)`.
pub fn decode_key_state_paged(
    bytes: &[u8],
    page: &mut crdt::PageReader<'_>,
) -> Result<KeyState, Corrupted> {
    let raw: KeyStateV1 = decode("keys", bytes)?;
    let corrupted = |reason: String| Corrupted {
        table: "keys",
        reason,
    };
    let (mut plain, mut crdt_version) = (Vec::new(), None);
    for version in versions_from("keys", raw.versions)? {
        if !version.is_crdt() {
            plain.push(version);
            continue;
        }
        if crdt_version.is_some() {
            return Err(corrupted("two CRDT versions".into()));
        }
        let value = version.value.as_deref().expect("is_crdt");
        let map = crdt::load_state(value, page).map_err(|e| corrupted(e.to_string()))?;
        crdt_version = Some(CrdtVersion {
            dot: version.dot,
            hlc: version.hlc,
            map,
        });
    }
    KeyState::from_decoded(vv_from(&raw.context), plain, crdt_version)
        .map_err(|e| corrupted(e.to_string()))
}

pub fn decode_key_state(bytes: &[u8]) -> Result<KeyState, Corrupted> {
    let raw: KeyStateV1 = decode("keys", bytes)?;
    let versions = versions_from("keys", raw.versions)?;
    KeyState::from_parts(vv_from(&raw.context), versions).map_err(|e| Corrupted {
        table: "keys",
        reason: e.to_string(),
    })
}

fn op_v1(op: &Op) -> OpV1 {
    OpV1 {
        dot: dot_v1(op.dot),
        hlc: op.hlc.0,
        collection: op.collection.clone(),
        key: op.key.clone(),
        context: vv_v1(&op.context),
        value: op.value.clone(),
    }
}

/// An op; a CRDT delta in it must decode, so that a corrupt delta (from disk, or
/// a peer's frame) is refused here rather than found when it is applied.
fn op_from(raw: OpV1) -> Result<Op, Corrupted> {
    if let Some(delta) = raw
        .value
        .as_deref()
        .filter(|v| chorus_core::crdt::is_delta(v))
    {
        chorus_core::crdt::decode_delta(delta).map_err(|e| Corrupted {
            table: "oplog",
            reason: e.to_string(),
        })?;
    }
    Ok(Op {
        dot: dot_from("oplog", &raw.dot)?,
        hlc: Hlc(raw.hlc),
        collection: raw.collection,
        key: raw.key,
        context: vv_from(&raw.context),
        value: raw.value,
    })
}

fn conflict_v1(record: &ConflictRecord) -> ConflictV1 {
    ConflictV1 {
        collection: record.collection.clone(),
        key: record.key.clone(),
        policy: record.policy.name().to_owned(),
        versions: versions_v1(&record.versions),
        winner: match record.outcome {
            Outcome::Siblings | Outcome::Merged => None,
            Outcome::Winner(dot) => Some(dot_v1(dot)),
        },
    }
}

fn conflict_from(table: &'static str, raw: ConflictV1) -> Result<ConflictRecord, Corrupted> {
    let corrupted = |reason: String| Corrupted { table, reason };
    let policy = Policy::from_name(&raw.policy)
        .ok_or_else(|| corrupted(format!("unknown policy {}", raw.policy)))?;
    let outcome = match &raw.winner {
        None if matches!(policy, Policy::Merge | Policy::Custom) => Outcome::Merged,
        None => Outcome::Siblings,
        Some(dot) => Outcome::Winner(dot_from(table, dot)?),
    };
    let versions = versions_from(table, raw.versions)?;
    if versions.windows(2).any(|w| w[0].dot >= w[1].dot) {
        return Err(corrupted("versions not sorted".into()));
    }
    Ok(ConflictRecord::new(
        &raw.collection,
        &raw.key,
        policy,
        versions,
        outcome,
    ))
}

pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let body = match &entry.body {
        EntryBody::Write(op) => EntryBodyV1::Write(op_v1(op)),
        EntryBody::Conflict { dot, hlc, record } => EntryBodyV1::Conflict {
            dot: dot_v1(*dot),
            hlc: hlc.0,
            record: conflict_v1(record),
        },
    };
    encode(&EntryV1 {
        deps: vv_v1(&entry.deps),
        body,
    })
}

/// Decodes an op-log entry (`table` names where the bytes came from, for errors:
/// the op log, or a peer's frame).
pub fn decode_entry(table: &'static str, bytes: &[u8]) -> Result<Entry, Corrupted> {
    let raw: EntryV1 = decode(table, bytes)?;
    let body = match raw.body {
        EntryBodyV1::Write(op) => EntryBody::Write(op_from(op)?),
        EntryBodyV1::Conflict { dot, hlc, record } => EntryBody::Conflict {
            dot: dot_from(table, &dot)?,
            hlc: Hlc(hlc),
            record: conflict_from(table, record)?,
        },
    };
    Ok(Entry {
        deps: vv_from(&raw.deps),
        body,
    })
}

pub fn encode_conflict(record: &ConflictRecord) -> Vec<u8> {
    encode(&conflict_v1(record))
}

pub fn decode_conflict(bytes: &[u8]) -> Result<ConflictRecord, Corrupted> {
    conflict_from("conflicts", decode("conflicts", bytes)?)
}

/// Checks that a stored conflict sits under the id its content derives.
pub fn conflict_id_matches(id: &[u8], record: &ConflictRecord) -> bool {
    id == ConflictId::derive(
        &record.collection,
        &record.key,
        record.policy,
        record.versions.iter().map(|v| &v.dot),
    )
    .0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record type survives a round trip; a wrong format byte or garbage is
    /// reported as corruption, not a panic.
    #[test]
    fn round_trips_and_refuses_garbage() {
        let op = Op {
            dot: Dot::new(NodeId(3), 9),
            hlc: Hlc(77),
            collection: "c".into(),
            key: "k".into(),
            context: VersionVector::from_entries([(NodeId(1), 2)]),
            value: Some(b"{}".to_vec()),
        };
        let entry = Entry {
            deps: VersionVector::from_entries([(NodeId(3), 8)]),
            body: EntryBody::Write(op.clone()),
        };
        assert_eq!(decode_entry("oplog", &encode_entry(&entry)).unwrap(), entry);
        let mut state = KeyState::new();
        state.apply(&op).unwrap();
        assert_eq!(decode_key_state(&encode_key_state(&state)).unwrap(), state);
        let record = ConflictRecord::new(
            "c",
            "k",
            Policy::Lww,
            state.versions().to_vec(),
            Outcome::Winner(op.dot),
        );
        assert_eq!(decode_conflict(&encode_conflict(&record)).unwrap(), record);
        let noted = Entry {
            deps: VersionVector::new(),
            body: EntryBody::Conflict {
                dot: op.dot,
                hlc: op.hlc,
                record: record.clone(),
            },
        };
        assert_eq!(decode_entry("oplog", &encode_entry(&noted)).unwrap(), noted);
        assert!(conflict_id_matches(&record.id.0, &record));

        let mut bad = encode_entry(&entry);
        bad[0] = 2;
        assert!(matches!(decode_entry("oplog", &bad), Err(Corrupted { .. })));
        assert!(matches!(
            decode_key_state(&[1, 0xff, 0xff]),
            Err(Corrupted { .. })
        ));
        assert!(matches!(decode_meta(&[]), Err(Corrupted { .. })));
    }
}
