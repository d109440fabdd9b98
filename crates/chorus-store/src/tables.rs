//! The [`Store`] and its two views: a [`Batch`] (one write transaction) and a
//! [`Snapshot`] (one read transaction).
//!
//! **The by-sequence index** (the change feed): every time a key state is written,
//! the key takes the next *change sequence* of this store (kept in front of its state
//! in `keys`), and its previous entry in `changes` is dropped, so `changes` lists
//! every key ever written once, in the order of its latest change, whatever the op
//! log has collected. Keys whose states were collected (deleted documents) keep their
//! place: a reader that resumes after their deletion still learns of it. (A collected
//! key written again leaves its old entry behind; readers skip an entry that is not
//! its key's current change.) Change sequences belong to one store file,
//! named by its random *feed id*: a cursor carries it, so a cursor from another node
//! or from before a wipe is refused rather than misread.

use crate::codec::{self, NodeMeta};
use crate::{OpenError, STORE_FORMAT, StoreError};
use chorus_core::{ConflictId, ConflictRecord, Dot, Entry, KeyState};
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, StorageBackend, Table,
    TableDefinition,
};
use std::ops::Bound;
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");
const CONFLICTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("conflicts");
const PEERS: TableDefinition<u64, u64> = TableDefinition::new("peers");
/// Change sequence → storage key of the document whose latest change it is.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// Pages of the texts and lists of CRDT documents (see [`page_key`]): a document's
/// `keys` value holds their headers, so an operation writes the pages it changed.
const PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pages");

const META_FORMAT: &str = "format";
const META_NODE: &str = "node";
/// The feed: its id and the last change sequence given (16 bytes, little endian).
const META_FEED: &str = "feed";
/// The node ids this replica had before restores from backups (8 bytes each, little
/// endian), oldest first.
const META_FORMER_IDS: &str = "former_ids";
/// When the replica was last restored from a backup (wall-clock ms, 8 bytes little
/// endian; absent: never).
const META_INCARNATION: &str = "incarnation";

/// Where the change feed stands: its id and the last change sequence given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feed {
    pub id: u64,
    pub last_seq: u64,
}

impl Feed {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..].copy_from_slice(&self.last_seq.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Feed, StoreError> {
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        match (bytes.len(), word(0), word(8)) {
            (16, Some(id), Some(last_seq)) => Ok(Feed { id, last_seq }),
            _ => Err(StoreError::Corrupted {
                table: "meta",
                reason: "the feed record is not 16 bytes".into(),
            }),
        }
    }
}

