//! Uploads from device replicas (see `docs/design/devices.md`).
//!
//! A device is not a member of the cluster: it is a client of the servers' dots. The
//! node that takes its upload gives each write a dot of its own, judged against the
//! context the device read, so no version vector or key state ever names a device.
//!
//! A device numbers its writes (`seq`, increasing per device). A node takes an
//! upload of one collection **in one commit together with its record of the device**:
//! the document `_devices/{device}/{node name}/{collection}` of a reserved collection,
//! written only by the node of that name (and its restored selves, whose versions
//! are merged: [`Taken::of`]), holding the greatest `seq` it answered for (`through`)
//! and, for the writes of that last upload, the dots it gave them (`dots`) and why
//! it refused any (`refused`), so that a device that never got the answer learns it
//! from a retry. A write is refused on its own (a key or document the node does not
//! accept, a write the collection refuses): the others of the upload are taken.
//!
//! **Invariant:** a write whose `seq` a node's record covers was taken by that node,
//! and is never taken again by it: an upload cut off and retried on the same node
//! answers "taken before" for what was committed. The record replicates like any
//! document, so another node can tell from it what a node it cannot reach took (the
//! device names that node as `in_doubt_at` when it retries elsewhere).
//!
//! **Expiry.** A device acknowledges the answers it received (`acked`, the greatest
//! `seq` it has an answer for from this node, sent with its next upload or alone). A
//! record whose answers were all acknowledged (`acked >= through`) is needed no more:
//! the device holds no write in doubt at this node that the record covers, and never
//! sends a settled `seq` again (a write queued again gets a new one). Such a record is
//! deleted once untouched for the node's retention (`Node::expire_device_records`),
//! and a later upload starts a new one. A record not acknowledged is kept: the
//! device may be away with a write in doubt here, and only the record can answer it.

use crate::document::Context;
use crate::node::{Node, ReadError};
use crate::request::{Job, ReplyTo, Request, WriteAck, WriteError};
use chorus_core::crdt::Operation;
use chorus_core::{Dot, KeyState, NodeId, VersionVector};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// The reserved collection of nodes' records of devices.
pub const DEVICES_COLLECTION: &str = "_devices";
/// Writes one upload may carry.
pub const UPLOAD_WRITES_MAX: usize = 10_000;

/// A device's id: 128 random bits, written as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u128);

impl DeviceId {
    /// Parses 32 hex digits.
    pub fn parse(text: &str) -> Option<DeviceId> {
        let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
        valid
            .then(|| u128::from_str_radix(text, 16).ok())
            .flatten()
            .map(DeviceId)
    }

    /// A new random id.
    pub fn random() -> Result<DeviceId, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(DeviceId(u128::from_le_bytes(bytes)))
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One write of a device, as it uploads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceWrite {
    /// The device's number for the write: increasing per device.
    pub seq: u64,
    pub key: String,
    pub change: Change,
    /// The context of the read the device made the write against (`None`: blind).
    pub context: Option<Context>,
}

/// What a device's write does to its document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The whole JSON document, or `None` to delete.
    Document(Option<Vec<u8>>),
    /// CRDT operations (a `crdt` collection), made against the write's context.
    Operations(Vec<Operation>),
}

/// The writes of one device to one collection, to take together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub device: DeviceId,
    pub collection: String,
    /// In increasing `seq` order.
    pub writes: Vec<DeviceWrite>,
    /// The greatest `seq` the device has this node's answer for (0: none): the
    /// answers of the record up to it are needed no more.
    pub acked: u64,
}

/// Writes a device says are in doubt at `taker`, a member that has not confirmed
/// them here: `seqs` (first, last) cannot be taken now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {taker} may have taken writes {} to {} of this upload ({reason}): retry on {taker}, or here later",
    seqs.0, seqs.1
)]
pub struct InDoubt {
    pub taker: String,
    pub seqs: (u64, u64),
    pub reason: String,
}

/// Why records of devices could not be expired.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What became of one uploaded write.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Taken now: its dot, and the document's context after it.
    Taken { seq: u64, ack: WriteAck },
    /// Taken by an earlier upload (this node's, or the named node's, record covers
    /// it), with its dot when the record still names it (it names those of the
    /// taker's last upload of the device): read the document to see it.
    TakenBefore { seq: u64, dot: Option<Dot> },
    /// Refused; it changed nothing (the device should not send it again).
    Refused { seq: u64, error: WriteError },
}

impl UploadOutcome {
    pub fn seq(&self) -> u64 {
        match self {
            UploadOutcome::Taken { seq, .. }
            | UploadOutcome::TakenBefore { seq, .. }
            | UploadOutcome::Refused { seq, .. } => *seq,
        }
    }
}

/// The key of the record of `device` in `collection` by the node named `node` (every
/// id the name has had: a node restored from a backup continues its record).
pub(crate) fn record_key(device: DeviceId, node: &str, collection: &str) -> String {
    format!("{device}/{node}/{collection}")
}

