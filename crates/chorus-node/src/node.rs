//! [`Node`]: open a store, write through the committer, read from snapshots.

use crate::collections::{CollectionConfig, SETTINGS_COLLECTION, check_collection_name};
use crate::committer::{Committer, DocumentChange};
use crate::custom::{MergeHandler, Script};
use crate::document::{
    Change, ChangesPage, ConflictsPage, Context, Document, DocumentsPage, KeysPage,
};
use crate::limits::{
    CLOCK_DRIFT_MS_MAX, CRDT_VALUE_BYTES_MAX, DOCUMENT_BYTES_MAX, DOCUMENT_CHANGES_BUFFERED,
    KEY_BYTES_MAX, KEY_STATE_BYTES_MAX, LIST_SCAN_KEYS_MAX, PAGE_ITEMS_MAX, WRITE_OPERATIONS_MAX,
    WRITE_QUEUE_REQUESTS_MAX,
};
use crate::request::{ConflictCounts, Job, ReplyTo, Request, StoreHealth};
pub use crate::request::{
    RemoteOutcome, ReplicationStep, StoreFailure, Write, WriteAck, WriteError,
};
use chorus_core::crdt::{self, Operation};
use chorus_core::{
    ConflictId, ConflictRecord, Dot, Entry, EntryBody, Hlc, HlcClock, KeyState, NodeId,
    PhysicalClock, SystemClock, VersionVector,
};
use chorus_repl::{LogPosition, StateCursor};
use chorus_store::{Feed, NodeMeta, OpenError, Snapshot, StorageBackend, Store, StoreError};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// How to open a node.
#[derive(Clone)]
pub struct NodeConfig {
    /// A human name for this replica, shown as the origin of its writes.
    pub name: String,
    pub clock: Arc<dyn PhysicalClock>,
    /// The id a new store gets; random when `None` (the normal case). The simulator
    /// fixes it so a seed replays exactly.
    pub node_id: Option<NodeId>,
    /// Bytes of documents one key may hold across its versions when this node
    /// accepts a write to it; at most (and by default) `limits::KEY_STATE_BYTES_MAX`,
    /// which a larger value is clamped to. Lower it to keep sibling piles smaller.
    pub key_state_bytes_max: usize,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            name: "local".into(),
            clock: Arc::new(SystemClock),
            node_id: None,
            key_state_bytes_max: KEY_STATE_BYTES_MAX,
        }
    }
}

/// Opens (creating if needed) the node stored in the file at `path`, with defaults.
pub fn open(path: impl AsRef<Path>) -> Result<Node, OpenError> {
    Node::open(path.as_ref(), NodeConfig::default())
}

/// How a conflict ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A new document (for example, the versions merged by hand).
    Value(Vec<u8>),
    /// One of the record's versions, by dot (a tombstone picked deletes).
    Pick(Dot),
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no conflict {0} in this node's log (it may not have arrived yet)")]
    NoSuchConflict(ConflictId),
    #[error("version {0} is not one of the conflict's versions")]
    NotInRecord(Dot),
    #[error(
        "conflict {0} is already resolved: none of its versions is in the document any more \
         (read the document to see what replaced them)"
    )]
    AlreadyResolved(ConflictId),
    #[error(transparent)]
    Read(#[from] ReadError),
}

#[derive(Debug, thiserror::Error)]
#[error("read failed: {0}")]
pub struct ReadError(#[from] StoreError);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub node_id: NodeId,
    /// Sequence number of the newest entry in the op log (0 when empty).
    pub last_seq: u64,
    pub hlc: Hlc,
    /// The first sequence still in the op log (older entries were collected).
    pub log_start: u64,
    /// True after a failed commit: the node refuses writes until reopened.
    pub store_failed: bool,
    /// Why the store failed, when it did.
    pub store_failure: Option<StoreFailure>,
}

/// A handle to one replica. Cheap to clone; the node closes when the last handle
/// is dropped. The blocking methods must not be called from async code: use the
/// `_async` ones there.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    node_id: NodeId,
    name: String,
    queue: Option<mpsc::Sender<Request>>,
    committed_seq: watch::Receiver<u64>,
    /// The last change sequence of the feed, as committed.
    feed_seq: watch::Receiver<u64>,
    changes: broadcast::Sender<Arc<DocumentChange>>,
    failed: Arc<StoreHealth>,
    committer: Option<JoinHandle<()>>,
    /// Names of replicas this node has heard of (from handshakes), for display.
    names: RwLock<HashMap<NodeId, String>>,
    conflict_counts: Arc<ConflictCounts>,
    /// Merge handlers the application registered, per `custom` collection.
    handlers: RwLock<HashMap<String, Arc<dyn MergeHandler>>>,
    lease_guard: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the committer once it has answered every write.
        self.queue.take();
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
    }
}

impl Node {
    pub fn open(path: &Path, config: NodeConfig) -> Result<Node, OpenError> {
        let store = Store::open(path, || new_meta(&config))?;
        Ok(Node::start(store, config))
    }

    /// Opens a node on any redb backend: an in-memory disk for the simulator, or a
    /// failing one in tests.
    pub fn open_backend(
        backend: impl StorageBackend,
        config: NodeConfig,
    ) -> Result<Node, OpenError> {
        let store = Store::open_backend(backend, &config.name, || new_meta(&config))?;
        Ok(Node::start(store, config))
    }

