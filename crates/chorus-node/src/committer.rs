//! The committer: the node's only writer, and its group commit.
//!
//! It takes every request waiting in the queue (up to `BATCH_WRITES_MAX`), applies
//! them in order in one redb transaction, commits once (one fsync for the whole
//! batch), then answers each. Concurrent writers and replication streams therefore
//! share fsyncs, and nobody is answered before their write is durable.
//!
//! Requests are local writes (which get a new dot), batches of entries received from
//! peers (applied in causal order: an entry waits until [`Entry::is_ready`]), and
//! peer cursors to persist.
//!
//! The committer owns the node's counters (version vector, HLC, op-log sequence).
//! They advance in memory while a batch is applied and are rolled back if its commit
//! fails.

use crate::collections::{CollectionConfig, SETTINGS_COLLECTION};

/// The conflict log's retention watermark lives in this reserved document:
/// `{"before_wall_ms": N}`. Records whose newest version's HLC is older than N are
/// pruned, and not stored again if they arrive later. Each node moves it forward
/// by its own clock (`ReplicationStep::PruneConflicts`), but it replicates like any
/// document, so every node prunes by the same value and the logs stay identical
/// however skewed the clocks (pruning each log by its own node's clock made them
/// differ). The node whose clock runs furthest ahead prunes for all.
pub const RETENTION_COLLECTION: &str = "_cluster";

/// A document changed, committed: by an op (written here or applied from a peer, in
/// causal order), or by a state transfer (`op` is `None`: read the document again).
/// `context` is the document's context after it.
#[derive(Clone, Debug)]
pub struct DocumentChange {
    pub collection: String,
    pub key: String,
    pub op: Option<Op>,
    pub context: VersionVector,
}
pub const RETENTION_KEY: &str = "conflict_retention";

/// The watermark the versions of its document hold: the greatest `before_wall_ms`
/// (concurrent moves are siblings; the greatest counts), 0 before any.
pub(crate) fn retention_watermark(state: &KeyState) -> u64 {
    state
        .plain_versions()
        .iter()
        .filter_map(|v| {
            let doc: serde_json::Value = serde_json::from_slice(v.value.as_deref()?).ok()?;
            doc.get("before_wall_ms")?.as_u64()
        })
        .max()
        .unwrap_or(0)
}

fn is_retention_key(collection: &str, key: &str) -> bool {
    collection == RETENTION_COLLECTION && key == RETENTION_KEY
}

use crate::devices::{self, Change, DEVICES_COLLECTION, Taken, Upload, UploadOutcome};
use crate::document::Context;
use crate::limits::{
    BATCH_WRITES_MAX, DOCUMENT_BYTES_MAX, DOCUMENTS_CACHED_MAX, KEY_VERSIONS_WARN,
};
use crate::merge;
use crate::node::{check_update, check_write};
use crate::request::{
    ConflictCounts, Job, RemoteOutcome, ReplicationStep, ReplyTo, Request, StoreFailure,
    StoreHealth, Write, WriteAck, WriteError,
};
use chorus_core::crdt::{self, Operation};
use chorus_core::key_state::value_bytes;
use chorus_core::{
    ConflictRecord, Dot, Entry, EntryBody, Hlc, HlcClock, KeyState, NodeId, Op, Outcome,
    PhysicalClock, Policy, Version, VersionVector,
};
use chorus_store::{Batch, NodeMeta, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, watch};

/// What a job produced inside a batch; sent only once the batch is durable.
enum Produced {
    Local(Result<WriteAck, WriteError>),
    Remote(RemoteOutcome),
    Upload(Vec<UploadOutcome>),
    Done,
}

pub(crate) struct Committer {
    pub store: Arc<Store>,
    pub node_id: NodeId,
    pub meta: NodeMeta,
    /// Every entry applied, per origin; persisted as `meta.applied` with each batch.
    pub applied: VersionVector,
    /// Applied without entries in the log; persisted as `meta.floor`.
    pub floor: VersionVector,
    pub clock: HlcClock,
    pub physical: Arc<dyn PhysicalClock>,
    /// See `NodeConfig::key_state_bytes_max`.
    pub key_state_bytes_max: usize,
    /// Settings of collections, read from `_collections` on first use.
    pub configs: HashMap<String, CollectionConfig>,
    /// The conflict log's retention watermark, read from its document on first use
    /// (see [`RETENTION_COLLECTION`]).
    pub pruned_before_ms: Option<u64>,
    pub committed_seq: watch::Sender<u64>,
    /// The change feed's last sequence, published after each commit.
    pub feed_seq: watch::Sender<u64>,
    /// Every change to a document, published after its commit (when anyone listens).
    pub changes: broadcast::Sender<Arc<DocumentChange>>,
    /// The changes of the batch being applied, published once it commits.
    pub announced: Vec<DocumentChange>,
    /// Key states of CRDT documents holding texts or lists, as this committer last
    /// wrote them: an operation changes one in place and writes the pages it
    /// changed, instead of reading and decoding the whole document (`take_state`,
    /// `put_state`). Invariant: an entry is its key's state as last written here;
    /// the cache is emptied when a batch fails and when a step rewrites states
    /// behind it.
    pub cached: HashMap<(String, String), KeyState>,
    pub failed: Arc<StoreHealth>,
    /// Conflicts recorded since the node started, per collection and policy.
    pub conflict_counts: Arc<ConflictCounts>,
}

