//! The properties every simulated run must end with.

use crate::Sim;
use chorus_core::crdt::{Field, Kind};
use chorus_node::{ConflictRecord, Node};

fn digest(node: &Node) -> [u8; 32] {
    node.digest().expect("reads work")
}

pub fn digests_agree(sim: &Sim) -> bool {
    let replicas = sim.replicas();
    let first = digest(replicas[0]);
    replicas[1..].iter().all(|node| digest(node) == first)
}

fn conflict_log(node: &Node) -> Vec<ConflictRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = node
            .conflicts(after, 1000, &Default::default())
            .expect("reads work");
        all.extend(page.conflicts);
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

/// Checks a converged run: equal digests and conflict logs, causal apply order on
/// every node, and every acknowledged write accounted for.
pub fn check(sim: &Sim) -> Result<(), String> {
    if !digests_agree(sim) {
        return Err("replicas did not converge to equal digests".into());
    }
    let replicas = sim.replicas();
    let reference = conflict_log(replicas[0]);
    for node in &replicas[1..] {
        if conflict_log(node) != reference {
            return Err(format!(
                "the conflict log of {} differs from {}'s",
                node.name(),
                replicas[0].name()
            ));
        }
    }
    for node in &replicas {
        check_causal_order(node)?;
    }
    check_no_write_lost(sim, &reference)?;
    check_crdt_totals(sim)?;
    check_nothing_revived(sim)
}

/// Every replica's counters hold exactly the sums of the acknowledged operations,
/// no bounded counter anywhere has spent more than was added, and every text holds
/// the acknowledged words not deleted, whole and once.
fn check_crdt_totals(sim: &Sim) -> Result<(), String> {
    let Some(totals) = &sim.crdt_totals else {
        return Ok(());
    };
    for node in sim.replicas() {
        let i = node.name();
        for (key, expected) in totals {
            let doc = node.crdt_document("c", key).expect("reads work");
            let field = |name: &str, kind| doc.as_ref().and_then(|d| d.get(&[name.into()], kind));
            let counter = match field("n", Kind::Counter) {
                Some(Field::Counter(counter)) => Field::counter_value(counter),
                _ => 0,
            };
            let (added, spent) = match field("stock", Kind::Bounded) {
                Some(Field::Bounded(b)) => (
                    b.entries().values().map(|r| r.added).sum::<u64>() as i64,
                    b.entries().values().map(|r| r.spent).sum::<u64>() as i64,
                ),
                _ => (0, 0),
            };
            if counter != i128::from(expected.counter) {
                return Err(format!(
                    "node {i}: counter c/{key}/n is {counter}, acknowledged increments sum to {}",
                    expected.counter
                ));
            }
            let text = match field("t", Kind::Text) {
                Some(Field::Text(t)) if t.is_shown() => t.items().content(),
                _ => String::new(),
            };
            let words: Vec<&str> = text.split_whitespace().collect();
            let shown: std::collections::BTreeSet<String> =
                words.iter().map(|w| w.to_string()).collect();
            if shown != expected.words || shown.len() != words.len() {
                return Err(format!(
                    "node {i}: text c/{key}/t is {text:?}; the acknowledged words less those \
                     deleted are {:?}, each once",
                    expected.words
                ));
            }
            if added - spent != expected.bounded || added < spent {
                return Err(format!(
                    "node {i}: bounded counter c/{key}/stock added {added} and spent {spent}; \
                     acknowledged operations sum to {}",
                    expected.bounded
                ));
            }
        }
    }
    Ok(())
}

/// No version that a later write superseded is live again (after tombstone
/// collection, state transfers, collected op logs and crashes).
fn check_nothing_revived(sim: &Sim) -> Result<(), String> {
    let node = sim.replicas()[0];
    for acked in &sim.acked {
        let doc = node.get(&acked.collection, &acked.key).expect("reads work");
        let revived = doc.versions.iter().find(|v| {
            sim.acked.iter().any(|w| {
                w.collection == acked.collection
                    && w.key == acked.key
                    && w.dot != v.dot
                    && w.superseded.covers(v.dot)
            })
        });
        if let Some(version) = revived {
            return Err(format!(
                "{}/{}: superseded version {} is live again",
                acked.collection, acked.key, version.dot
            ));
        }
    }
    Ok(())
}