    fn start(store: Store, config: NodeConfig) -> Node {
        let meta = store.meta_at_open().clone();
        let former_ids = store.former_ids().to_vec();
        let node_id = NodeId(meta.node_id);
        let store = Arc::new(store);
        let (queue_tx, queue_rx) = mpsc::channel(WRITE_QUEUE_REQUESTS_MAX);
        let (seq_tx, seq_rx) = watch::channel(meta.next_seq - 1);
        let feed_last = store
            .read()
            .and_then(|s| s.feed())
            .map_or(0, |f| f.last_seq);
        let (feed_tx, feed_rx) = watch::channel(feed_last);
        let failed = Arc::new(StoreHealth::default());
        let conflict_counts = Arc::new(ConflictCounts::default());
        let (changes, _) = broadcast::channel(DOCUMENT_CHANGES_BUFFERED);
        let committer = Committer {
            store: Arc::clone(&store),
            node_id,
            applied: vector(&meta.applied),
            floor: vector(&meta.floor),
            clock: HlcClock::new(Hlc(meta.hlc), CLOCK_DRIFT_MS_MAX),
            meta: meta.clone(),
            physical: config.clock,
            key_state_bytes_max: config.key_state_bytes_max.min(KEY_STATE_BYTES_MAX),
            configs: HashMap::new(),
            pruned_before_ms: None,
            committed_seq: seq_tx,
            feed_seq: feed_tx,
            changes: changes.clone(),
            announced: Vec::new(),
            cached: HashMap::new(),
            failed: Arc::clone(&failed),
            conflict_counts: Arc::clone(&conflict_counts),
        };
        let thread = std::thread::Builder::new()
            .name("chorus-committer".into())
            .spawn(move || committer.run(queue_rx))
            .expect("spawning the committer thread");
        tracing::info!(node = meta.name, node_id = %node_id, last_seq = meta.next_seq - 1, "node open");
        Node {
            inner: Arc::new(Inner {
                store,
                node_id,
                name: meta.name.clone(),
                queue: Some(queue_tx),
                committed_seq: seq_rx,
                feed_seq: feed_rx,
                changes,
                failed,
                committer: Some(thread),
                // Its former ids (before restores from backups) are its name too.
                names: RwLock::new(
                    std::iter::once(node_id)
                        .chain(former_ids.into_iter().map(NodeId))
                        .map(|id| (id, meta.name.clone()))
                        .collect(),
                ),
                conflict_counts,
                handlers: RwLock::new(HashMap::new()),
                lease_guard: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// How a version's origin is shown: the replica's name when known, else its id.
    pub fn origin_name(&self, origin: NodeId) -> String {
        let names = self.inner.names.read().unwrap_or_else(|e| e.into_inner());
        names
            .get(&origin)
            .cloned()
            .unwrap_or_else(|| origin.to_string())
    }

    // ---- writes -------------------------------------------------------------------

    /// Writes durably and waits for the commit. Blocking.
    pub fn write(&self, write: Write) -> Result<WriteAck, WriteError> {
        let (request, reply) = self.request(write, false)?;
        self.submit_blocking(request, reply)
    }

    /// Writes durably and waits for the commit.
    pub async fn write_async(&self, write: Write) -> Result<WriteAck, WriteError> {
        let (request, reply) = self.request(write, false)?;
        self.submit(request, reply).await
    }

    /// Applies CRDT operations to one document of a `crdt` collection, all or none.
    /// Blocking. A refused operation is [`WriteError::Refused`].
    ///
    /// ```
    /// use chorus_node::crdt::{Field, Kind, Operation, Update};
    /// use chorus_node::{CollectionConfig, Policy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let node = chorus_node::open(dir.path().join("app.redb"))?;
    /// let crdt = CollectionConfig { policy: Policy::Crdt, ..Default::default() };
    /// node.set_collection("events", &crdt)?;
    /// node.update("events", "launch", vec![
    ///     Operation { path: vec!["views".into()], update: Update::CounterAdd(2) },
    ///     Operation { path: vec!["tags".into()], update: Update::SetAdd(br#""new""#.to_vec()) },
    /// ])?;
    /// let doc = node.crdt_document("events", "launch")?.expect("written");
    /// let Some(Field::Counter(views)) = doc.get(&["views".into()], Kind::Counter) else {
    ///     panic!("a counter")
    /// };
    /// assert_eq!(Field::counter_value(views), 2);
    /// let read = node.get("events", "launch")?;
    /// assert_eq!(read.value(), Some(&br#"{"tags":["new"],"views":2}"#[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(
        &self,
        collection: &str,
        key: &str,
        operations: Vec<Operation>,
    ) -> Result<WriteAck, WriteError> {
        let (request, reply) = self.update_request(collection, key, operations, None)?;
        self.submit_blocking(request, reply)
    }

    /// [`Node::update`] for async callers; with `read`, the operations were made
    /// against that read of the document: a remove or a register set replaces only
    /// what it covers, and what the node holds beyond it stays (added concurrently).
    pub async fn update_async(
        &self,
        collection: &str,
        key: &str,
        operations: Vec<Operation>,
        read: Option<Context>,
    ) -> Result<WriteAck, WriteError> {
        let (request, reply) = self.update_request(collection, key, operations, read)?;
        self.submit(request, reply).await
    }

    fn update_request(
        &self,
        collection: &str,
        key: &str,
        operations: Vec<Operation>,
        read: Option<Context>,
    ) -> Result<PendingRequest, WriteError> {
        check_update(collection, key, &operations)?;
        Ok(local_job(Job::Update {
            collection: collection.to_owned(),
            key: key.to_owned(),
            operations,
            read,
        }))
    }

    /// The CRDT document of a key in a `crdt` collection, typed (`None` when it has
    /// none: never written, or deleted).
    pub fn crdt_document(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<crdt::Map>, ReadError> {
        let state = self.snapshot()?.key_state(collection, key)?;
        Ok(state.crdt_document().cloned())
    }

    /// Puts a JSON document. Blocking.
    pub fn put(
        &self,
        collection: &str,
        key: &str,
        json: &[u8],
        context: Option<&Context>,
    ) -> Result<WriteAck, WriteError> {
        self.write(Write {
            collection: collection.into(),
            key: Some(key.into()),
            value: Some(json.to_vec()),
            context: context.cloned(),
        })
    }

    /// Deletes a document (writes a tombstone). Blocking.
    pub fn delete(
        &self,
        collection: &str,
        key: &str,
        context: Option<&Context>,
    ) -> Result<WriteAck, WriteError> {
        self.write(Write {
            collection: collection.into(),
            key: Some(key.into()),
            value: None,
            context: context.cloned(),
        })
    }

    /// Creates or changes a collection's settings. Blocking.
    pub fn set_collection(
        &self,
        collection: &str,
        config: &CollectionConfig,
    ) -> Result<WriteAck, WriteError> {
        let (request, reply) = self.settings_request(collection, config)?;
        self.submit_blocking(request, reply)
    }

    pub async fn set_collection_async(
        &self,
        collection: &str,
        config: &CollectionConfig,
    ) -> Result<WriteAck, WriteError> {
        let (request, reply) = self.settings_request(collection, config)?;
        self.submit(request, reply).await
    }

    /// Queues a request for the committer and waits for its answer. Blocking.
    pub(crate) fn submit_blocking<T>(
        &self,
        request: Request,
        reply: oneshot::Receiver<Result<T, WriteError>>,
    ) -> Result<T, WriteError> {
        self.queue()?
            .blocking_send(request)
            .map_err(|_| self.dropped())?;
        reply.blocking_recv().map_err(|_| self.dropped())?
    }

    /// Queues a request for the committer and waits for its answer.
    pub(crate) async fn submit<T>(
        &self,
        request: Request,
        reply: oneshot::Receiver<Result<T, WriteError>>,
    ) -> Result<T, WriteError> {
        self.queue()?
            .send(request)
            .await
            .map_err(|_| self.dropped())?;
        reply.await.map_err(|_| self.dropped())?
    }

    fn queue(&self) -> Result<&mpsc::Sender<Request>, WriteError> {
        if let Some(refused) = self.inner.failed.refusal() {
            return Err(refused);
        }
        self.inner.queue.as_ref().ok_or(WriteError::ShuttingDown)
    }

    /// Writes to a reserved collection (leases), replacing every version this node
    /// holds of the key.
    pub(crate) async fn write_reserved(&self, write: Write) -> Result<WriteAck, WriteError> {
        let (request, reply) = pending(write, true);
        self.submit(request, reply).await
    }

    /// Serialises lease grants and releases on this node.
    pub(crate) fn lease_guard(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.lease_guard
    }

    fn settings_request(
        &self,
        collection: &str,
        config: &CollectionConfig,
    ) -> Result<PendingRequest, WriteError> {
        check_collection_name(collection).map_err(WriteError::Invalid)?;
        let write = Write {
            collection: SETTINGS_COLLECTION.into(),
            key: Some(collection.into()),
            value: Some(config.to_json()),
            context: None,
        };
        Ok(pending(write, true))
    }

    fn request(&self, write: Write, supersede_current: bool) -> Result<PendingRequest, WriteError> {
        check_write(&write)?;
        Ok(pending(write, supersede_current))
    }

    // ---- reads --------------------------------------------------------------------

    pub(crate) fn snapshot(&self) -> Result<Snapshot, ReadError> {
        Ok(self.inner.store.read()?)
    }

    /// Reads a document: every live version and the context to write against.
    /// An absent or deleted document is returned too (see [`Document::is_absent`]).
    pub fn get(&self, collection: &str, key: &str) -> Result<Document, ReadError> {
        metrics::counter!("chorus_reads_total").increment(1);
        let snapshot = self.snapshot()?;
        self.document(&snapshot, collection, key)
    }

    /// A document and its CRDT document (typed), read from one snapshot: what a live
    /// subscription starts from (the CRDT document's texts hold exactly the writes
    /// the read's context names).
    pub fn get_with_crdt(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<(Document, Option<crdt::Map>), ReadError> {
        metrics::counter!("chorus_reads_total").increment(1);
        let snapshot = self.snapshot()?;
        let document = self.document(&snapshot, collection, key)?;
        let state = snapshot.key_state(collection, key)?;
        Ok((document, state.crdt_document().cloned()))
    }

    /// Reads many documents of `collection` from one snapshot (a consistent view).
    pub fn get_many(&self, collection: &str, keys: &[String]) -> Result<Vec<Document>, ReadError> {
        metrics::counter!("chorus_reads_total").increment(keys.len() as u64);
        let snapshot = self.snapshot()?;
        keys.iter()
            .map(|key| self.document(&snapshot, collection, key))
            .collect()
    }

    /// A document as `snapshot` holds it, resolved by its collection's policy.
    fn document(
        &self,
        snapshot: &Snapshot,
        collection: &str,
        key: &str,
    ) -> Result<Document, ReadError> {
        let config = collection_config(snapshot, collection)?.0;
        let handler = self.merge_handler(collection, &config);
        let document = Document::from_state(
            collection,
            key,
            &config,
            &snapshot.key_state(collection, key)?,
            handler.as_deref(),
        );
        if let Some(error) = &document.merge_error {
            metrics::counter!("chorus_merge_handler_failures_total", "collection" => collection.to_owned())
                .increment(1);
            tracing::warn!(
                collection,
                key,
                error,
                "the merge handler left the conflict"
            );
        }
        Ok(document)
    }

    /// Makes `handler` merge the conflicts of `custom` collection `collection` on this
    /// node (in place of the collection's script, if it has one). Every replica must
    /// register the same handler: reads are resolved where they are made.
    pub fn set_merge_handler(&self, collection: &str, handler: Arc<dyn MergeHandler>) {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(collection.to_owned(), handler);
    }

    /// The handler of a `custom` collection: the application's, else its script.
    fn merge_handler(
        &self,
        collection: &str,
        config: &CollectionConfig,
    ) -> Option<Arc<dyn MergeHandler>> {
        if config.policy != chorus_core::Policy::Custom {
            return None;
        }
        let registered = self
            .inner
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)
            .cloned();
        registered.or_else(|| {
            let script = Script::cached(config.script.as_deref()?).ok()?;
            Some(script as Arc<dyn MergeHandler>)
        })
    }

    /// A collection's settings, and whether they were set explicitly.
    pub fn collection(&self, collection: &str) -> Result<(CollectionConfig, bool), ReadError> {
        collection_config(&self.snapshot()?, collection)
    }

    /// Writes a consistent copy of this node's store to a new file at `path`,
    /// durably, while the node keeps serving (`chorus backup`).
    pub fn backup(&self, path: &Path) -> Result<(), ReadError> {
        Ok(self.inner.store.backup_to(path)?)
    }

    /// Every collection this node knows, in name order: those holding documents
    /// (deleted ones too) and those with settings; not the reserved ones. Each with
    /// its settings, and whether they were set explicitly.
    pub fn collections(&self) -> Result<Vec<(String, CollectionConfig, bool)>, ReadError> {
        let snapshot = self.snapshot()?;
        let mut names: Vec<String> = snapshot
            .collection_names()?
            .into_iter()
            .filter(|name| !name.starts_with('_'))
            .collect();
        for entry in snapshot.keys_from(SETTINGS_COLLECTION, Bound::Unbounded)? {
            let (name, state) = entry?;
            if !state.is_absent() {
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let (config, explicit) = collection_config(&snapshot, &name)?;
                Ok((name, config, explicit))
            })
            .collect()
    }

    /// Keys of present documents in order, starting after `after`, limited to those
    /// starting with `prefix`.
    pub fn list(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeysPage, ReadError> {
        let snapshot = self.snapshot()?;
        let (keys, next) = scan_present(&snapshot, collection, prefix, after, limit, |key, _| {
            Ok(key)
        })?;
        Ok(KeysPage { keys, next })
    }

    /// Like [`Node::list`], with each document as [`Node::get`] reads it, all from
    /// one snapshot (a range read).
    pub fn list_documents(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DocumentsPage, ReadError> {
        let snapshot = self.snapshot()?;
        let config = collection_config(&snapshot, collection)?.0;
        let handler = self.merge_handler(collection, &config);
        let (docs, next) =
            scan_present(&snapshot, collection, prefix, after, limit, |key, state| {
                Ok(Document::from_state(
                    collection,
                    &key,
                    &config,
                    state,
                    handler.as_deref(),
                ))
            })?;
        metrics::counter!("chorus_reads_total").increment(docs.len() as u64);
        Ok(DocumentsPage { docs, next })
    }

    /// Where this node's change feed stands: its id and last change sequence.
    pub fn feed(&self) -> Result<Feed, ReadError> {
        Ok(self.snapshot()?.feed()?)
    }

    /// The change feed after change `after`: each document changed since, once, in
    /// the order of its latest change, as it reads now (deleted ones too), from
    /// `collection` if given, whose key starts with `prefix`. At most `limit` (1 to
    /// `PAGE_ITEMS_MAX`) documents, examining at most `LIST_SCAN_KEYS_MAX` changes;
    /// `next` is past every change examined. Reserved collections (`_...`: settings,
    /// tokens, leases) are not in it.
    pub fn changes(
        &self,
        after: u64,
        limit: usize,
        collection: Option<&str>,
        prefix: &str,
    ) -> Result<ChangesPage, ReadError> {
        let limit = limit.clamp(1, PAGE_ITEMS_MAX);
        let snapshot = self.snapshot()?;
        let mut page = ChangesPage {
            changes: Vec::new(),
            next: after,
        };
        for entry in snapshot.changes_after(after)?.take(LIST_SCAN_KEYS_MAX) {
            let (seq, c, key) = entry?;
            page.next = seq;
            let wanted = !c.starts_with('_')
                && collection.is_none_or(|wanted| wanted == c)
                && key.starts_with(prefix);
            if wanted {
                let doc = self.document(&snapshot, &c, &key)?;
                page.changes.push(Change { seq, doc });
                if page.changes.len() == limit {
                    break;
                }
            }
        }
        Ok(page)
    }

    /// A watch of the newest committed op-log sequence.
    pub fn committed_seq(&self) -> watch::Receiver<u64> {
        self.inner.committed_seq.clone()
    }

    /// Why a request got no answer: the store failed, or the node is closing.
    fn dropped(&self) -> WriteError {
        self.inner
            .failed
            .refusal()
            .unwrap_or(WriteError::ShuttingDown)
    }

    /// Every change to a document from now on, committed (local writes, ops from
    /// peers, state transfers), in the order applied. A receiver that falls more
    /// than `DOCUMENT_CHANGES_BUFFERED` behind is told it lagged, and should read
    /// the documents it follows again.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<DocumentChange>> {
        self.inner.changes.subscribe()
    }

    /// Waits until the change feed has a change after `after`.
    pub async fn wait_for_changes(&self, after: u64) {
        let mut seq = self.inner.feed_seq.clone();
        // The sender lives as long as the committer; if it is gone, return at once.
        let _ = seq.wait_for(|&last| last > after).await;
    }

    /// Conflict records in id order, after `after`, that `filter` lets through: at
    /// most `limit` (1 to `PAGE_ITEMS_MAX`), examining at most `LIST_SCAN_KEYS_MAX`
    /// records; `next` is where the following page starts.
    pub fn conflicts(
        &self,
        after: Option<ConflictId>,
        limit: usize,
        filter: &ConflictFilter,
    ) -> Result<ConflictsPage, ReadError> {
        let limit = limit.clamp(1, PAGE_ITEMS_MAX);
        let snapshot = self.snapshot()?;
        let (mut conflicts, mut next) = (Vec::new(), None);
        for (scanned, record) in snapshot.conflicts_after(after)?.enumerate() {
            let record = record?;
            let id = record.id;
            if filter.lets_through(&record) {
                conflicts.push(shown_record(record));
            }
            if conflicts.len() == limit || scanned + 1 == LIST_SCAN_KEYS_MAX {
                next = Some(id);
                break;
            }
        }
        Ok(ConflictsPage { conflicts, next })
    }

    /// Conflicts this node added to its log since it started (detected here or
    /// received), per collection and policy.
    pub fn conflict_counts(&self) -> Vec<(String, &'static str, u64)> {
        self.inner
            .conflict_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((collection, policy), n)| (collection.clone(), *policy, *n))
            .collect()
    }

    /// Moves the conflict log's retention watermark to `before_wall_ms` (wall-clock
    /// milliseconds of an HLC), if that is later than where it stands: every node
    /// then removes the records whose newest version is older (see
    /// `committer::RETENTION_COLLECTION`).
    pub async fn prune_conflicts(&self, before_wall_ms: u64) -> Result<(), WriteError> {
        self.replica()
            .replicate(ReplicationStep::PruneConflicts { before_wall_ms })
            .await
    }

    /// The conflict log's retention watermark as this node knows it: records whose
    /// newest version is older are pruned (0 before any pruning).
    pub fn conflicts_pruned_before_ms(&self) -> Result<u64, ReadError> {
        let state = self.snapshot()?.key_state(
            crate::committer::RETENTION_COLLECTION,
            crate::committer::RETENTION_KEY,
        )?;
        Ok(crate::committer::retention_watermark(&state))
    }

    /// The conflict record `id`, if this node's log holds it.
    pub fn conflict(&self, id: ConflictId) -> Result<Option<ConflictRecord>, ReadError> {
        Ok(self.snapshot()?.conflict(id)?.map(shown_record))
    }

    /// Whether a conflict is over: none of its versions is in its document any more
    /// (a resolution, or any write that saw them, replaced them all).
    pub fn is_resolved(&self, record: &ConflictRecord) -> Result<bool, ReadError> {
        let state = self
            .snapshot()?
            .key_state(&record.collection, &record.key)?;
        let live: Vec<Dot> = state.dots().collect();
        Ok(!record.versions.iter().any(|v| live.contains(&v.dot)))
    }

    /// The write that ends conflict `id`: `resolution` (a new value, or one of the
    /// record's versions picked) replaces exactly the record's versions, as a write
    /// with their context would. Under `lww`, picking a losing version restores it:
    /// the new write is the newest, so it wins.
    pub fn resolution(
        &self,
        id: ConflictId,
        resolution: Resolution,
    ) -> Result<Write, ResolveError> {
        let record = self.conflict(id)?.ok_or(ResolveError::NoSuchConflict(id))?;
        if self.is_resolved(&record)? {
            return Err(ResolveError::AlreadyResolved(id));
        }
        let value = match resolution {
            Resolution::Value(value) => Some(value),
            Resolution::Pick(dot) => record
                .versions
                .iter()
                .find(|v| v.dot == dot)
                .ok_or(ResolveError::NotInRecord(dot))?
                .value
                .clone(),
        };
        let mut context = VersionVector::new();
        for version in &record.versions {
            context.join(&VersionVector::from_entries([(
                version.dot.node,
                version.dot.counter,
            )]));
        }
        Ok(Write {
            collection: record.collection,
            key: Some(record.key),
            value,
            context: Some(Context::new(context)),
        })
    }

    /// A hash of everything reads can observe: every present document with the
    /// versions a read shows (collection settings included, as documents of
    /// `_collections`), and the ids of the conflict log. Deleted documents are left
    /// out, so collecting a tombstone never changes the digest.
    pub fn digest(&self) -> Result<[u8; 32], ReadError> {
        let snapshot = self.snapshot()?;
        let mut hasher = Sha256::new();
        let mut configs: HashMap<String, CollectionConfig> = HashMap::new();
        for entry in snapshot.all_keys()? {
            let (collection, key, state) = entry?;
            if !configs.contains_key(&collection) {
                let config = collection_config(&snapshot, &collection)?.0;
                configs.insert(collection.clone(), config);
            }
            // Versions are hashed, not what a handler makes of them.
            let document =
                Document::from_state(&collection, &key, &configs[&collection], &state, None);
            if document.is_absent() {
                continue;
            }
            for part in [collection.as_bytes(), key.as_bytes()] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            hasher.update((document.versions.len() as u64).to_le_bytes());
            for version in &document.versions {
                let stamp = (!version.crdt).then_some((version.dot, version.hlc));
                hash_version(&mut hasher, stamp, version.value.as_deref());
            }
        }
        hasher.update(b"conflicts");
        for record in snapshot.conflicts_after(None)? {
            hasher.update(record?.id.0);
        }
        Ok(hasher.finalize().into())
    }

    pub fn status(&self) -> Result<NodeStatus, ReadError> {
        let meta = self.snapshot()?.meta()?;
        Ok(NodeStatus {
            name: meta.name,
            node_id: NodeId(meta.node_id),
            last_seq: meta.next_seq - 1,
            hlc: Hlc(meta.hlc),
            log_start: meta.log_start,
            store_failed: self.inner.failed.failure().is_some(),
            store_failure: self.inner.failed.failure(),
        })
    }
}

/// The interface of a replica that replication runtimes use (`chorus-peer`, the
/// simulator): reading the op log and key states for a peer, applying its entries,
/// committing replication steps, and the names of other replicas. Embedders never
/// need it; [`Node`] keeps to reading and writing documents.
///
/// It derefs to the [`Node`] it was taken from.
pub struct Replica<'a> {
    node: &'a Node,
}

impl std::ops::Deref for Replica<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        self.node
    }
}

impl Node {
    /// This node as a replica, for replication runtimes.
    pub fn replica(&self) -> Replica<'_> {
        Replica { node: self }
    }
}