/// Counts a conflict record this node just added to its log (detected here, or
/// received), in `/metrics` and in the node's status.
fn count_conflict(counts: &ConflictCounts, record: &ConflictRecord) {
    let policy = record.policy.name();
    metrics::counter!("chorus_conflicts_total", "collection" => record.collection.clone(), "policy" => policy)
        .increment(1);
    *counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((record.collection.clone(), policy))
        .or_default() += 1;
}

impl Committer {
    pub fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        while let Some(first) = queue.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH_WRITES_MAX {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let (jobs, replies): (Vec<Job>, Vec<ReplyTo>) =
            batch.into_iter().map(|r| (r.job, r.reply)).unzip();
        if let Some(failure) = self.failed.failure() {
            replies.into_iter().for_each(|reply| refuse(reply, failure));
            return;
        }
        let before = (
            self.meta.clone(),
            self.applied.clone(),
            self.floor.clone(),
            self.clock.clone(),
        );
        let started = Instant::now();
        let store = Arc::clone(&self.store);
        let result = store.write(|b| {
            let produced = jobs
                .into_iter()
                .map(|job| self.apply_job(b, job))
                .collect::<Result<Vec<_>, _>>()?;
            self.meta.applied = self.applied.iter().map(|(n, c)| (n.0, c)).collect();
            self.meta.floor = self.floor.iter().map(|(n, c)| (n.0, c)).collect();
            b.set_meta(&self.meta)?;
            Ok((produced, b.feed().last_seq))
        });
        match result {
            Ok((produced, feed_last)) => {
                metrics::histogram!("chorus_commit_latency_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("chorus_commit_batch_writes").record(replies.len() as f64);
                metrics::counter!("chorus_fsyncs_total").increment(1);
                self.committed_seq.send_replace(self.meta.next_seq - 1);
                self.feed_seq.send_replace(feed_last);
                for change in self.announced.drain(..) {
                    let _ = self.changes.send(Arc::new(change));
                }
                for (reply, outcome) in replies.into_iter().zip(produced) {
                    match (reply, outcome) {
                        (ReplyTo::Local(reply), Produced::Local(result)) => {
                            if result.is_ok() {
                                metrics::counter!("chorus_writes_total").increment(1);
                            }
                            let _ = reply.send(result);
                        }
                        (ReplyTo::Remote(reply), Produced::Remote(outcome)) => {
                            let _ = reply.send(Ok(outcome));
                        }
                        (ReplyTo::Upload(reply), Produced::Upload(outcomes)) => {
                            let taken = outcomes
                                .iter()
                                .filter(|o| matches!(o, UploadOutcome::Taken { .. }))
                                .count();
                            metrics::counter!("chorus_writes_total").increment(taken as u64);
                            let _ = reply.send(Ok(outcomes));
                        }
                        (ReplyTo::Done(reply), Produced::Done) => {
                            let _ = reply.send(Ok(()));
                        }
                        _ => unreachable!("each job produces its own kind of answer"),
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "commit failed; refusing writes until the node is reopened");
                (self.meta, self.applied, self.floor, self.clock) = before;
                self.configs.clear();
                self.announced.clear();
                self.cached.clear();
                self.failed.fail(&error);
                let failure = self.failed.failure().expect("just failed");
                replies.into_iter().for_each(|reply| refuse(reply, failure));
            }
        }
    }

    /// Applies one job inside the batch. An error aborts the batch (a storage
    /// failure); a refused write is an `Ok` carrying its error.
    fn apply_job(&mut self, b: &mut Batch<'_>, job: Job) -> Result<Produced, StoreError> {
        Ok(match job {
            Job::Local {
                write,
                supersede_current,
            } => Produced::Local(self.apply_local(b, &write, supersede_current)?),
            Job::Update {
                collection,
                key,
                operations,
                read,
            } => Produced::Local(self.apply_update(b, collection, key, &operations, read)?),
            Job::Remote { entries } => Produced::Remote(self.apply_remote(b, entries)?),
            Job::Step(step) => {
                self.apply_step(b, step)?;
                Produced::Done
            }
            Job::Upload(upload) => Produced::Upload(self.apply_upload(b, upload)?),
            Job::ExpireDeviceRecords { keys, before_ms } => {
                self.expire_device_records(b, &keys, before_ms)?;
                Produced::Done
            }
        })
    }

    /// Takes a device's writes that this node's record of the device does not
    /// cover, then moves the record past them, all in this batch's commit.
    fn apply_upload(
        &mut self,
        b: &mut Batch<'_>,
        upload: Upload,
    ) -> Result<Vec<UploadOutcome>, StoreError> {
        let record = devices::record_key(upload.device, &self.meta.name, &upload.collection);
        let before = Taken::of(&b.key_state(DEVICES_COLLECTION, &record)?);
        let mut outcomes = Vec::with_capacity(upload.writes.len());
        let mut now = Taken {
            through: before.through,
            ..Taken::default()
        };
        let mut wrote = false;
        for w in upload.writes {
            let seq = w.seq;
            if let Some(taken) = before.outcome(seq) {
                outcomes.push(taken);
                continue;
            }
            now.through = seq;
            wrote = true;
            let taken = match w.change {
                Change::Document(value) => {
                    let write = Write {
                        collection: upload.collection.clone(),
                        key: Some(w.key),
                        value,
                        context: w.context,
                    };
                    match check_write(&write) {
                        Ok(()) => self.apply_local(b, &write, false)?,
                        Err(refused) => Err(refused),
                    }
                }
                Change::Operations(operations) => {
                    let collection = upload.collection.clone();
                    match check_update(&collection, &w.key, &operations) {
                        Ok(()) => {
                            self.apply_update(b, collection, w.key, &operations, w.context)?
                        }
                        Err(refused) => Err(refused),
                    }
                }
            };
            outcomes.push(match taken {
                Ok(ack) => {
                    now.dots.insert(seq, ack.dot);
                    UploadOutcome::Taken { seq, ack }
                }
                Err(error) => {
                    now.refused.insert(seq, error.to_string());
                    UploadOutcome::Refused { seq, error }
                }
            });
        }
        if !wrote {
            // Only answers of earlier uploads, or an acknowledgement alone: the record
            // keeps its answers (a record that does not exist is not started).
            now = before.clone();
        }
        now.acked = before.acked.max(upload.acked).min(now.through);
        if wrote || now.acked > before.acked {
            let write = Write {
                collection: DEVICES_COLLECTION.into(),
                key: Some(record),
                value: Some(now.to_json()),
                context: None,
            };
            // A small JSON document replacing this node's own record: only a corrupt
            // stored record can refuse it, and then the whole batch must not commit.
            if let Err(refused) = self.apply_local(b, &write, true)? {
                return Err(StoreError::Corrupted {
                    table: "keys",
                    reason: format!("the record of device {}: {refused}", upload.device),
                });
            }
        }
        Ok(outcomes)
    }

    /// Deletes the records `keys` of devices that can still go (see
    /// [`crate::devices`], "Expiry"): one an upload changed since they were picked
    /// stays.
    fn expire_device_records(
        &mut self,
        b: &mut Batch<'_>,
        keys: &[String],
        before_ms: u64,
    ) -> Result<(), StoreError> {
        for key in keys {
            if !Taken::expired(&b.key_state(DEVICES_COLLECTION, key)?, before_ms) {
                continue;
            }
            let delete = Write {
                collection: DEVICES_COLLECTION.into(),
                key: Some(key.clone()),
                value: None,
                context: None,
            };
            if let Err(refused) = self.apply_local(b, &delete, true)? {
                return Err(StoreError::Corrupted {
                    table: "keys",
                    reason: format!("the record of a device, {key}: {refused}"),
                });
            }
            metrics::counter!("chorus_device_records_expired_total").increment(1);
        }
        Ok(())
    }

    fn apply_step(&mut self, b: &mut Batch<'_>, step: ReplicationStep) -> Result<(), StoreError> {
        match step {
            ReplicationStep::SaveCursor { peer, seq } => b.set_peer_cursor(peer.0, seq),
            ReplicationStep::MergeState { keys, conflicts } => {
                for (collection, key, incoming) in keys {
                    self.merge_key_state(b, &collection, &key, &incoming)?;
                }
                for record in &conflicts {
                    if self.keep_conflict(b, record)? {
                        count_conflict(&self.conflict_counts, record);
                    }
                }
                Ok(())
            }
            ReplicationStep::AdoptState {
                applied,
                buckets,
                unchanged_since,
            } => {
                // It rewrites states behind the cache.
                self.cached.clear();
                // The sender sent every key of `buckets` it holds, and the merge wrote
                // each one here. A key there left unwritten since we compared is one
                // the sender no longer holds: its versions the sender covers were
                // deleted and collected there (a node back from an old backup, or
                // away while a tombstone was collected), and go here too.
                let asked: std::collections::HashSet<u8> = buckets.into_iter().collect();
                let seen_there = |v: &Version| applied.covers(v.dot);
                if !asked.is_empty() && unchanged_since > 0 {
                    b.rewrite_key_states(
                        |collection, key, seq| {
                            seq <= unchanged_since
                                && asked.contains(&crate::node::bucket_of(collection, key))
                        },
                        |_, _, state| {
                            if !state.dots().any(|dot| applied.covers(dot)) {
                                return None;
                            }
                            let rest =
                                state.without_versions(seen_there, |c| applied.covers(c.dot));
                            let kept = rest.dots().next().is_some();
                            Some(kept.then_some(rest))
                        },
                    )?;
                }
                self.configs.clear();
                // What was merged has no entries in our log: it joins the floor, so a
                // neighbour lacking it gets it by transfer from us in turn.
                self.applied.join(&applied);
                self.floor.join(&applied);
                Ok(())
            }
            ReplicationStep::TruncateLog { before_seq } => {
                self.truncate(b, before_seq.min(self.meta.next_seq))
            }
            ReplicationStep::PruneConflicts { before_wall_ms } => {
                // The watermark moves only when it would prune something here, so
                // that a node with nothing to prune writes nothing.
                if before_wall_ms <= self.pruned_before_ms(b)?
                    || !b.any_conflict(|record| record.newest_wall_ms() < before_wall_ms)?
                {
                    return Ok(());
                }
                // The watermark is a replicated document: every node prunes by the
                // same value, whatever its own clock says.
                let write = Write {
                    collection: RETENTION_COLLECTION.into(),
                    key: Some(RETENTION_KEY.into()),
                    value: Some(format!("{{\"before_wall_ms\":{before_wall_ms}}}").into_bytes()),
                    context: None,
                };
                if let Err(refused) = self.apply_local(b, &write, true)? {
                    tracing::warn!(%refused, "cannot move the conflict log's retention watermark");
                }
                self.enforce_retention(b)
            }
            ReplicationStep::CollectTombstones { stable } => {
                // It rewrites states behind the cache.
                self.cached.clear();
                // Every stable tombstone goes, also beside live versions: each node
                // removes it once stable there, so all end the same whatever
                // arrived in between (a write concurrent with the delete stands
                // alone everywhere in the end). The node's vector still covers it.
                // A hidden CRDT state is not collected: concurrent edits may still name the
                // items it keeps (collecting removed text is future work).
                let collectable = |v: &Version| v.is_tombstone() && stable.covers(v.dot);
                let collected = b.rewrite_key_states(
                    |_, _, _| true,
                    |_, _, state| {
                        if !state.plain_versions().iter().any(collectable) {
                            return None;
                        }
                        let rest = state.without_versions(collectable, |_| false);
                        let kept = rest.dots().next().is_some();
                        Some(kept.then_some(rest))
                    },
                )?;
                metrics::counter!("chorus_tombstones_collected_total").increment(collected);
                self.configs.clear();
                Ok(())
            }
        }
    }

    /// Merges a key state from a peer's transfer. A version whose dot this node has
    /// applied but whose key state lacks it was superseded or collected here: it is
    /// never revived.
    fn merge_key_state(
        &mut self,
        b: &mut Batch<'_>,
        collection: &str,
        key: &str,
        incoming: &KeyState,
    ) -> Result<(), StoreError> {
        let mut state = self.take_state(b, collection, key)?;
        let before = state.clone();
        state
            .merge_seen(incoming, &self.applied)
            .map_err(|e| corrupted_crdt(collection, key, e))?;
        let unchanged = state == before;
        let conflict = match unchanged {
            true => None,
            false => {
                self.announce(collection, key, None, &state);
                self.policy(b, collection)?
                    .conflict(collection, key, &state)
            }
        };
        // Written even when unchanged: its new change sequence marks it as part of
        // this transfer (see `AdoptState`).
        self.put_state(b, collection, key, state)?;
        if unchanged {
            return Ok(());
        }
        if collection == SETTINGS_COLLECTION {
            self.configs.remove(key);
        }
        if is_retention_key(collection, key) {
            self.enforce_retention(b)?;
        }
        if let Some(record) = conflict {
            self.note_conflict(b, record)?;
        }
        Ok(())
    }

    fn truncate(&mut self, b: &mut Batch<'_>, before_seq: u64) -> Result<(), StoreError> {
        if before_seq > self.meta.log_start {
            for dot in b.truncate_log(before_seq)? {
                self.floor.add(dot);
            }
            self.meta.log_start = before_seq;
        }
        Ok(())
    }

    fn apply_local(
        &mut self,
        b: &mut Batch<'_>,
        write: &Write,
        supersede_current: bool,
    ) -> Result<Result<WriteAck, WriteError>, StoreError> {
        let hlc = self.clock.tick(self.physical.now_ms());
        let key = match &write.key {
            Some(key) => key.clone(),
            // Unique across leaders (the node id) and, per node, increasing (the HLC).
            None => format!("{:016x}{}", hlc.0, self.node_id),
        };
        let mut state = match self.local_key_state(b, &write.collection, &key)? {
            Ok(state) => state,
            Err(refused) => return Ok(Err(refused)),
        };
        let policy = self.policy(b, &write.collection)?;
        if policy == Policy::Crdt
            && !supersede_current
            && let Some(refused) = crdt_plain_write_refused(write, &key, &state)
        {
            return Ok(Err(refused));
        }
        // Under lww a write without a context is the last write: it replaces every
        // version this node holds, and those it overwrote unseen go to the conflict
        // log (versions concurrent elsewhere stay side by side until the next write).
        // Under crdt a delete removes what this node has seen.
        let overwrites = policy == Policy::Lww && write.context.is_none();
        let context = if supersede_current || overwrites || policy == Policy::Crdt {
            state.context().clone()
        } else {
            write
                .context
                .as_ref()
                .map(|c| c.vector().clone())
                .unwrap_or_default()
        };
        if context.get(self.node_id) > self.applied.get(self.node_id) {
            return Ok(Err(WriteError::Invalid(
                "the context names writes of this node that it never made; read the document again"
                    .into(),
            )));
        }
        let dot = self.next_dot();
        let value = match (policy, &write.value) {
            (Policy::Merge | Policy::Custom, Some(doc)) => {
                // What the write changed is what differs from the read it is based on.
                let rules = &self.config(b, &write.collection)?.merge;
                let base = merge::base_for(&state.versions(), &context, rules);
                match merge::stamp_write(doc, &base, dot, hlc, &context) {
                    Ok(stamped) => Some(stamped),
                    Err(reason) => return Ok(Err(WriteError::Invalid(reason))),
                }
            }
            _ => write.value.clone(),
        };
        let op = Op {
            dot,
            hlc,
            collection: write.collection.clone(),
            key,
            context,
            value,
        };
        let overwritten = state.versions().to_vec();
        let deletion = (policy != Policy::Crdt)
            .then(|| collected_deletion(&op.context, &state, &self.applied))
            .flatten();
        if let Err(corrupted) = apply_own(&mut state, &op) {
            return Ok(Err(corrupted));
        }
        let bytes = state.value_bytes();
        if bytes > self.key_state_bytes_max && bytes > value_bytes(&overwritten) {
            return Ok(Err(WriteError::TooManyVersions {
                bytes,
                max: self.key_state_bytes_max,
            }));
        }
        let mut conflicts = self.settle(b, &op, &state)?;
        if let Some(deleted) = deletion {
            // Written against versions whose deletion was collected here: the write
            // stands, and the deletion it overrode is on record (not silently undone).
            let deleted = Version {
                dot: deleted,
                hlc: Hlc(0),
                value: None,
            };
            let written = Version {
                dot: op.dot,
                hlc,
                value: op.value.clone(),
            };
            let mut versions = vec![deleted, written];
            versions.sort_by_key(|v| v.dot);
            conflicts.push(ConflictRecord::new(
                &op.collection,
                &op.key,
                policy,
                versions,
                Outcome::Winner(op.dot),
            ));
        }
        if overwrites && overwritten.iter().any(|v| !v.is_tombstone()) {
            let version = Version {
                dot: op.dot,
                hlc,
                value: op.value.clone(),
            };
            let mut versions = overwritten;
            versions.push(version);
            versions.sort_by_key(|v| v.dot);
            let outcome = Outcome::Winner(op.dot);
            conflicts.push(ConflictRecord::new(
                &op.collection,
                &op.key,
                policy,
                versions,
                outcome,
            ));
        }
        self.commit_local(b, op, state, conflicts).map(Ok)
    }

    /// Applies CRDT operations made here: checked against the document as this node
    /// holds it, turned into a delta, and applied like any write.
    fn apply_update(
        &mut self,
        b: &mut Batch<'_>,
        collection: String,
        key: String,
        operations: &[Operation],
        read: Option<Context>,
    ) -> Result<Result<WriteAck, WriteError>, StoreError> {
        let policy = self.policy(b, &collection)?;
        if policy != Policy::Crdt {
            return Ok(Err(WriteError::NotCrdt {
                collection,
                policy: policy.name().to_owned(),
            }));
        }
        let mut state = match self.local_key_state(b, &collection, &key)? {
            Ok(state) => state,
            Err(refused) => return Ok(Err(refused)),
        };
        let Some(context) = self.update_context(&state, operations) else {
            return Ok(Err(WriteError::Busy(
                "a state transfer from a peer is being merged into this document, and a \
                 bounded counter's rights must not be spent on what it holds yet; retry shortly"
                    .into(),
            )));
        };
        // Made against an older read: what it removes or replaces is what that read
        // saw (a bounded counter's rights are this node's whatever the read).
        let context = match &read {
            Some(read) => context.meet(read.vector()),
            None => context,
        };
        // Text and list positions count in the read (without one, in what this node
        // shows): the write's context must name all of it, or they would count in
        // less. It cannot while this node has not applied all the read saw (a read
        // from another node), nor while a state transfer is being merged.
        let edits = operations
            .iter()
            .any(|o| matches!(o.update.kind(), Some(crdt::Kind::Text | crdt::Kind::List)));
        let read_saw = read.as_ref().map_or(state.context(), |r| r.vector());
        if edits && !context.dominates(read_saw) {
            return Ok(Err(WriteError::Busy(
                "this node has not applied all that the read this edit was made against saw \
                 (a read from another node, or a state transfer being merged), and positions \
                 count in that read; retry shortly, or send the edit to the node that gave the \
                 read"
                    .into(),
            )));
        }
        let hlc = self.clock.tick(self.physical.now_ms());
        let dot = self.next_dot();
        // Prepared in the document itself (a refusal drops this copy of the state).
        let doc = state.crdt_to_prepare(dot, hlc);
        let delta = match crdt::prepare(doc, &context, dot, hlc, operations) {
            Ok(delta) => delta,
            Err(crdt::OpError::Corrupted(e)) => {
                return Ok(Err(WriteError::Corrupted(e.to_string())));
            }
            Err(refused) => {
                metrics::counter!("chorus_crdt_refused_total", "reason" => refused.reason())
                    .increment(1);
                return Ok(Err(WriteError::Refused(refused)));
            }
        };
        metrics::counter!("chorus_crdt_operations_total", "collection" => collection.clone())
            .increment(operations.len() as u64);
        let op = Op {
            dot,
            hlc,
            collection,
            key,
            context,
            value: Some(crdt::encode_delta(&delta)),
        };
        state.apply_prepared(&op);
        let bytes = state.crdt_document().map_or(0, crdt::Map::approx_bytes);
        if bytes > DOCUMENT_BYTES_MAX {
            return Ok(Err(WriteError::TooLarge {
                bytes,
                max: DOCUMENT_BYTES_MAX,
            }));
        }
        let conflicts = self.settle(b, &op, &state)?;
        self.commit_local(b, op, state, conflicts).map(Ok)
    }

    /// The context of a CRDT write to a key in `state`: what this node has seen of
    /// the key *and applied*. The two differ while a state transfer is merged but
    /// not yet adopted (or was cut off before): the key state then holds writes the
    /// node's vector does not cover. A write's context must stay within what it
    /// depends on (the vector), or a replica that applied it early would count those
    /// writes as seen and skip them when they came, which for a CRDT loses them
    /// (simulator seed 10125 with `--crdt`); the write then simply has not seen
    /// them, on every replica alike. `None` when the operations spend a bounded
    /// counter's rights meanwhile: the rights could come from writes that others
    /// would apply after the spend. (Plain writes need no such care: they replace
    /// what their context covers anyway.)
    fn update_context(&self, state: &KeyState, operations: &[Operation]) -> Option<VersionVector> {
        let context = state.context().meet(&self.applied);
        let spends = |o: &Operation| match o.update {
            crdt::Update::BoundedAdd(by) => by < 0,
            crdt::Update::BoundedTransfer { .. } => true,
            _ => false,
        };
        (context == *state.context() || !operations.iter().any(spends)).then_some(context)
    }

    /// Stores a local write applied to `state`: the key state, the op-log entry,
    /// the conflicts it made. Returns the acknowledgement.
    fn commit_local(
        &mut self,
        b: &mut Batch<'_>,
        op: Op,
        state: KeyState,
        conflicts: Vec<ConflictRecord>,
    ) -> Result<WriteAck, StoreError> {
        self.announce(&op.collection, &op.key, Some(&op), &state);
        let context = Context::new(state.context().clone());
        self.put_state(b, &op.collection, &op.key, state)?;
        let deps = self.applied.clone();
        let (key, dot, hlc) = (op.key.clone(), op.dot, op.hlc);
        self.log(
            b,
            Entry {
                deps,
                body: EntryBody::Write(op),
            },
        )?;
        // The write's own place in the log (conflict entries may follow it).
        let seq = self.meta.next_seq - 1;
        for record in conflicts {
            self.note_conflict(b, record)?;
        }
        Ok(WriteAck {
            key,
            context,
            dot,
            hlc,
            seq,
        })
    }

    /// Applies entries from a peer in causal order. An entry whose dependencies are
    /// missing waits; it is tried again after each entry applied, and what is still
    /// waiting at the end is handed back.
    fn apply_remote(
        &mut self,
        b: &mut Batch<'_>,
        entries: Vec<Entry>,
    ) -> Result<RemoteOutcome, StoreError> {
        let mut waiting = entries;
        let mut applied_count = 0;
        loop {
            let before = waiting.len();
            let mut still = Vec::new();
            for entry in waiting {
                if self.applied.covers(entry.dot()) {
                    continue; // Already here, through another path or an earlier delivery.
                }
                if !entry.is_ready(&self.applied) {
                    still.push(entry);
                    continue;
                }
                self.apply_entry(b, entry)?;
                applied_count += 1;
            }
            waiting = still;
            if waiting.is_empty() || waiting.len() == before {
                break;
            }
        }
        metrics::counter!("chorus_replication_entries_applied_total").increment(applied_count);
        Ok(RemoteOutcome {
            applied: self.applied.clone(),
            waiting,
        })
    }

    fn apply_entry(&mut self, b: &mut Batch<'_>, entry: Entry) -> Result<(), StoreError> {
        if let Err(refused) = self.clock.observe(entry.hlc(), self.physical.now_ms()) {
            // The entry is applied all the same (data is never dropped); only our
            // clock refuses to follow a peer that runs too far ahead.
            metrics::counter!("chorus_hlc_drift_refused_total").increment(1);
            tracing::warn!(%refused, dot = %entry.dot(), "clock drift");
        }
        let mut conflicts = Vec::new();
        match &entry.body {
            EntryBody::Write(op) => {
                let mut state = self.take_state(b, &op.collection, &op.key)?;
                let applied = state
                    .apply(op)
                    .map_err(|e| corrupted_crdt(&op.collection, &op.key, e))?;
                if applied {
                    conflicts = self.settle(b, op, &state)?;
                    self.announce(&op.collection, &op.key, Some(op), &state);
                    self.put_state(b, &op.collection, &op.key, state)?;
                    if is_retention_key(&op.collection, &op.key) {
                        self.enforce_retention(b)?;
                    }
                } else {
                    self.keep_state(&op.collection, &op.key, state);
                }
            }
            EntryBody::Conflict { record, .. } => {
                if self.keep_conflict(b, record)? {
                    count_conflict(&self.conflict_counts, record);
                }
            }
        }
        self.log(b, entry)?;
        for record in conflicts {
            self.note_conflict(b, record)?;
        }
        Ok(())
    }

    /// Looks at a key after an op changed it; returns the conflict it holds, if any.
    fn settle(
        &mut self,
        b: &Batch<'_>,
        op: &Op,
        state: &KeyState,
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        let policy = self.policy(b, &op.collection)?;
        let conflict = policy.conflict(&op.collection, &op.key, state);
        let live = state.dots().count();
        if live > KEY_VERSIONS_WARN {
            metrics::counter!("chorus_sibling_warnings_total").increment(1);
            tracing::warn!(
                collection = op.collection,
                key = op.key,
                siblings = live,
                "many siblings: write with the context of a read to resolve them"
            );
        }
        if op.collection == SETTINGS_COLLECTION {
            self.configs.remove(&op.key);
        }
        Ok(conflict.into_iter().collect())
    }

    /// Records a conflict this node detected; a record new here is also logged as an
    /// entry, so that it replicates to replicas that never see the conflict.
    fn note_conflict(
        &mut self,
        b: &mut Batch<'_>,
        record: ConflictRecord,
    ) -> Result<(), StoreError> {
        if !self.keep_conflict(b, &record)? {
            return Ok(());
        }
        count_conflict(&self.conflict_counts, &record);
        let hlc = self.clock.tick(self.physical.now_ms());
        let deps = self.applied.clone();
        let dot = self.next_dot();
        self.log(
            b,
            Entry {
                deps,
                body: EntryBody::Conflict { dot, hlc, record },
            },
        )
    }

    /// The conflict log's retention watermark (cached).
    fn pruned_before_ms(&mut self, b: &Batch<'_>) -> Result<u64, StoreError> {
        if let Some(before) = self.pruned_before_ms {
            return Ok(before);
        }
        let before = retention_watermark(&b.key_state(RETENTION_COLLECTION, RETENTION_KEY)?);
        self.pruned_before_ms = Some(before);
        Ok(before)
    }

    /// After the watermark's document changed: drops every record older than it.
    fn enforce_retention(&mut self, b: &mut Batch<'_>) -> Result<(), StoreError> {
        self.pruned_before_ms = None;
        let before = self.pruned_before_ms(b)?;
        let pruned = b.retain_conflicts(|record| record.newest_wall_ms() >= before)?;
        metrics::counter!("chorus_conflicts_pruned_total").increment(pruned);
        Ok(())
    }

    /// Stores a conflict record unless the watermark has passed it (it would be
    /// pruned everywhere, so it must not come back here). True when it is new here.
    fn keep_conflict(
        &mut self,
        b: &mut Batch<'_>,
        record: &ConflictRecord,
    ) -> Result<bool, StoreError> {
        if record.newest_wall_ms() < self.pruned_before_ms(b)? {
            return Ok(false);
        }
        b.put_conflict(record)
    }

    /// Notes a change to a document for the listeners of [`Committer::changes`].
    fn announce(&mut self, collection: &str, key: &str, op: Option<&Op>, state: &KeyState) {
        if self.changes.receiver_count() > 0 {
            self.announced.push(DocumentChange {
                collection: collection.to_owned(),
                key: key.to_owned(),
                op: op.cloned(),
                context: state.context().clone(),
            });
        }
    }

    /// The key state a local write starts from; a corrupt one refuses the write (and
    /// only it), any other storage error fails the batch.
    fn local_key_state(
        &mut self,
        b: &Batch<'_>,
        collection: &str,
        key: &str,
    ) -> Result<Result<KeyState, WriteError>, StoreError> {
        match self.take_state(b, collection, key) {
            Ok(state) => Ok(Ok(state)),
            Err(StoreError::Corrupted { table, reason }) => {
                Ok(Err(WriteError::Corrupted(format!("{table}: {reason}"))))
            }
            Err(e) => Err(e),
        }
    }

    /// A key's state, to change and write with [`Committer::put_state`] (or keep
    /// with [`Committer::keep_state`] if unchanged; a copy dropped is read again).
    fn take_state(
        &mut self,
        b: &Batch<'_>,
        collection: &str,
        key: &str,
    ) -> Result<KeyState, StoreError> {
        match self.cached.remove(&(collection.to_owned(), key.to_owned())) {
            Some(state) => Ok(state),
            None => b.key_state(collection, key),
        }
    }

    /// Writes a key's state (its texts and lists write the pages they changed) and
    /// keeps it for the next write if it holds any.
    fn put_state(
        &mut self,
        b: &mut Batch<'_>,
        collection: &str,
        key: &str,
        mut state: KeyState,
    ) -> Result<(), StoreError> {
        b.put_key_state(collection, key, &mut state)?;
        let name = (collection.to_owned(), key.to_owned());
        self.cached.remove(&name);
        if !state
            .crdt_document()
            .is_some_and(crdt::Map::holds_sequences)
        {
            return Ok(());
        }
        if self.cached.len() >= DOCUMENTS_CACHED_MAX {
            let evicted = self.cached.keys().next().cloned().expect("full");
            self.cached.remove(&evicted);
        }
        self.cached.insert(name, state);
        Ok(())
    }

    /// Keeps an unchanged state taken with [`Committer::take_state`].
    fn keep_state(&mut self, collection: &str, key: &str, state: KeyState) {
        if state
            .crdt_document()
            .is_some_and(crdt::Map::holds_sequences)
            && self.cached.len() < DOCUMENTS_CACHED_MAX
        {
            self.cached
                .insert((collection.to_owned(), key.to_owned()), state);
        }
    }

    fn next_dot(&self) -> Dot {
        Dot::new(self.node_id, self.applied.get(self.node_id) + 1)
    }

    /// Appends an entry to the op log and counts it as applied.
    fn log(&mut self, b: &mut Batch<'_>, entry: Entry) -> Result<(), StoreError> {
        let seq = self.meta.next_seq;
        b.append_entry(seq, &entry)?;
        self.meta.next_seq += 1;
        self.meta.hlc = self.clock.last().0;
        self.applied.add(entry.dot());
        Ok(())
    }

    fn policy(&mut self, b: &Batch<'_>, collection: &str) -> Result<Policy, StoreError> {
        Ok(self.config(b, collection)?.policy)
    }

    fn config(&mut self, b: &Batch<'_>, collection: &str) -> Result<&CollectionConfig, StoreError> {
        if !self.configs.contains_key(collection) {
            let config = if collection == SETTINGS_COLLECTION {
                CollectionConfig {
                    policy: Policy::Lww,
                    ..CollectionConfig::default()
                }
            } else {
                CollectionConfig::from_state(&b.key_state(SETTINGS_COLLECTION, collection)?)
            };
            self.configs.insert(collection.to_owned(), config);
        }
        Ok(&self.configs[collection])
    }
}

/// The dot a write's `context` names of this key's history that this node has
/// applied but the key no longer holds, when the key holds no version at all: the
/// document was deleted and its tombstone collected after the writer read it (the
/// greatest such dot stands for what the writer saw). `None` otherwise.
fn collected_deletion(
    context: &VersionVector,
    state: &KeyState,
    applied: &VersionVector,
) -> Option<Dot> {
    if state.dots().next().is_some() {
        return None;
    }
    context
        .iter()
        .filter(|&(node, counter)| {
            counter > state.context().get(node) && counter <= applied.get(node)
        })
        .map(|(node, counter)| Dot { node, counter })
        .max()
}

/// Applies an op this node just made to `state`. Its dot is fresh, so it always
/// applies; only a corrupt stored CRDT document can stop it.
fn apply_own(state: &mut KeyState, op: &Op) -> Result<(), WriteError> {
    let applied = state
        .apply(op)
        .map_err(|e| WriteError::Corrupted(e.to_string()))?;
    assert!(
        applied,
        "a fresh local dot is never covered by a key's context"
    );
    Ok(())
}

/// A plain write the `crdt` policy refuses: a document (CRDT documents change by
/// operations), or a delete that would withdraw a bounded counter's rights.
fn crdt_plain_write_refused(write: &Write, key: &str, state: &KeyState) -> Option<WriteError> {
    let collection = &write.collection;
    if write.value.is_some() {
        return Some(WriteError::WholeCrdtDocument {
            collection: collection.clone(),
            key: key.to_owned(),
        });
    }
    match state.crdt_document() {
        Some(doc) if doc.holds_bounded(&[]) => {
            Some(WriteError::Refused(crdt::OpError::BoundedNotRemovable {
                path: format!("{collection}/{key}"),
            }))
        }
        _ => None,
    }
}

/// A stored CRDT value that does not decode: the disk is damaged (deltas from
/// peers were checked when their frames were decoded).
fn corrupted_crdt(collection: &str, key: &str, error: crdt::Corrupted) -> StoreError {
    StoreError::Corrupted {
        table: "keys",
        reason: format!("{collection}/{key}: {error}"),
    }
}

fn refuse(reply: ReplyTo, failure: StoreFailure) {
    match reply {
        ReplyTo::Local(reply) => {
            let _ = reply.send(Err(failure.error()));
        }
        ReplyTo::Remote(reply) => {
            let _ = reply.send(Err(failure.error()));
        }
        ReplyTo::Upload(reply) => {
            let _ = reply.send(Err(failure.error()));
        }
        ReplyTo::Done(reply) => {
            let _ = reply.send(Err(failure.error()));
        }
    }
}
