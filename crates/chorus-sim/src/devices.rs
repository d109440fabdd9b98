//! Devices in the simulation ([`Sim::with_devices`]): replicas outside the cluster
//! that write offline and upload to whichever node they reach, as `chorus-device`
//! does, through the node's own upload path (`Node::settle_doubt`, `Node::upload`).
//!
//! A device keeps, per key of collection `d`, one pending write (its value, its
//! device `seq`, the context of the read it replaced) and the nodes it is in doubt
//! at. An upload's answer is lost now and then (the device or the link dies after
//! the node committed): the writes stay pending, in doubt at that node. Every write a
//! device learns was taken, with its dot, joins the acknowledged writes that
//! [`crate::checks`] verifies; and no device write may be taken twice: a second dot
//! for one `(device, seq)`, or two live versions with one device write's value, fail
//! the run.

use crate::{Acked, Sim};
use chorus_core::{Dot, PhysicalClock, VersionVector};
use chorus_node::devices::{Change, DeviceId, DeviceWrite, Upload, UploadOutcome};
use chorus_node::{Context, WriteError};
use std::collections::{BTreeMap, BTreeSet};

/// The collection devices write.
pub const DEVICE_COLLECTION: &str = "d";
const DEVICE_KEYS: [&str; 4] = ["d0", "d1", "d2", "d3"];

pub struct SimDevice {
    id: DeviceId,
    next_seq: u64,
    pending: BTreeMap<String, Pending>,
    /// The context of the last read of each key the device made.
    read: BTreeMap<String, Context>,
    /// Per node, the greatest seq it answered (the device acknowledges it).
    answered: BTreeMap<String, u64>,
    /// Writes a node took, kept until every member has them (as `chorus-device`
    /// does), to go up again if that node is restored without them.
    taken: Vec<TakenWrite>,
}

struct TakenWrite {
    key: String,
    seq: u64,
    value: Vec<u8>,
    context: Option<Context>,
    /// The node that took it: its name, and its id then (a restored node has a new
    /// one, as it has a new feed).
    node: String,
    node_id: chorus_node::NodeId,
    dot: Dot,
}

struct Pending {
    seq: u64,
    value: Vec<u8>,
    context: Option<Context>,
    in_doubt_at: BTreeSet<String>,
}

/// What the devices did, and what must hold of it.
#[derive(Default)]
pub struct Devices {
    pub devices: Vec<SimDevice>,
    /// The dot each device write was taken with.
    pub taken: BTreeMap<(u128, u64), Dot>,
    /// Uploads whose answer was lost.
    pub answers_lost: u64,
    /// Uploads refused while in doubt elsewhere.
    pub in_doubt_refusals: u64,
    /// Device writes known taken whose dot the device never learned (the taker's
    /// record had moved on to a later upload): what they superseded, per key.
    pub superseding_without_dot: Vec<(String, VersionVector)>,
    /// Values of writes taken again after the node they were in doubt at left.
    pub may_show_twice: BTreeSet<Vec<u8>>,
    /// Device writes `(device, seq)` a restore lost, and those their device queued
    /// again (or replaced by a later write of its own).
    pub lost: BTreeSet<(u128, u64)>,
    pub requeued: BTreeSet<(u128, u64)>,
}

impl Devices {
    /// Notes the device writes among `dots` (writes a restore lost).
    pub(crate) fn lost_to_restore(&mut self, dots: &[Dot]) {
        for (write, dot) in &self.taken {
            if dots.contains(dot) {
                self.lost.insert(*write);
            }
        }
    }
}

impl Sim {
    /// Adds devices to the workload: three replicas outside the cluster writing
    /// collection `d` and uploading to any node they reach, answers lost now and
    /// then. Off by default so the other workloads' seeds replay as they did.
    pub fn with_devices(mut self) -> Sim {
        let devices = (0..3u128)
            .map(|i| SimDevice {
                id: DeviceId(0xde71ce << 64 | i),
                next_seq: 1,
                pending: BTreeMap::new(),
                read: BTreeMap::new(),
                answered: BTreeMap::new(),
                taken: Vec::new(),
            })
            .collect();
        self.devices = Some(Devices {
            devices,
            ..Devices::default()
        });
        self
    }