/// What a node's record says it took of one device in one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Every `seq` up to this was answered for (0: none).
    pub through: u64,
    /// The dots given to the writes of the last upload taken.
    pub dots: BTreeMap<u64, Dot>,
    /// Why writes of the last upload were refused.
    pub refused: BTreeMap<u64, String>,
    /// The device has the answers for every `seq` up to this.
    pub acked: u64,
}

impl Taken {
    /// The record a key state of `_devices` holds: its versions merged (a node and
    /// its restored self may each have written one; what either answered holds).
    pub(crate) fn of(state: &KeyState) -> Taken {
        let mut merged = Taken::default();
        for version in state.plain_versions() {
            let Some(record) = version
                .value
                .as_deref()
                .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
            else {
                continue;
            };
            let entries = |field: &str| {
                record[field]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(seq, v)| Some((seq.parse::<u64>().ok()?, v.as_str()?.to_owned())))
                    .collect::<Vec<_>>()
            };
            merged.dots.extend(
                entries("dots")
                    .into_iter()
                    .filter_map(|(seq, dot)| Some((seq, Dot::parse(&dot)?))),
            );
            merged.refused.extend(entries("refused"));
            merged.through = merged.through.max(record["through"].as_u64().unwrap_or(0));
            merged.acked = merged.acked.max(record["acked"].as_u64().unwrap_or(0));
        }
        merged
    }

    /// Whether the record `state` holds can go: every answer it keeps was
    /// acknowledged, and it was last written before `before_ms` (wall clock).
    pub(crate) fn expired(state: &KeyState, before_ms: u64) -> bool {
        let Some(newest) = state.plain_versions().iter().map(|v| v.hlc).max() else {
            return false;
        };
        let taken = Taken::of(state);
        !state.is_absent() && taken.acked >= taken.through && newest.wall_ms() < before_ms
    }

    /// The record's document.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let dots: serde_json::Map<String, Value> = self
            .dots
            .iter()
            .map(|(seq, dot)| (seq.to_string(), Value::String(dot.to_string())))
            .collect();
        let refused: serde_json::Map<String, Value> = self
            .refused
            .iter()
            .map(|(seq, why)| (seq.to_string(), Value::String(why.clone())))
            .collect();
        serde_json::json!({
            "through": self.through,
            "dots": dots,
            "refused": refused,
            "acked": self.acked,
        })
        .to_string()
        .into_bytes()
    }

    /// What this record says of write `seq`, if it covers it.
    pub fn outcome(&self, seq: u64) -> Option<UploadOutcome> {
        if let Some(why) = self.refused.get(&seq) {
            return Some(UploadOutcome::Refused {
                seq,
                error: WriteError::Invalid(format!("refused before: {why}")),
            });
        }
        (seq <= self.through).then(|| UploadOutcome::TakenBefore {
            seq,
            dot: self.dots.get(&seq).copied(),
        })
    }
}