/// The storage key of a document: the collection name, a 0 byte, then the key.
/// Collection names never contain 0, so this orders documents by collection, then key.
fn storage_key(collection: &str, key: &str) -> Vec<u8> {
    debug_assert!(!collection.as_bytes().contains(&0));
    let mut out = Vec::with_capacity(collection.len() + 1 + key.len());
    out.extend_from_slice(collection.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Where the pages of a document's field at `path` go: its storage key, 0xff (no
/// UTF-8 byte), the path as a JSON pointer, 0xff, then the page id (big endian, so
/// a field's pages are in order). Without a page: the prefix of the field's pages;
/// with an empty path too, of all the document's.
fn page_key(storage: &[u8], path: &[String], page: Option<u64>) -> Vec<u8> {
    let mut out = storage.to_vec();
    out.push(0xff);
    if !path.is_empty() {
        out.extend_from_slice(chorus_core::crdt::path_text(path).as_bytes());
        out.push(0xff);
    }
    if let Some(page) = page {
        out.extend_from_slice(&page.to_be_bytes());
    }
    out
}

/// The first key after every key starting with `prefix` (which ends with 0xff).
fn after_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix[..prefix.len() - 1].to_vec();
    end.push(0xff);
    end.push(0xff);
    end
}

/// A `keys` value: the key's latest change sequence, then its state.
fn stored(seq: u64, state_bytes: &[u8]) -> Vec<u8> {
    let mut out = seq.to_le_bytes().to_vec();
    out.extend_from_slice(state_bytes);
    out
}

/// The change sequence of a `keys` value, and the bytes of its state.
fn split_stored(bytes: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (seq, state) = bytes.split_at_checked(8).ok_or(StoreError::Corrupted {
        table: "keys",
        reason: "a value shorter than its change sequence".into(),
    })?;
    Ok((u64::from_le_bytes(seq.try_into().expect("8 bytes")), state))
}

/// The change sequence and the state of the `keys` value of `storage`, its texts'
/// and lists' pages read from `pages`.
fn unstored(
    storage: &[u8],
    bytes: &[u8],
    pages: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<(u64, KeyState), StoreError> {
    let (seq, state) = split_stored(bytes)?;
    let mut failed = None;
    let mut page = |path: &[String], id: u64| {
        let key = page_key(storage, path, Some(id));
        match pages.get(key.as_slice()) {
            Ok(found) => found.map(|v| v.value().to_vec()),
            Err(e) => {
                failed = Some(e);
                None
            }
        }
    };
    let state = codec::decode_key_state_paged(state, &mut page);
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok((seq, state?))
}

fn split_storage_key(bytes: &[u8]) -> Result<(String, String), StoreError> {
    let corrupted = |reason: &str| StoreError::Corrupted {
        table: "keys",
        reason: reason.into(),
    };
    let at = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupted("key without separator"))?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupted("key is not UTF-8"));
    Ok((text(&bytes[..at])?, text(&bytes[at + 1..])?))
}

pub struct Store {
    db: Database,
    meta: NodeMeta,
    former_ids: Vec<u64>,
    incarnation: u64,
}

/// The redb database on `backend`; `name` stands for its path in errors.
fn backend_database(backend: impl StorageBackend, name: &str) -> Result<Database, OpenError> {
    Database::builder()
        .create_with_backend(backend)
        .map_err(|source| OpenError::Database {
            path: name.to_owned(),
            source,
        })
}

fn decode_ids(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("chunks of 8")))
        .collect()
}

/// Copies every row of `table` from `source` into `target`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    source: &redb::ReadTransaction,
    target: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError>
where
    for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
{
    let from = source.open_table(table)?;
    let mut to = target.open_table(table)?;
    for entry in from.iter()? {
        let (key, value) = entry?;
        to.insert(key.value(), value.value())?;
    }
    Ok(())
}

/// Gives the feed an id and indexes every key already stored (a new store, or one
/// written before the feed existed), in storage order.
fn index_existing_keys(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(META_FEED)?.is_some() {
        return Ok(());
    }
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| StoreError::Corrupted {
        table: "meta",
        reason: format!("cannot draw the feed id: {e}"),
    })?;
    let mut feed = Feed {
        id: u64::from_le_bytes(id),
        last_seq: 0,
    };
    let mut keys = txn.open_table(KEYS)?;
    let mut changes = txn.open_table(CHANGES)?;
    let existing: Vec<(Vec<u8>, Vec<u8>)> = keys
        .iter()?
        .map(|entry| entry.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
        .collect::<Result<_, _>>()?;
    for (key, state) in existing {
        feed.last_seq += 1;
        let mut value = feed.last_seq.to_le_bytes().to_vec();
        value.extend(state);
        keys.insert(key.as_slice(), value.as_slice())?;
        changes.insert(feed.last_seq, key.as_slice())?;
    }
    meta.insert(META_FEED, feed.encode().as_slice())?;
    Ok(())
}