impl Replica<'_> {
    /// Remembers the name of a replica (learned from a peer's handshake).
    pub fn learn_name(&self, id: NodeId, name: &str) {
        let mut names = self.inner.names.write().unwrap_or_else(|e| e.into_inner());
        names.insert(id, name.to_owned());
    }

    /// Every replica name this node knows.
    pub fn known_names(&self) -> Vec<(NodeId, String)> {
        let names = self.inner.names.read().unwrap_or_else(|e| e.into_inner());
        names.iter().map(|(id, name)| (*id, name.clone())).collect()
    }

    /// Applies entries received from a peer, durably and in causal order. Blocking.
    pub fn apply_remote_blocking(&self, entries: Vec<Entry>) -> Result<RemoteOutcome, WriteError> {
        let (request, reply) = remote_request(entries);
        self.submit_blocking(request, reply)
    }

    /// Applies entries received from a peer, durably and in causal order.
    pub async fn apply_remote(&self, entries: Vec<Entry>) -> Result<RemoteOutcome, WriteError> {
        let (request, reply) = remote_request(entries);
        self.submit(request, reply).await
    }

    /// Commits a replication step and waits for it.
    pub async fn replicate(&self, step: ReplicationStep) -> Result<(), WriteError> {
        let (request, reply) = step_request(step);
        self.submit(request, reply).await
    }

    /// Commits a replication step and waits for it. Blocking.
    pub fn replicate_blocking(&self, step: ReplicationStep) -> Result<(), WriteError> {
        let (request, reply) = step_request(step);
        self.submit_blocking(request, reply)
    }

    /// The cursor replica `peer` last acknowledged (0 if never).
    pub fn peer_cursor(&self, peer: NodeId) -> Result<u64, ReadError> {
        Ok(self.snapshot()?.peer_cursor(peer.0)?)
    }

    /// Op-log entries after `after_seq` in log order: at most `max_entries`, and no
    /// more once `max_bytes` of documents are read, in writes and conflict records
    /// alike (but always at least one, however large).
    pub fn read_log(
        &self,
        after_seq: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Entry)>, ReadError> {
        let snapshot = self.snapshot()?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in snapshot
            .entries_from(after_seq.saturating_add(1))?
            .take(max_entries)
        {
            let (seq, entry) = entry?;
            bytes += match &entry.body {
                EntryBody::Write(op) => op.value.as_ref().map_or(0, Vec::len) + op.key.len(),
                EntryBody::Conflict { record, .. } => record.value_bytes() + record.key.len(),
            };
            out.push((seq, entry));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Where this node's op log stands, durably.
    pub fn position(&self) -> Result<LogPosition, ReadError> {
        let meta = self.snapshot()?.meta()?;
        Ok(LogPosition {
            applied: vector(&meta.applied),
            last_seq: meta.next_seq - 1,
            log_start: meta.log_start,
            floor: vector(&meta.floor),
            incarnation: self.inner.store.incarnation(),
        })
    }

    /// The newest op-log sequence that falls outside the retention bounds: beyond
    /// `bytes_max` of newer entries, or written more than `age_ms_max` before
    /// `now_ms` (wall clock). 0 when the whole log is within both.
    pub fn retention_limit(
        &self,
        bytes_max: u64,
        age_ms_max: u64,
        now_ms: u64,
    ) -> Result<u64, ReadError> {
        let snapshot = self.snapshot()?;
        let oldest_kept_ms = now_ms.saturating_sub(age_ms_max);
        let mut bytes = 0u64;
        for entry in snapshot.entries_newest_first()? {
            let (seq, size, entry) = entry?;
            bytes += size as u64;
            if bytes > bytes_max || entry.hlc().wall_ms() < oldest_kept_ms {
                return Ok(seq);
            }
        }
        Ok(0)
    }

    /// Hashes of this node's key states in each bucket of the key space (see
    /// [`bucket_of`]), with what they reflect: the start of a state transfer.
    pub fn bucket_hashes(&self) -> Result<BucketHashes, ReadError> {
        let snapshot = self.snapshot()?;
        let mut hashers: Vec<Sha256> = (0..STATE_BUCKETS).map(|_| Sha256::new()).collect();
        for entry in snapshot.all_keys()? {
            let (collection, key, state) = entry?;
            let hasher = &mut hashers[bucket_of(&collection, &key) as usize];
            for part in [collection.as_bytes(), key.as_bytes()] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            hash_key_state(hasher, &state);
        }
        let hashes = hashers
            .into_iter()
            .map(|h| u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes")))
            .collect();
        let meta = snapshot.meta()?;
        Ok(BucketHashes {
            hashes,
            floor: vector(&meta.floor),
            log_start: meta.log_start,
            feed_seq: snapshot.feed()?.last_seq,
        })
    }

    /// The buckets whose hashes differ between a peer's offer and this node, and
    /// this node's change sequence as it compared them.
    pub fn wanted_buckets(&self, theirs: &[u64]) -> Result<(Vec<u8>, u64), ReadError> {
        let ours = self.bucket_hashes()?;
        let wanted = (0..STATE_BUCKETS)
            .filter(|&b| theirs.get(b) != Some(&ours.hashes[b]))
            .map(|b| b as u8)
            .collect();
        Ok((wanted, ours.feed_seq))
    }

    /// The next part of a state transfer to a peer, from `after`: key states of
    /// `buckets` in storage order (at most `max_keys`, examining at most
    /// `LIST_SCAN_KEYS_MAX` keys), then the conflict log in id order; no more once
    /// `max_bytes` of documents are read, but always at least one state or record
    /// however large (the frame carrying it is split on the wire).
    pub fn read_state(
        &self,
        after: StateCursor,
        max_keys: usize,
        max_bytes: usize,
        buckets: &[u8],
    ) -> Result<StateChunk, ReadError> {
        let snapshot = self.snapshot()?;
        let mut chunk = StateChunk {
            keys: Vec::new(),
            conflicts: Vec::new(),
            next: None,
        };
        let start = match &after {
            StateCursor::KeysFromStart => None,
            StateCursor::KeysAfter(c, k) => Some((c.as_str(), k.as_str())),
            StateCursor::Conflicts(after) => {
                let mut bytes = 0;
                for record in snapshot.conflicts_after(*after)? {
                    if bytes >= max_bytes || chunk.conflicts.len() == max_keys.max(1) {
                        let last = chunk.conflicts.last().map(|r: &ConflictRecord| r.id);
                        chunk.next = Some(StateCursor::Conflicts(last));
                        break;
                    }
                    let record = record?;
                    bytes += record.value_bytes() + record.key.len();
                    chunk.conflicts.push(record);
                }
                return Ok(chunk);
            }
        };
        // No bucket wanted: the transfer carries only the conflict log.
        chunk.next = Some(StateCursor::Conflicts(None));
        let scan =
            snapshot
                .all_keys_after(start)?
                .take(if buckets.is_empty() { 0 } else { usize::MAX });
        let (mut bytes, mut last_scanned) = (0, None);
        for (scanned, entry) in scan.enumerate() {
            if chunk.keys.len() == max_keys.max(1)
                || scanned == LIST_SCAN_KEYS_MAX
                || bytes >= max_bytes
            {
                if let Some((c, k)) = last_scanned {
                    chunk.next = Some(StateCursor::KeysAfter(c, k));
                }
                break;
            }
            let (collection, key, state) = entry?;
            last_scanned = Some((collection.clone(), key.clone()));
            if buckets.contains(&bucket_of(&collection, &key)) {
                bytes += state.value_bytes() + key.len();
                chunk.keys.push((collection, key, state));
            }
        }
        Ok(chunk)
    }
}

type PendingRequest = (Request, oneshot::Receiver<Result<WriteAck, WriteError>>);

/// Which conflict records a listing shows: those of one collection, or of one
/// document, or all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConflictFilter {
    pub collection: Option<String>,
    pub key: Option<String>,
}

impl ConflictFilter {
    fn lets_through(&self, record: &ConflictRecord) -> bool {
        self.collection
            .as_ref()
            .is_none_or(|c| *c == record.collection)
            && self.key.as_ref().is_none_or(|k| *k == record.key)
    }
}

/// Part of a state transfer (see [`Replica::read_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChunk {
    pub keys: Vec<(String, String, KeyState)>,
    pub conflicts: Vec<ConflictRecord>,
    /// Where the next part starts; `None` when this was the last.
    pub next: Option<StateCursor>,
}

