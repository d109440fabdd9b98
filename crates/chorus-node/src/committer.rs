//! The committer: the node's only writer, and its group commit.
//!
//! It takes every write waiting in the queue (up to `BATCH_WRITES_MAX`), applies them
//! in order in one redb transaction, commits once (one fsync for the whole batch),
//! then answers each writer. Concurrent writers therefore share fsyncs, and a writer
//! is answered only once its write is durable.
//!
//! The committer owns the node's counters (dot counter, HLC, op-log sequence). They
//! advance in memory while a batch is applied and are rolled back if its commit fails.

use crate::collections::{CollectionConfig, SETTINGS_COLLECTION};
use crate::document::Context;
use crate::limits::{BATCH_WRITES_MAX, SIBLINGS_WARN};
use crate::node::{Write, WriteAck, WriteError};
use chorus_core::{Dot, HlcClock, NodeId, Op, PhysicalClock, Policy};
use chorus_store::{Batch, NodeMeta, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

pub(crate) struct Request {
    pub write: Write,
    /// Supersede whatever versions exist when the write is applied (used for
    /// collection settings, whose writer means "replace the settings").
    pub supersede_current: bool,
    pub reply: oneshot::Sender<Result<WriteAck, WriteError>>,
}

pub(crate) struct Committer {
    pub store: Arc<Store>,
    pub node_id: NodeId,
    pub meta: NodeMeta,
    pub clock: HlcClock,
    pub physical: Arc<dyn PhysicalClock>,
    /// Policies of collections, read from `_collections` on first use.
    pub policies: HashMap<String, Policy>,
    pub committed_seq: watch::Sender<u64>,
    pub failed: Arc<AtomicBool>,
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
        if self.failed.load(Ordering::Acquire) {
            for request in batch {
                let _ = request.reply.send(Err(WriteError::StoreFailed));
            }
            return;
        }
        let (meta_before, clock_before) = (self.meta.clone(), self.clock.clone());
        let started = Instant::now();
        let store = Arc::clone(&self.store);
        let result = store.write(|b| {
            let outcomes = batch
                .iter()
                .map(|request| self.apply_local(b, request))
                .collect::<Result<Vec<_>, StoreError>>()?;
            b.set_meta(&self.meta)?;
            Ok(outcomes)
        });
        match result {
            Ok(outcomes) => {
                metrics::histogram!("chorus_commit_latency_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("chorus_commit_batch_writes").record(batch.len() as f64);
                metrics::counter!("chorus_fsyncs_total").increment(1);
                metrics::counter!("chorus_writes_total")
                    .increment(outcomes.iter().filter(|o| o.is_ok()).count() as u64);
                self.committed_seq.send_replace(self.meta.next_seq - 1);
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(error) => {
                tracing::error!(%error, "commit failed; refusing writes until the node is reopened");
                self.meta = meta_before;
                self.clock = clock_before;
                self.policies.clear();
                self.failed.store(true, Ordering::Release);
                for request in batch {
                    let _ = request.reply.send(Err(WriteError::StoreFailed));
                }
            }
        }
    }

    /// Applies one local write inside the batch. The outer error aborts the batch (a
    /// storage failure); the inner one refuses only this write.
    fn apply_local(
        &mut self,
        b: &mut Batch<'_>,
        request: &Request,
    ) -> Result<Result<WriteAck, WriteError>, StoreError> {
        let write = &request.write;
        let hlc = self.clock.tick(self.physical.now_ms());
        let key = match &write.key {
            Some(key) => key.clone(),
            // Unique across leaders (the node id) and, per node, increasing (the HLC).
            None => format!("{:016x}{}", hlc.0, self.node_id),
        };
        let mut state = match b.key_state(&write.collection, &key) {
            Ok(state) => state,
            Err(StoreError::Corrupted { table, reason }) => {
                return Ok(Err(WriteError::Corrupted(format!("{table}: {reason}"))));
            }
            Err(e) => return Err(e),
        };
        let context = if request.supersede_current {
            state.context().clone()
        } else {
            write.context.clone().map(|c| c.0).unwrap_or_default()
        };
        if context.get(self.node_id) > self.meta.counter {
            return Ok(Err(WriteError::Invalid(
                "the context names writes of this node that it never made; read the document again"
                    .into(),
            )));
        }
        self.meta.counter += 1;
        let op = Op {
            dot: Dot::new(self.node_id, self.meta.counter),
            hlc,
            collection: write.collection.clone(),
            key,
            context,
            value: write.value.clone(),
        };
        assert!(
            state.apply(&op),
            "a fresh local dot is never covered by a key's context"
        );
        let policy = self.policy(b, &op.collection)?;
        if let Some(record) = policy.settle(&op.collection, &op.key, &mut state).conflict
            && b.put_conflict(&record)?
        {
            metrics::counter!("chorus_conflicts_total", "policy" => policy.name()).increment(1);
        }
        if state.versions().len() > SIBLINGS_WARN {
            metrics::counter!("chorus_sibling_warnings_total").increment(1);
            tracing::warn!(
                collection = op.collection,
                key = op.key,
                siblings = state.versions().len(),
                "many siblings: write with the context of a read to resolve them"
            );
        }
        b.put_key_state(&op.collection, &op.key, &state)?;
        let seq = self.meta.next_seq;
        self.meta.next_seq += 1;
        self.meta.hlc = hlc.0;
        b.append_op(seq, &op)?;
        if op.collection == SETTINGS_COLLECTION {
            self.policies.remove(&op.key);
        }
        Ok(Ok(WriteAck {
            key: op.key,
            context: Context(state.context().clone()),
            dot: op.dot,
            hlc,
            seq,
        }))
    }

    fn policy(&mut self, b: &Batch<'_>, collection: &str) -> Result<Policy, StoreError> {
        if collection == SETTINGS_COLLECTION {
            return Ok(Policy::Lww);
        }
        if let Some(policy) = self.policies.get(collection) {
            return Ok(*policy);
        }
        let policy =
            CollectionConfig::from_state(&b.key_state(SETTINGS_COLLECTION, collection)?).policy;
        self.policies.insert(collection.to_owned(), policy);
        Ok(policy)
    }
}