impl Store {
    /// Opens the store at `path`, creating it (with the meta `init` returns) when the
    /// file does not exist yet.
    pub fn open(path: &Path, init: impl FnOnce() -> NodeMeta) -> Result<Store, OpenError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|source| OpenError::Database {
            path: shown.clone(),
            source,
        })?;
        Store::init(db, shown, init)
    }

    /// Opens a store on any redb backend: an in-memory disk for the simulator, or a
    /// failing one for tests. `name` stands for the path in error messages.
    pub fn open_backend(
        backend: impl StorageBackend,
        name: &str,
        init: impl FnOnce() -> NodeMeta,
    ) -> Result<Store, OpenError> {
        Store::init(backend_database(backend, name)?, name.to_owned(), init)
    }

    fn init(
        db: Database,
        shown: String,
        init: impl FnOnce() -> NodeMeta,
    ) -> Result<Store, OpenError> {
        let txn = db.begin_write().map_err(StoreError::from)?;
        let mut former_ids = Vec::new();
        let mut incarnation = 0;
        let meta = {
            let mut meta_table = txn.open_table(META).map_err(StoreError::from)?;
            if let Some(bytes) = meta_table.get(META_FORMER_IDS).map_err(StoreError::from)? {
                former_ids = decode_ids(bytes.value());
            }
            if let Some(bytes) = meta_table.get(META_INCARNATION).map_err(StoreError::from)? {
                incarnation = decode_ids(bytes.value()).first().copied().unwrap_or(0);
            }
            let format = meta_table
                .get(META_FORMAT)
                .map_err(StoreError::from)?
                .map(|v| v.value().to_vec());
            match format {
                Some(bytes) => {
                    let found = u32::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                        StoreError::Corrupted {
                            table: "meta",
                            reason: "format is not 4 bytes".into(),
                        }
                    })?);
                    if found > STORE_FORMAT {
                        return Err(OpenError::NewerFormat {
                            path: shown,
                            found,
                            supported: STORE_FORMAT,
                        });
                    }
                    if found < STORE_FORMAT {
                        // This build reads the older format and writes its own
                        // (format 1 had no pages), which older builds must refuse.
                        meta_table
                            .insert(META_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())
                            .map_err(StoreError::from)?;
                    }
                    let node = meta_table.get(META_NODE).map_err(StoreError::from)?.ok_or(
                        StoreError::Corrupted {
                            table: "meta",
                            reason: "node record missing".into(),
                        },
                    )?;
                    codec::decode_meta(node.value()).map_err(StoreError::from)?
                }
                None => {
                    let meta = init();
                    meta_table
                        .insert(META_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())
                        .map_err(StoreError::from)?;
                    meta_table
                        .insert(META_NODE, codec::encode_meta(&meta).as_slice())
                        .map_err(StoreError::from)?;
                    meta
                }
            }
        };
        for table in [KEYS, CONFLICTS, PAGES] {
            txn.open_table(table).map_err(StoreError::from)?;
        }
        txn.open_table(OPLOG).map_err(StoreError::from)?;
        txn.open_table(PEERS).map_err(StoreError::from)?;
        index_existing_keys(&txn)?;
        txn.commit().map_err(StoreError::from)?;
        Ok(Store {
            db,
            meta,
            former_ids,
            incarnation,
        })
    }

    /// Writes a consistent copy of the whole store (one read transaction) to a new
    /// store file at `path`, durably. The node keeps serving meanwhile.
    pub fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        let copy = Database::create(path)?;
        let source = self.db.begin_read()?;
        let target = copy.begin_write()?;
        copy_table(&source, &target, META)?;
        copy_table(&source, &target, KEYS)?;
        copy_table(&source, &target, OPLOG)?;
        copy_table(&source, &target, CONFLICTS)?;
        copy_table(&source, &target, PEERS)?;
        copy_table(&source, &target, CHANGES)?;
        copy_table(&source, &target, PAGES)?;
        target.commit()?;
        Ok(())
    }

    /// Makes the store at `path` (a backup being restored) a new replica: a new node
    /// id `node_id` for the writes it makes from now on (its old id may have issued
    /// writes after the backup was taken, which must never be issued twice), no
    /// cursors of what peers acknowledged of it, and a new feed id (cursors of the
    /// feed before the restore are refused). Its data and its name stay.
    pub fn restore_as_new_replica(path: &Path, node_id: u64) -> Result<NodeMeta, OpenError> {
        let shown = path.display().to_string();
        let db = Database::open(path).map_err(|source| OpenError::Database {
            path: shown.clone(),
            source,
        })?;
        let mut feed_id = [0u8; 8];
        getrandom::fill(&mut feed_id).map_err(|e| {
            OpenError::Store(StoreError::Corrupted {
                table: "meta",
                reason: format!("cannot draw the feed id: {e}"),
            })
        })?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Store::become_new_replica(db, shown, node_id, u64::from_le_bytes(feed_id), now_ms)
    }

    /// [`Store::restore_as_new_replica`] on any redb backend (the simulator's disks),
    /// with the new feed id and the time of the restore (`now_ms`) given.
    pub fn restore_backend_as_new_replica(
        backend: impl StorageBackend,
        name: &str,
        node_id: u64,
        feed_id: u64,
        now_ms: u64,
    ) -> Result<NodeMeta, OpenError> {
        let db = backend_database(backend, name)?;
        Store::become_new_replica(db, name.to_owned(), node_id, feed_id, now_ms)
    }

    fn become_new_replica(
        db: Database,
        shown: String,
        node_id: u64,
        feed_id: u64,
        now_ms: u64,
    ) -> Result<NodeMeta, OpenError> {
        let mut not_a_store = false;
        let store = Store::init(db, shown.clone(), || {
            not_a_store = true;
            NodeMeta {
                node_id,
                name: String::new(),
                hlc: 0,
                next_seq: 1,
                log_start: 1,
                floor: Vec::new(),
                applied: Vec::new(),
            }
        })?;
        if not_a_store {
            return Err(OpenError::NotAStore { path: shown });
        }
        let meta = NodeMeta {
            node_id,
            ..store.meta.clone()
        };
        let mut former_ids = store.former_ids.clone();
        former_ids.push(store.meta.node_id);
        store.write(|batch| {
            batch.set_meta(&meta)?;
            let ids: Vec<u8> = former_ids.iter().flat_map(|id| id.to_le_bytes()).collect();
            batch.meta.insert(META_FORMER_IDS, ids.as_slice())?;
            // Later than any incarnation before it, whatever the clock says.
            let incarnation = now_ms.max(store.incarnation + 1);
            batch
                .meta
                .insert(META_INCARNATION, incarnation.to_le_bytes().as_slice())?;
            let cursors: Vec<u64> = batch
                .peers
                .iter()?
                .map(|entry| entry.map(|(peer, _)| peer.value()))
                .collect::<Result<_, _>>()?;
            for peer in cursors {
                batch.peers.remove(peer)?;
            }
            batch.feed.id = feed_id;
            batch.feed_moved = true;
            Ok(())
        })?;
        Ok(meta)
    }

    /// The node meta as it was when the store was opened.
    pub fn meta_at_open(&self) -> &NodeMeta {
        &self.meta
    }

    /// The node ids this replica had before it was restored from backups (see
    /// [`Store::restore_as_new_replica`]), oldest first.
    pub fn former_ids(&self) -> &[u64] {
        &self.former_ids
    }

    /// When this replica was last restored from a backup (wall-clock ms; 0: never).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) when `f`
    /// returns `Ok`. Nothing `f` did is kept when it fails.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_write()?;
        let result = {
            let meta = txn.open_table(META)?;
            let feed = Feed::decode(
                meta.get(META_FEED)?
                    .ok_or(StoreError::Corrupted {
                        table: "meta",
                        reason: "the feed record is missing".into(),
                    })?
                    .value(),
            )?;
            let mut batch = Batch {
                meta,
                keys: txn.open_table(KEYS)?,
                oplog: txn.open_table(OPLOG)?,
                conflicts: txn.open_table(CONFLICTS)?,
                peers: txn.open_table(PEERS)?,
                changes: txn.open_table(CHANGES)?,
                pages: txn.open_table(PAGES)?,
                feed,
                feed_moved: false,
            };
            let result = f(&mut batch)?;
            if batch.feed_moved {
                batch
                    .meta
                    .insert(META_FEED, batch.feed.encode().as_slice())?;
            }
            result
        };
        txn.commit()?;
        Ok(result)
    }

    pub fn read(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(Snapshot {
            meta: txn.open_table(META)?,
            keys: txn.open_table(KEYS)?,
            oplog: txn.open_table(OPLOG)?,
            conflicts: txn.open_table(CONFLICTS)?,
            peers: txn.open_table(PEERS)?,
            changes: txn.open_table(CHANGES)?,
            pages: txn.open_table(PAGES)?,
        })
    }
}