/// Buckets a state transfer splits the key space into.
pub const STATE_BUCKETS: usize = 256;

/// The bucket of a document in state transfers: the first byte of a hash of its
/// collection and key, so that buckets split any key space evenly.
pub fn bucket_of(collection: &str, key: &str) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update((collection.len() as u64).to_le_bytes());
    hasher.update(collection.as_bytes());
    hasher.update(key.as_bytes());
    hasher.finalize()[0]
}

/// A node's bucket hashes and what they reflect (see [`Replica::bucket_hashes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketHashes {
    pub hashes: Vec<u64>,
    /// What the hashed states reflect that the op log no longer holds.
    pub floor: VersionVector,
    /// The first sequence still in the op log.
    pub log_start: u64,
    /// The change sequence of the snapshot hashed.
    pub feed_seq: u64,
}

fn remote_request(
    entries: Vec<Entry>,
) -> (
    Request,
    oneshot::Receiver<Result<RemoteOutcome, WriteError>>,
) {
    let (reply, rx) = oneshot::channel();
    (
        Request {
            job: Job::Remote { entries },
            reply: ReplyTo::Remote(reply),
        },
        rx,
    )
}

fn vector(entries: &[(u64, u64)]) -> VersionVector {
    VersionVector::from_entries(entries.iter().map(|&(n, c)| (NodeId(n), c)))
}