/// No node applied an entry before the entries it depends on: replaying its op log
/// in order, every entry is ready when it comes. What the log no longer holds
/// (collected entries, adopted transfers: the floor) counts as applied from the
/// start, and entries it covers are not checked.
fn check_causal_order(node: &Node) -> Result<(), String> {
    let mut applied = node.replica().position().expect("reads work").floor;
    for (seq, entry) in node
        .replica()
        .read_log(0, usize::MAX, usize::MAX)
        .expect("reads work")
    {
        if applied.covers(entry.dot()) {
            continue;
        }
        if !entry.is_ready(&applied) {
            return Err(format!(
                "{} applied {} (seq {seq}) before its dependencies",
                node.name(),
                entry.dot()
            ));
        }
        applied.add(entry.dot());
    }
    Ok(())
}

/// Every acknowledged write is live, or superseded by a write whose context saw it,
/// or kept in the conflict log (a delete may also give way to another delete), or
/// older than the conflict log's retention watermark (its record may be pruned).
fn check_no_write_lost(sim: &Sim, conflicts: &[ConflictRecord]) -> Result<(), String> {
    let node = sim.replicas()[0];
    let pruned_before_ms = node.conflicts_pruned_before_ms().expect("reads work");
    for acked in &sim.acked {
        let doc = node.get(&acked.collection, &acked.key).expect("reads work");
        if let Some(version) = doc.versions.iter().find(|v| v.dot == acked.dot) {
            if version.value != acked.value {
                return Err(format!(
                    "write {} by {} changed its value",
                    acked.dot, acked.node
                ));
            }
            continue;
        }
        let same_key =
            |other: &&crate::Acked| other.collection == acked.collection && other.key == acked.key;
        let superseded = sim
            .acked
            .iter()
            .filter(same_key)
            .any(|w| w.dot != acked.dot && w.superseded.covers(acked.dot))
            || sim.devices.as_ref().is_some_and(|d| {
                d.superseding_without_dot.iter().any(|(key, seen)| {
                    acked.collection == crate::devices::DEVICE_COLLECTION
                        && *key == acked.key
                        && seen.covers(acked.dot)
                })
            });
        let logged = conflicts.iter().any(|c| {
            c.versions
                .iter()
                .any(|v| v.dot == acked.dot && v.value == acked.value)
        });
        // A delete may be collected once every member has it, or give way to another
        // delete; its effect (what it superseded stays gone) is checked by
        // `check_nothing_revived`.
        let delete = acked.value.is_none();
        let pruned = acked.hlc.wall_ms() < pruned_before_ms;
        if !(superseded || logged || delete || pruned) {
            return Err(format!(
                "acknowledged write {} by {} to {}/{} is lost: not live, not superseded, not in the conflict log",
                acked.dot, acked.node, acked.collection, acked.key
            ));
        }
    }
    Ok(())
}

/// Names the first document or log that differs between the first member and another.
pub fn describe_divergence(sim: &Sim) -> String {
    let replicas = sim.replicas();
    let reference = replicas[0];
    for other in &replicas[1..] {
        for collection in [
            "s",
            "l",
            "h",
            "d",
            chorus_node::devices::DEVICES_COLLECTION,
            "_collections",
        ] {
            // The workload's keys (deleted ones too), and any other either holds.
            let listed = |node: &Node| node.list(collection, "", None, 10_000).expect("reads work");
            let mut keys: Vec<String> = crate::KEYS.iter().map(|k| k.to_string()).collect();
            keys.extend(listed(reference).keys);
            keys.extend(listed(other).keys);
            keys.sort();
            keys.dedup();
            for key in keys {
                let (a, b) = (reference.get(collection, &key), other.get(collection, &key));
                let (a, b) = (a.expect("reads work"), b.expect("reads work"));
                if a.versions != b.versions {
                    return format!(
                        "{collection}/{key} differs: {} has {:?}, {} has {:?} (policies {:?} / {:?})",
                        reference.name(),
                        a.versions,
                        other.name(),
                        b.versions,
                        a.policy,
                        b.policy
                    );
                }
            }
        }
        let (a, b) = (conflict_log(reference), conflict_log(other));
        if a != b {
            return format!(
                "conflict logs differ: {} records against {}",
                a.len(),
                b.len()
            );
        }
    }
    "no difference found in documents or conflict logs".into()
}