/// The tables of one write transaction.
pub struct Batch<'txn> {
    meta: Table<'txn, &'static str, &'static [u8]>,
    keys: Table<'txn, &'static [u8], &'static [u8]>,
    oplog: Table<'txn, u64, &'static [u8]>,
    conflicts: Table<'txn, &'static [u8], &'static [u8]>,
    peers: Table<'txn, u64, u64>,
    changes: Table<'txn, u64, &'static [u8]>,
    pages: Table<'txn, &'static [u8], &'static [u8]>,
    feed: Feed,
    feed_moved: bool,
}

impl Batch<'_> {
    /// The feed as this batch leaves it.
    pub fn feed(&self) -> Feed {
        self.feed
    }
    pub fn key_state(&self, collection: &str, key: &str) -> Result<KeyState, StoreError> {
        let storage = storage_key(collection, key);
        match self.keys.get(storage.as_slice())? {
            Some(bytes) => Ok(unstored(&storage, bytes.value(), &self.pages)?.1),
            None => Ok(KeyState::new()),
        }
    }

    /// Writes a key state; its texts and lists write the pages they changed since
    /// they were loaded or last written. Keep one copy of a state and write that one:
    /// two copies written in turn would each miss what the other wrote.
    pub fn put_key_state(
        &mut self,
        collection: &str,
        key: &str,
        state: &mut KeyState,
    ) -> Result<(), StoreError> {
        self.store_state(&storage_key(collection, key), state)
    }

    /// Writes a key state; the key's latest change moves to the end of the feed.
    fn store_state(&mut self, storage: &[u8], state: &mut KeyState) -> Result<(), StoreError> {
        let mut saved = Vec::new();
        let bytes = codec::encode_key_state_paged(state, &mut |path, pages| {
            saved.push((path.to_vec(), pages));
        });
        for (path, pages) in saved {
            if pages.fresh {
                // Pages another copy of the field may have left (a state replaced).
                self.remove_pages(&page_key(storage, &path, None))?;
            }
            for (id, page) in pages.pages {
                let key = page_key(storage, &path, Some(id));
                self.pages.insert(key.as_slice(), page.as_slice())?;
            }
        }
        self.feed.last_seq += 1;
        self.feed_moved = true;
        let seq = self.feed.last_seq;
        let previous = self
            .keys
            .insert(storage, stored(seq, &bytes).as_slice())?
            .map(|old| split_stored(old.value()).map(|(seq, _)| seq));
        if let Some(previous) = previous {
            self.changes.remove(previous?)?;
        }
        self.changes.insert(seq, storage)?;
        Ok(())
    }

    pub fn append_entry(&mut self, seq: u64, entry: &Entry) -> Result<(), StoreError> {
        let previous = self
            .oplog
            .insert(seq, codec::encode_entry(entry).as_slice())?;
        assert!(previous.is_none(), "op log sequence {seq} reused");
        Ok(())
    }

    /// Records a conflict; returns false when a record with its id already existed.
    pub fn put_conflict(&mut self, record: &ConflictRecord) -> Result<bool, StoreError> {
        if self.conflicts.get(record.id.0.as_slice())?.is_some() {
            return Ok(false);
        }
        self.conflicts.insert(
            record.id.0.as_slice(),
            codec::encode_conflict(record).as_slice(),
        )?;
        Ok(true)
    }

    /// Whether any conflict record (that decodes) is one `matches` accepts.
    pub fn any_conflict(
        &self,
        matches: impl Fn(&ConflictRecord) -> bool,
    ) -> Result<bool, StoreError> {
        for entry in self.conflicts.iter()? {
            let (_, bytes) = entry?;
            if codec::decode_conflict(bytes.value()).is_ok_and(|record| matches(&record)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Keeps the conflict records `keep` accepts and removes the others; returns how
    /// many it removed. A record that does not decode is kept (and reported by reads).
    pub fn retain_conflicts(
        &mut self,
        keep: impl Fn(&ConflictRecord) -> bool,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        self.conflicts.retain(|_, bytes| {
            let kept = codec::decode_conflict(bytes).map_or(true, |record| keep(&record));
            removed += u64::from(!kept);
            kept
        })?;
        Ok(removed)
    }

    /// Rewrites key states: of the keys `examine(collection, key, change sequence)`
    /// picks (before their states are decoded), `change(collection, key, state)`
    /// returns `None` to keep one as it is, `Some(None)` to remove it,
    /// `Some(Some(state))` to replace it. Returns how many changed. A state that does
    /// not decode is kept (and reported when read). A key changed or removed moves to
    /// the end of the feed (a removed one reads as deleted there).
    pub fn rewrite_key_states(
        &mut self,
        mut examine: impl FnMut(&str, &str, u64) -> bool,
        mut change: impl FnMut(&str, &str, &KeyState) -> Option<Option<KeyState>>,
    ) -> Result<u64, StoreError> {
        let mut changes = Vec::new();
        for entry in self.keys.iter()? {
            let (key, bytes) = entry?;
            let (collection, name) = split_storage_key(key.value())?;
            let Ok((seq, _)) = split_stored(bytes.value()) else {
                continue;
            };
            if !examine(&collection, &name, seq) {
                continue;
            }
            let Ok((_, state)) = unstored(key.value(), bytes.value(), &self.pages) else {
                continue;
            };
            if let Some(new) = change(&collection, &name, &state) {
                changes.push((key.value().to_vec(), new));
            }
        }
        let changed = changes.len() as u64;
        for (key, new) in changes {
            match new {
                None => self.remove_state(&key)?,
                Some(mut state) => self.store_state(&key, &mut state)?,
            }
        }
        Ok(changed)
    }

    /// Removes the pages whose keys start with `prefix` (one ending with 0xff).
    fn remove_pages(&mut self, prefix: &[u8]) -> Result<(), StoreError> {
        let end = after_prefix(prefix);
        let doomed: Vec<Vec<u8>> = self
            .pages
            .range(prefix..end.as_slice())?
            .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()?;
        for key in doomed {
            self.pages.remove(key.as_slice())?;
        }
        Ok(())
    }

    /// Removes a key state; the key's entry moves to the end of the feed, where it
    /// reads as deleted.
    fn remove_state(&mut self, storage: &[u8]) -> Result<(), StoreError> {
        self.remove_pages(&page_key(storage, &[], None))?;
        let previous = self
            .keys
            .remove(storage)?
            .map(|old| split_stored(old.value()).map(|(seq, _)| seq));
        if let Some(previous) = previous {
            self.changes.remove(previous?)?;
        }
        self.feed.last_seq += 1;
        self.feed_moved = true;
        self.changes.insert(self.feed.last_seq, storage)?;
        Ok(())
    }

    /// Removes every op-log entry before `before_seq`; returns their dots.
    pub fn truncate_log(&mut self, before_seq: u64) -> Result<Vec<Dot>, StoreError> {
        let mut dots = Vec::new();
        for entry in self.oplog.range(..before_seq)? {
            let (_, bytes) = entry?;
            dots.push(codec::decode_entry("oplog", bytes.value())?.dot());
        }
        self.oplog.retain_in(..before_seq, |_, _| false)?;
        Ok(dots)
    }

    pub fn set_peer_cursor(&mut self, peer: u64, seq: u64) -> Result<(), StoreError> {
        self.peers.insert(peer, seq)?;
        Ok(())
    }

    pub fn set_meta(&mut self, meta: &NodeMeta) -> Result<(), StoreError> {
        self.meta
            .insert(META_NODE, codec::encode_meta(meta).as_slice())?;
        Ok(())
    }
}

/// The tables of one read transaction: a consistent point-in-time view.
pub struct Snapshot {
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    keys: ReadOnlyTable<&'static [u8], &'static [u8]>,
    oplog: ReadOnlyTable<u64, &'static [u8]>,
    conflicts: ReadOnlyTable<&'static [u8], &'static [u8]>,
    peers: ReadOnlyTable<u64, u64>,
    changes: ReadOnlyTable<u64, &'static [u8]>,
    pages: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Snapshot {
    pub fn feed(&self) -> Result<Feed, StoreError> {
        let bytes = self.meta.get(META_FEED)?.ok_or(StoreError::Corrupted {
            table: "meta",
            reason: "the feed record is missing".into(),
        })?;
        Feed::decode(bytes.value())
    }

    /// The documents in the order of their latest change, after change `after`:
    /// `(change sequence, collection, key)`. An entry left behind by a collected key
    /// that was written again is skipped.
    pub fn changes_after(
        &self,
        after: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, String, String), StoreError>> + '_, StoreError>
    {
        let range = self.changes.range(after.saturating_add(1)..)?;
        let current = move |seq: u64, storage: &[u8]| -> Result<bool, StoreError> {
            Ok(match self.keys.get(storage)? {
                Some(value) => split_stored(value.value())?.0 == seq,
                None => true,
            })
        };
        Ok(range.filter_map(move |entry| {
            let item = entry.map_err(StoreError::from).and_then(|(seq, storage)| {
                let (seq, storage) = (seq.value(), storage.value());
                if !current(seq, storage)? {
                    return Ok(None);
                }
                let (collection, key) = split_storage_key(storage)?;
                Ok(Some((seq, collection, key)))
            });
            item.transpose()
        }))
    }
    pub fn meta(&self) -> Result<NodeMeta, StoreError> {
        let bytes = self.meta.get(META_NODE)?.ok_or(StoreError::Corrupted {
            table: "meta",
            reason: "node record missing".into(),
        })?;
        Ok(codec::decode_meta(bytes.value())?)
    }

    pub fn key_state(&self, collection: &str, key: &str) -> Result<KeyState, StoreError> {
        let storage = storage_key(collection, key);
        match self.keys.get(storage.as_slice())? {
            Some(bytes) => Ok(unstored(&storage, bytes.value(), &self.pages)?.1),
            None => Ok(KeyState::new()),
        }
    }

    /// Key states of `collection` in key order, from `start` on.
    pub fn keys_from(
        &self,
        collection: &str,
        start: Bound<&str>,
    ) -> Result<impl Iterator<Item = Result<(String, KeyState), StoreError>> + '_, StoreError> {
        let start = match start {
            Bound::Included(key) => storage_key(collection, key),
            // The smallest storage key greater than `key` is `key` plus a 0 byte.
            Bound::Excluded(key) => {
                let mut k = storage_key(collection, key);
                k.push(0);
                k
            }
            Bound::Unbounded => storage_key(collection, ""),
        };
        let mut end = collection.as_bytes().to_vec();
        end.push(1);
        let range = self.keys.range(start.as_slice()..end.as_slice())?;
        Ok(range.map(|entry| {
            let (k, v) = entry?;
            let (_, key) = split_storage_key(k.value())?;
            Ok((key, unstored(k.value(), v.value(), &self.pages)?.1))
        }))
    }

    /// The names of the collections holding at least one key state, in order: one
    /// seek per collection, not a scan of their documents.
    pub fn collection_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(entry) = self.keys.range(from.as_slice()..)?.next() else {
                return Ok(names);
            };
            let (key, _) = entry?;
            let (collection, _) = split_storage_key(key.value())?;
            // Past every key of this collection: its name, then a byte above 0.
            from = collection.as_bytes().to_vec();
            from.push(1);
            names.push(collection);
        }
    }

    /// Every document of every collection, in storage order.
    pub fn all_keys(
        &self,
    ) -> Result<impl Iterator<Item = Result<(String, String, KeyState), StoreError>> + '_, StoreError>
    {
        self.all_keys_after(None)
    }

    /// Every document after `(collection, key)` (exclusive), in storage order.
    pub fn all_keys_after(
        &self,
        after: Option<(&str, &str)>,
    ) -> Result<impl Iterator<Item = Result<(String, String, KeyState), StoreError>> + '_, StoreError>
    {
        let start = after.map(|(collection, key)| {
            let mut k = storage_key(collection, key);
            k.push(0);
            k
        });
        let range = match &start {
            Some(start) => self.keys.range(start.as_slice()..)?,
            None => self.keys.iter()?,
        };
        Ok(range.map(|entry| {
            let (k, v) = entry?;
            let (collection, key) = split_storage_key(k.value())?;
            Ok((
                collection,
                key,
                unstored(k.value(), v.value(), &self.pages)?.1,
            ))
        }))
    }

    /// Op-log entries with sequence number `from` or later, in order.
    pub fn entries_from(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Entry), StoreError>> + '_, StoreError> {
        Ok(self.oplog.range(from..)?.map(|entry| {
            let (seq, v) = entry?;
            Ok((seq.value(), codec::decode_entry("oplog", v.value())?))
        }))
    }

    /// Op-log entries from the newest back, as `(seq, encoded bytes, entry)`.
    pub fn entries_newest_first(
        &self,
    ) -> Result<impl Iterator<Item = Result<(u64, usize, Entry), StoreError>> + '_, StoreError>
    {
        Ok(self.oplog.iter()?.rev().map(|entry| {
            let (seq, v) = entry?;
            Ok((
                seq.value(),
                v.value().len(),
                codec::decode_entry("oplog", v.value())?,
            ))
        }))
    }

    /// The cursor the replica with node id `peer` acknowledged: every entry of ours
    /// up to it, it has.
    pub fn peer_cursor(&self, peer: u64) -> Result<u64, StoreError> {
        Ok(self.peers.get(peer)?.map_or(0, |v| v.value()))
    }

    /// The conflict record `id`, if the log holds it.
    pub fn conflict(&self, id: ConflictId) -> Result<Option<ConflictRecord>, StoreError> {
        let Some(v) = self.conflicts.get(id.0.as_slice())? else {
            return Ok(None);
        };
        let record = codec::decode_conflict(v.value())?;
        if !codec::conflict_id_matches(&id.0, &record) {
            return Err(StoreError::Corrupted {
                table: "conflicts",
                reason: "id does not match content".into(),
            });
        }
        Ok(Some(record))
    }

    /// Conflict records in id order, starting after `after` (exclusive).
    pub fn conflicts_after(
        &self,
        after: Option<ConflictId>,
    ) -> Result<impl Iterator<Item = Result<ConflictRecord, StoreError>> + '_, StoreError> {
        let start = after.map(|id| {
            let mut k = id.0.to_vec();
            k.push(0);
            k
        });
        let range = match &start {
            Some(start) => self.conflicts.range(start.as_slice()..)?,
            None => self.conflicts.iter()?,
        };
        Ok(range.map(|entry| {
            let (id, v) = entry?;
            let record = codec::decode_conflict(v.value())?;
            if !codec::conflict_id_matches(id.value(), &record) {
                return Err(StoreError::Corrupted {
                    table: "conflicts",
                    reason: "id does not match content".into(),
                });
            }
            Ok(record)
        }))
    }
}