fn step_request(step: ReplicationStep) -> (Request, oneshot::Receiver<Result<(), WriteError>>) {
    let (reply, rx) = oneshot::channel();
    (
        Request {
            job: Job::Step(step),
            reply: ReplyTo::Done(reply),
        },
        rx,
    )
}

fn pending(write: Write, supersede_current: bool) -> PendingRequest {
    local_job(Job::Local {
        write,
        supersede_current,
    })
}

fn local_job(job: Job) -> PendingRequest {
    let (reply, rx) = oneshot::channel();
    (
        Request {
            job,
            reply: ReplyTo::Local(reply),
        },
        rx,
    )
}

/// Hashes `state` as every replica holding the same data holds it: without a CRDT
/// version's dot and HLC (the greatest of the deltas folded in on that replica), so
/// that equal documents hash equal and a transfer skips their buckets.
fn hash_key_state(hasher: &mut Sha256, state: &KeyState) {
    hasher.update((state.context().len() as u64).to_le_bytes());
    for (node, counter) in state.context().iter() {
        hasher.update(node.0.to_le_bytes());
        hasher.update(counter.to_le_bytes());
    }
    hasher.update((state.versions().len() as u64).to_le_bytes());
    for version in state.versions().iter() {
        let stamp = (!version.is_crdt()).then_some((version.dot, version.hlc));
        hash_version(hasher, stamp, version.value.as_deref());
    }
}