    /// One device step: a local write, or a sync with a node it can reach.
    pub(crate) fn device_op(&mut self) -> Result<(), String> {
        let Some(count) = self.devices.as_ref().map(|d| d.devices.len()) else {
            return Ok(());
        };
        let d = self.device_rng.below(count as u64) as usize;
        if self.device_rng.chance(60) {
            self.device_write(d);
            return Ok(());
        }
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_some() && !self.frozen.contains(&i))
            .collect();
        if up.is_empty() {
            return Ok(());
        }
        if self.device_rng.chance(3) {
            self.take_backup();
            return Ok(());
        }
        if self.device_rng.chance(2) {
            return self.restore_from_backup();
        }
        let i = up[self.device_rng.below(up.len() as u64) as usize];
        if self.device_rng.chance(10) {
            // Every record whose answers were acknowledged goes: the shortest
            // retention there is.
            let now_ms = self.nodes[i].clock.now_ms();
            let node = self.node(i).clone();
            if let Ok(expired) = node.expire_device_records(now_ms + 1) {
                self.report.device_records_expired += expired as u64;
                let event = self.committed(i);
                self.handle(i, event);
            }
            return Ok(());
        }
        let lose_answer = self.device_rng.chance(15);
        self.device_sync(d, i, lose_answer)
    }

    fn device_write(&mut self, d: usize) {
        let key = DEVICE_KEYS[self.device_rng.below(DEVICE_KEYS.len() as u64) as usize];
        let devices = self.devices.as_mut().expect("devices are on");
        let device = &mut devices.devices[d];
        if device
            .pending
            .get(key)
            .is_some_and(|p| !p.in_doubt_at.is_empty())
        {
            return; // A value a node may hold is never changed under it.
        }
        let seq = device.next_seq;
        device.next_seq += 1;
        let value = format!("{{\"device\":{d},\"seq\":{seq}}}").into_bytes();
        let context = device.read.get(key).cloned();
        device.pending.insert(
            key.to_owned(),
            Pending {
                seq,
                value,
                context,
                in_doubt_at: BTreeSet::new(),
            },
        );
    }

    /// Uploads device `d`'s pending writes to node `i`, then reads what it wrote.
    pub(crate) fn device_sync(
        &mut self,
        d: usize,
        i: usize,
        lose_answer: bool,
    ) -> Result<(), String> {
        let name = self.nodes[i].name.clone();
        let members: BTreeSet<String> = self.cluster.members.iter().cloned().collect();
        self.check_taken(d, i);
        let devices = self.devices.as_mut().expect("devices are on");
        let device = &mut devices.devices[d];
        let mut sent: Vec<(String, DeviceWrite)> = device
            .pending
            .iter()
            .map(|(key, p)| {
                let write = DeviceWrite {
                    seq: p.seq,
                    key: key.clone(),
                    change: Change::Document(Some(p.value.clone())),
                    context: p.context.clone(),
                };
                (key.clone(), write)
            })
            .collect();
        sent.sort_by_key(|(_, w)| w.seq);
        let in_doubt_at: Vec<String> = device
            .pending
            .values()
            .flat_map(|p| p.in_doubt_at.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let id = device.id;
        let acked = device.answered.get(&name).copied().unwrap_or(0);
        let node = self.nodes[i]
            .running
            .as_ref()
            .expect("running")
            .node
            .clone();
        let writes: Vec<DeviceWrite> = sent.iter().map(|(_, w)| w.clone()).collect();
        let is_member = |n: &str| members.contains(n);
        let stability = self.running(i).engine.stability();
        let seen = stability.heard_from_all.then_some(stability.seen);
        let (mut outcomes, to_take) = match node.settle_doubt(
            id,
            DEVICE_COLLECTION,
            writes,
            &in_doubt_at,
            &is_member,
            seen.as_ref(),
        ) {
            Ok(settled) => settled,
            Err(_) => {
                self.devices.as_mut().expect("on").in_doubt_refusals += 1;
                return Ok(());
            }
        };
        if to_take.is_empty() && acked > 0 {
            // Nothing to take: the acknowledgement alone.
            let upload = Upload {
                device: id,
                collection: DEVICE_COLLECTION.into(),
                writes: Vec::new(),
                acked,
            };
            if node.upload_blocking(upload).is_ok() {
                let event = self.committed(i);
                self.handle(i, event);
            }
        }
        // The design's residual case: a node that took a write and left, its record
        // still on its way here, makes it show twice (a visible sibling, not a loss).
        let devices = self.devices.as_mut().expect("on");
        for w in &to_take {
            let pending = devices.devices[d].pending.get(&w.key);
            if pending.is_some_and(|p| p.in_doubt_at.iter().any(|n| !members.contains(n))) {
                devices.may_show_twice.extend(written(w));
            }
        }
        if !to_take.is_empty() {
            // Sent: in doubt at this node until an answer arrives.
            let device = &mut self.devices.as_mut().expect("on").devices[d];
            for (key, w) in &sent {
                if let Some(p) = device.pending.get_mut(key).filter(|p| p.seq == w.seq) {
                    p.in_doubt_at.insert(name.clone());
                }
            }
            let upload = Upload {
                device: id,
                collection: DEVICE_COLLECTION.into(),
                writes: to_take,
                acked,
            };
            match node.upload_blocking(upload) {
                Ok(taken) => outcomes.extend(taken),
                Err(WriteError::StoreFailed | WriteError::DiskFull) => return Ok(()),
                Err(e) => return Err(format!("a device upload failed: {e}")),
            }
            let event = self.committed(i);
            self.handle(i, event);
            if lose_answer {
                self.devices.as_mut().expect("on").answers_lost += 1;
                return Ok(());
            }
        }
        if let Some(last) = outcomes.iter().map(UploadOutcome::seq).max() {
            let device = &mut self.devices.as_mut().expect("on").devices[d];
            let answered = device.answered.entry(name.clone()).or_default();
            *answered = last.max(*answered);
        }
        for outcome in outcomes {
            self.device_outcome(d, i, &sent, outcome)?;
        }
        // Read back what it holds, for the contexts of its next writes.
        let device = &mut self.devices.as_mut().expect("on").devices[d];
        for key in DEVICE_KEYS {
            let read = node
                .get(DEVICE_COLLECTION, key)
                .map_err(|e| e.to_string())?;
            device.read.insert(key.to_owned(), read.context);
        }
        Ok(())
    }

    fn device_outcome(
        &mut self,
        d: usize,
        i: usize,
        sent: &[(String, DeviceWrite)],
        outcome: UploadOutcome,
    ) -> Result<(), String> {
        let seq = outcome.seq();
        let Some((key, write)) = sent.iter().find(|(_, w)| w.seq == seq) else {
            return Err(format!("an answer for write {seq}, which was not sent"));
        };
        let devices = self.devices.as_mut().expect("on");
        let id = devices.devices[d].id;
        let dot = match &outcome {
            UploadOutcome::Taken { ack, .. } => Some(ack.dot),
            UploadOutcome::TakenBefore { dot, .. } => *dot,
            UploadOutcome::Refused { error, .. } => {
                return Err(format!("device write {seq} refused: {error}"));
            }
        };
        if let (UploadOutcome::Taken { .. }, Some(first)) =
            (&outcome, devices.taken.get(&(id.0, seq)))
        {
            return Err(format!(
                "device {id} write {seq} taken twice: {first} and {}",
                dot.expect("taken has a dot")
            ));
        }
        devices.devices[d].pending.remove(key);
        let Some(dot) = dot else {
            let seen = write.context.as_ref().map(|c| c.vector().clone());
            devices
                .superseding_without_dot
                .push((key.clone(), seen.unwrap_or_default()));
            return Ok(());
        };
        // Its time, when known; else the latest possible, so that the check never
        // counts it among writes whose conflict records were pruned.
        let hlc = match &outcome {
            UploadOutcome::Taken { ack, .. } => ack.hlc,
            _ => chorus_core::Hlc(u64::MAX),
        };
        if let Some(value) = written(write) {
            devices.devices[d].taken.push(TakenWrite {
                key: key.clone(),
                seq,
                value,
                context: write.context.clone(),
                node: self.nodes[i].name.clone(),
                node_id: self.nodes[i].id,
                dot,
            });
        }
        if devices.taken.insert((id.0, seq), dot).is_none() {
            self.acked.push(Acked {
                node: self.nodes[i].name.clone(),
                dot,
                collection: DEVICE_COLLECTION.into(),
                key: key.clone(),
                value: written(write),
                superseded: write
                    .context
                    .as_ref()
                    .map(|c| c.vector().clone())
                    .unwrap_or_default(),
                hlc,
            });
        }
        Ok(())
    }

    /// As `chorus-device` does at each sync with node `i`: forgets the taken writes
    /// every member has (`stable`), and queues again those their node lost (`i` took
    /// them and has a new id: restored; or their node left), when no member has them
    /// (`seen`) and the members agree on their origin (`stable` equals `seen`
    /// there), unless the device wrote the key since.
    fn check_taken(&mut self, d: usize, i: usize) {
        let stability = self.running(i).engine.stability();
        let members = self.cluster.members.clone();
        let (name, id) = (self.nodes[i].name.clone(), self.nodes[i].id);
        let devices = self.devices.as_mut().expect("on");
        let device = &mut devices.devices[d];
        let mut kept = Vec::new();
        for t in std::mem::take(&mut device.taken) {
            let origin = t.dot.node;
            let taker_lost = (t.node == name && t.node_id != id) || !members.contains(&t.node);
            let lost_here = taker_lost
                && stability.heard_from_all
                && !stability.seen.covers(t.dot)
                && stability.stable.get(origin) == stability.seen.get(origin);
            if stability.stable.covers(t.dot) {
                continue;
            }
            if !lost_here {
                kept.push(t);
                continue;
            }
            devices.requeued.insert((device.id.0, t.seq));
            if device.pending.contains_key(&t.key) {
                continue; // Written since: that write replaces it.
            }
            let seq = device.next_seq;
            device.next_seq += 1;
            device.pending.insert(
                t.key,
                Pending {
                    seq,
                    value: t.value,
                    context: t.context,
                    in_doubt_at: BTreeSet::new(),
                },
            );
        }
        device.taken = kept;
    }

    /// Once the cluster healed: every device syncs until nothing is pending (what is
    /// in doubt settles once the nodes' records have replicated) and it keeps no
    /// taken write (each is on every member, or went up again).
    pub(crate) fn flush_devices(&mut self) -> Result<(), String> {
        let Some(count) = self.devices.as_ref().map(|d| d.devices.len()) else {
            return Ok(());
        };
        let members = self.members();
        for _round in 0..60 {
            for d in 0..count {
                for &i in &members {
                    self.device_sync(d, i, false)?;
                }
            }
            let pending = self
                .devices
                .as_ref()
                .expect("on")
                .devices
                .iter()
                .any(|d| !d.pending.is_empty() || !d.taken.is_empty());
            if !pending {
                return Ok(());
            }
            self.advance(1_000);
        }
        Err("device writes still pending, or not on every member, after the cluster healed".into())
    }
}