impl Node {
    /// Takes a device's writes to one collection, all in one commit with this node's
    /// record of the device; answers each in order. Writes the record covers are
    /// answered [`UploadOutcome::TakenBefore`] and not taken again; a write the node
    /// does not accept is refused on its own.
    pub async fn upload(&self, upload: Upload) -> Result<Vec<UploadOutcome>, WriteError> {
        self.check_upload(&upload)?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            job: Job::Upload(upload),
            reply: ReplyTo::Upload(reply),
        };
        self.submit(request, answer).await
    }

    fn check_upload(&self, upload: &Upload) -> Result<(), WriteError> {
        if upload.writes.len() > UPLOAD_WRITES_MAX {
            return Err(WriteError::Invalid(format!(
                "an upload carries at most {UPLOAD_WRITES_MAX} writes; got {}",
                upload.writes.len()
            )));
        }
        if upload.writes.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(WriteError::Invalid(
                "an upload's writes must be in increasing seq order".into(),
            ));
        }
        crate::collections::check_collection_name(&upload.collection).map_err(WriteError::Invalid)
    }

    /// [`Node::upload`], blocking.
    pub fn upload_blocking(&self, upload: Upload) -> Result<Vec<UploadOutcome>, WriteError> {
        self.check_upload(&upload)?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            job: Job::Upload(upload),
            reply: ReplyTo::Upload(reply),
        };
        self.submit_blocking(request, answer)
    }

    /// Settles what a device says is in doubt at nodes (`in_doubt_at`, names) before
    /// this node takes `writes`: a write the named node's record (as this node has
    /// it) covers is answered from that record; the rest are returned to take, unless
    /// the named node may still hold them with its record on its way. That is so
    /// while it is another member (`is_member`); and, when it left or is this node's
    /// own former self (before a restore from a backup), while some member is known
    /// (`seen`: what the members have applied, joined) to have applied writes of it,
    /// or of an id this node cannot name, that this node has not (`seen` is `None`
    /// until this node has heard what every member applied: then it waits too).
    pub fn settle_doubt(
        &self,
        device: DeviceId,
        collection: &str,
        mut writes: Vec<DeviceWrite>,
        in_doubt_at: &[String],
        is_member: &dyn Fn(&str) -> bool,
        seen: Option<&VersionVector>,
    ) -> Result<(Vec<UploadOutcome>, Vec<DeviceWrite>), InDoubt> {
        let mut answered = Vec::new();
        for taker in in_doubt_at {
            let in_doubt = |seqs, reason: String| InDoubt {
                taker: taker.clone(),
                seqs,
                reason,
            };
            let taken = self
                .device_taken(device, taker, collection)
                .map_err(|e| in_doubt((0, 0), e.to_string()))?;
            let (before, after): (Vec<_>, Vec<_>) = writes
                .into_iter()
                .partition(|w| taken.outcome(w.seq).is_some());
            answered.extend(before.iter().filter_map(|w| taken.outcome(w.seq)));
            if let (Some(first), Some(last)) = (after.first(), after.last()) {
                let seqs = (first.seq, last.seq);
                let myself = taker == self.name();
                if !myself && is_member(taker) {
                    let reason = "it has not confirmed them here yet".to_owned();
                    return Err(in_doubt(seqs, reason));
                }
                let names: std::collections::HashMap<NodeId, String> =
                    self.replica().known_names().into_iter().collect();
                // Its former ids (this node's, before restores; or the departed
                // node's), and, for a departed node, ids this node cannot name.
                let its = |id: &NodeId| match names.get(id) {
                    Some(name) => name == taker && *id != self.node_id(),
                    None => !myself,
                };
                if myself && !names.keys().any(its) {
                    // Never restored: its own record, which the commit checks, is all.
                    writes = after;
                    continue;
                }
                let Some(seen) = seen else {
                    let reason = "this node has not yet heard what every member holds".into();
                    return Err(in_doubt(seqs, reason));
                };
                let applied = self
                    .replica()
                    .position()
                    .map_err(|e| in_doubt(seqs, e.to_string()))?
                    .applied;
                if seen.iter().any(|(id, n)| its(&id) && n > applied.get(id)) {
                    let reason = if myself {
                        "this node was restored from a backup, and writes of its former \
                         self that members have are not here yet"
                    } else {
                        "it left the cluster, and members have writes of it that have \
                         not arrived here yet"
                    };
                    return Err(in_doubt(seqs, reason.to_owned()));
                }
            }
            writes = after;
        }
        Ok((answered, writes))
    }

    /// What the node named `taker` took of `device` in `collection`, as far as this
    /// node knows (records replicate like documents).
    pub fn device_taken(
        &self,
        device: DeviceId,
        taker: &str,
        collection: &str,
    ) -> Result<Taken, ReadError> {
        let key = record_key(device, taker, collection);
        let state = self.snapshot()?.key_state(DEVICES_COLLECTION, &key)?;
        Ok(Taken::of(&state))
    }

    /// Deletes this node's records of devices that acknowledged every answer and
    /// uploaded nothing since `before_ms` (see the module's "Expiry"); answers how
    /// many it deleted. Blocking (from async code, call it in `spawn_blocking`).
    pub fn expire_device_records(&self, before_ms: u64) -> Result<usize, ExpireError> {
        let keys = self.expired_device_records(before_ms)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let count = keys.len();
        let (reply, answer) = oneshot::channel();
        let request = Request {
            job: Job::ExpireDeviceRecords { keys, before_ms },
            reply: ReplyTo::Done(reply),
        };
        self.submit_blocking(request, answer)?;
        Ok(count)
    }

    /// The keys of this node's records that can go (the committer checks each again).
    fn expired_device_records(&self, before_ms: u64) -> Result<Vec<String>, ReadError> {
        let me = self.name();
        let mut keys = Vec::new();
        for entry in self
            .snapshot()?
            .keys_from(DEVICES_COLLECTION, std::ops::Bound::Unbounded)?
        {
            let (key, state) = entry?;
            if key.split('/').nth(1) == Some(me) && Taken::expired(&state, before_ms) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Devices some node holds a record of (one not expired), as this node knows them.
    pub fn devices_seen(&self) -> Result<usize, ReadError> {
        let snapshot = self.snapshot()?;
        let mut devices = std::collections::BTreeSet::new();
        for entry in snapshot.keys_from(DEVICES_COLLECTION, std::ops::Bound::Unbounded)? {
            let (key, state) = entry?;
            if !state.is_absent() {
                devices.insert(key.split('/').next().unwrap_or_default().to_owned());
            }
        }
        Ok(devices.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_32_hex_digits() {
        let id = DeviceId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(DeviceId::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "0123",
            "0123456789abcdef001122334455667g",
            "+123456789abcdef0011223344556677",
        ] {
            assert_eq!(DeviceId::parse(bad), None, "{bad:?}");
        }
        assert_ne!(DeviceId::random().unwrap(), DeviceId::random().unwrap());
    }
}