/// Hashes one version: its dot and HLC when replicas agree on them (`stamp`), and
/// its value or the fact that it is a tombstone.
fn hash_version(hasher: &mut Sha256, stamp: Option<(Dot, Hlc)>, value: Option<&[u8]>) {
    if let Some((dot, hlc)) = stamp {
        hasher.update(dot.node.0.to_le_bytes());
        hasher.update(dot.counter.to_le_bytes());
        hasher.update(hlc.0.to_le_bytes());
    }
    match value {
        Some(value) => {
            hasher.update([1]);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
        None => hasher.update([0]),
    }
}

/// A stored value as users see it: the document, without a merge header.
fn shown(value: Vec<u8>) -> Vec<u8> {
    match crate::document_bytes(&value) {
        Cow::Borrowed(document) if document.len() == value.len() => value,
        document => document.into_owned(),
    }
}

/// A conflict record as users see it: its versions' documents without headers.
fn shown_record(mut record: ConflictRecord) -> ConflictRecord {
    for version in &mut record.versions {
        version.value = version.value.take().map(shown);
    }
    record
}

/// Refuses a write whose names or document are not acceptable, before it is queued
/// (and, for device uploads, before it is applied).
/// Whether CRDT operations on `collection`/`key` are acceptable before the
/// committer looks at the document (names, count, sizes).
pub(crate) fn check_update(
    collection: &str,
    key: &str,
    operations: &[Operation],
) -> Result<(), WriteError> {
    check_collection_name(collection).map_err(WriteError::Invalid)?;
    check_key(key).map_err(WriteError::Invalid)?;
    if operations.is_empty() || operations.len() > WRITE_OPERATIONS_MAX {
        return Err(WriteError::Invalid(format!(
            "give 1 to {WRITE_OPERATIONS_MAX} operations, not {}",
            operations.len()
        )));
    }
    // Text is kept in pages (an insert of any size costs later edits nothing); other
    // values are kept whole in the document.
    let whole = |o: &&Operation| !matches!(o.update, crdt::Update::TextInsert { .. });
    if let Some(large) = operations
        .iter()
        .filter(whole)
        .find(|o| o.value_bytes() > CRDT_VALUE_BYTES_MAX)
    {
        return Err(WriteError::Invalid(format!(
            "a set element, register value or list element of {} bytes is over the \
             {CRDT_VALUE_BYTES_MAX} a CRDT document takes; keep large content in a plain \
             document and name it",
            large.value_bytes()
        )));
    }
    let bytes: usize = operations.iter().map(Operation::bytes).sum();
    if bytes > DOCUMENT_BYTES_MAX {
        return Err(WriteError::TooLarge {
            bytes,
            max: DOCUMENT_BYTES_MAX,
        });
    }
    Ok(())
}

pub(crate) fn check_write(write: &Write) -> Result<(), WriteError> {
    check_collection_name(&write.collection).map_err(WriteError::Invalid)?;
    if let Some(key) = &write.key {
        check_key(key).map_err(WriteError::Invalid)?;
    }
    if let Some(value) = &write.value {
        if value.len() > DOCUMENT_BYTES_MAX {
            return Err(WriteError::TooLarge {
                bytes: value.len(),
                max: DOCUMENT_BYTES_MAX,
            });
        }
        crate::json::check_document(value).map_err(|e| WriteError::Invalid(e.to_string()))?;
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(format!("key must be 1 to {KEY_BYTES_MAX} bytes"));
    }
    Ok(())
}

/// The present documents of `collection` in key order, after `after`, whose key
/// starts with `prefix`, each made into an item by `item`: at most `limit` (clamped to
/// 1..=`PAGE_ITEMS_MAX`) items, examining at most `LIST_SCAN_KEYS_MAX` keys. The
/// second value is the `after` of the next page, `None` when the range is done.
fn scan_present<T>(
    snapshot: &Snapshot,
    collection: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    mut item: impl FnMut(String, &KeyState) -> Result<T, ReadError>,
) -> Result<(Vec<T>, Option<String>), ReadError> {
    let limit = limit.clamp(1, PAGE_ITEMS_MAX);
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut items = Vec::new();
    for (scanned, entry) in snapshot.keys_from(collection, start)?.enumerate() {
        let (key, state) = entry?;
        if !key.starts_with(prefix) {
            break;
        }
        let last = key.clone();
        if !state.is_absent() {
            items.push(item(key, &state)?);
        }
        if items.len() == limit || scanned + 1 == LIST_SCAN_KEYS_MAX {
            return Ok((items, Some(last)));
        }
    }
    Ok((items, None))
}

fn collection_config(
    snapshot: &Snapshot,
    collection: &str,
) -> Result<(CollectionConfig, bool), ReadError> {
    let state = snapshot.key_state(SETTINGS_COLLECTION, collection)?;
    Ok((CollectionConfig::from_state(&state), !state.is_absent()))
}

/// Restores the backup at `backup` as the store file `store_path` (which must not
/// exist) of a new replica: same data and name, a new node id and feed (see
/// `Store::restore_as_new_replica`). Returns the restored node's meta.
pub fn restore_backup(backup: &Path, store_path: &Path) -> Result<NodeMeta, OpenError> {
    let io = |error: std::io::Error| OpenError::Store(error.into());
    if store_path.exists() {
        return Err(OpenError::Occupied {
            path: store_path.display().to_string(),
        });
    }
    let partial = store_path.with_extension("restoring");
    std::fs::copy(backup, &partial).map_err(io)?;
    // The copy is named for what it came from: a file redb cannot open is no backup.
    let not_a_backup = |error| match error {
        OpenError::Database { .. } | OpenError::NotAStore { .. } => OpenError::NotAStore {
            path: backup.display().to_string(),
        },
        other => other,
    };
    let restored = Store::restore_as_new_replica(&partial, random_node_id())
        .map_err(not_a_backup)
        .and_then(|meta| {
            std::fs::rename(&partial, store_path)
                .map(|()| meta)
                .map_err(io)
        });
    if restored.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    restored
}

fn random_node_id() -> u64 {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random source");
    u64::from_le_bytes(id)
}

fn new_meta(config: &NodeConfig) -> NodeMeta {
    let node_id = config.node_id.map_or_else(random_node_id, |id| id.0);
    NodeMeta {
        node_id,
        name: config.name.clone(),
        hlc: 0,
        next_seq: 1,
        log_start: 1,
        floor: Vec::new(),
        applied: Vec::new(),
    }
}
