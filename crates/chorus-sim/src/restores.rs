//! Backups and restores of nodes, in the device workload ([`Sim::with_devices`]).
//!
//! A backup is a node's disk as it stands durably (redb is crash-consistent, as a
//! `chorus backup` copy is consistent). A restore stops the node and brings it back
//! from its backup as a new replica, as `chorus restore` does
//! (`Store::restore_backend_as_new_replica`: same name and data, a new node id and
//! feed). What its old id wrote after the backup and no other replica received is
//! gone: those writes leave the acknowledged writes the checks verify, and device
//! writes among them must come back from their devices, which keep every write a
//! node took until every member has it ([`crate::devices`]).

use crate::Sim;
use chorus_core::PhysicalClock;
use chorus_node::{NodeId, StateCursor};
use chorus_store::Store;

impl Sim {
    /// Whether a member other than `except` holds a version, or knows of a removal,
    /// of node `id`'s that it has not applied: merged from a state transfer whose
    /// entries have not followed yet. Restoring `id`'s node now would leave that
    /// history on that member alone, which nothing today sends on (no anti-entropy
    /// between caught-up replicas): the replicas would not converge.
    fn holds_unapplied_of(&self, id: NodeId, except: usize) -> bool {
        let buckets: Vec<u8> = (0..=u8::MAX).collect();
        for j in self.members().into_iter().filter(|&j| j != except) {
            let replica = self.node(j).replica();
            let applied = replica.position().expect("reads work").applied.get(id);
            let mut after = StateCursor::KeysFromStart;
            loop {
                let chunk = replica
                    .read_state(after, 1000, usize::MAX, &buckets)
                    .expect("reads work");
                let beyond = chunk.keys.iter().any(|(_, _, state)| {
                    state.context().get(id) > applied
                        || state
                            .versions()
                            .iter()
                            .any(|v| v.dot.node == id && v.dot.counter > applied)
                });
                if beyond {
                    return true;
                }
                match chunk.next {
                    Some(next @ StateCursor::KeysAfter(..)) => after = next,
                    _ => break,
                }
            }
        }
        false
    }

    /// Takes a backup of a running member.
    pub(crate) fn take_backup(&mut self) {
        let up: Vec<usize> = self
            .members()
            .into_iter()
            .filter(|&i| self.nodes[i].running.is_some())
            .collect();
        if up.is_empty() {
            return;
        }
        let i = *self.device_rng.pick(&up);
        self.nodes[i].backup = Some(self.nodes[i].disk.after_crash());
        self.fault("backup taken");
    }

    /// Restores a member from its backup as a new replica. Only while every member
    /// runs (what each holds can be read, to tell which writes the restore lost) and
    /// without the CRDT workload (whose totals count every acknowledged operation).
    pub(crate) fn restore_from_backup(&mut self) -> Result<(), String> {
        let members = self.members();
        if self.crdt_totals.is_some() || members.iter().any(|&j| self.nodes[j].running.is_none()) {
            return Ok(());
        }
        let candidates: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].backup.is_some())
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let i = *self.device_rng.pick(&candidates);
        let (name, old) = (self.nodes[i].name.clone(), self.nodes[i].id);
        if self.holds_unapplied_of(old, i) {
            // The known limit (`docs/design/devices.md`, "Restores"): not now.
            return Ok(());
        }
        self.crash(i);
        let disk = self.nodes[i]
            .backup
            .as_ref()
            .expect("a candidate")
            .after_crash();
        let id = NodeId(self.device_rng.next_u64() | 1 << 63);
        let feed = self.device_rng.next_u64();
        let now_ms = self.nodes[i].clock.now_ms();
        Store::restore_backend_as_new_replica(disk.clone(), &name, id.0, feed, now_ms)
            .map_err(|e| format!("restoring {name} from its backup: {e}"))?;
        self.nodes[i].disk = disk;
        self.nodes[i].id = id;
        self.start(i);
        for j in &members {
            if let Some(r) = self.nodes[*j].running.as_ref() {
                r.node.replica().learn_name(id, &name);
            }
        }
        // The old id's writes no replica holds now are gone with the old disk.
        let held = members
            .iter()
            .map(|&j| {
                let position = self.node(j).replica().position().expect("reads work");
                position.applied.get(old)
            })
            .max()
            .unwrap_or(0);
        let gone = |dot: chorus_core::Dot| dot.node == old && dot.counter > held;
        let lost: Vec<chorus_core::Dot> = self
            .acked
            .iter()
            .filter(|a| gone(a.dot))
            .map(|a| a.dot)
            .collect();
        self.acked.retain(|a| !gone(a.dot));
        self.report.writes_lost_to_restores += lost.len() as u64;
        if let Some(devices) = self.devices.as_mut() {
            devices.lost_to_restore(&lost);
        }
        // Clients read again: contexts the old replica gave name writes now gone.
        self.contexts.retain(|(n, _), _| *n != i);
        self.fault("node restored from a backup");
        Ok(())
    }
}