/// Every device write a restore lost went up again (or its device wrote the key
/// since): nothing a device was told was taken is lost.
pub(crate) fn check_lost_requeued(sim: &Sim) -> Result<(), String> {
    let Some(devices) = &sim.devices else {
        return Ok(());
    };
    match devices.lost.difference(&devices.requeued).next() {
        Some((device, seq)) => Err(format!(
            "device {device:032x} write {seq} was lost by a restore and never went up again"
        )),
        None => Ok(()),
    }
}

/// The document a device write puts (devices here write whole documents).
fn written(write: &DeviceWrite) -> Option<Vec<u8>> {
    match &write.change {
        Change::Document(value) => value.clone(),
        Change::Operations(_) => None,
    }
}

/// No device write shows twice: two live versions of a document with one device
/// write's value would be one write taken twice (unless it was in doubt at a node
/// that left, `Devices::may_show_twice`).
pub(crate) fn check_no_duplicate(sim: &Sim) -> Result<(), String> {
    let Some(devices) = &sim.devices else {
        return Ok(());
    };
    let node = sim.replicas()[0];
    for key in DEVICE_KEYS {
        let doc = node
            .get(DEVICE_COLLECTION, key)
            .map_err(|e| e.to_string())?;
        let values: Vec<&Option<Vec<u8>>> = doc
            .versions
            .iter()
            .map(|v| &v.value)
            .filter(|v| {
                v.as_ref()
                    .is_none_or(|v| !devices.may_show_twice.contains(v))
            })
            .collect();
        let distinct: BTreeSet<&Option<Vec<u8>>> = values.iter().copied().collect();
        if distinct.len() != values.len() {
            return Err(format!(
                "a device write shows twice in {DEVICE_COLLECTION}/{key}"
            ));
        }
    }
    Ok(())
}
