//! The device's local store (redb): documents, pending writes, the local change
//! feed, feed cursors per server node, and refused writes.
//!
//! Tables:
//! - `docs`: `COLLECTION \0 KEY` → a [`Record`] (JSON): the server's read as last
//!   downloaded, the pending write(s), and the document's latest local change;
//! - `changes`: local change sequence → `COLLECTION \0 KEY`, one entry per document
//!   (its latest change), so the local feed lists each document once;
//! - `meta`: the device's id and counters, and the cursors (`cursors`);
//! - `rejected`: write seq → a write a server refused, with why;
//! - `taken`: write seq → a write a node took, kept (with its dot, and the node's
//!   name and feed) until every member has it, so that it can go up again if that
//!   node loses it (restored from an older backup, or replaced).
//!
//! **Invariants:** a document's record and its `changes` entry change in the same
//! transaction; a pending write that was sent (`in_doubt_at` not empty) is never
//! replaced in place: a later local write waits beside it (`next`) until a server
//! answers for it, so the value a node may have taken is the one uploaded again.

use crate::DeviceError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use std::path::Path;

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const CHANGES: TableDefinition<u64, &str> = TableDefinition::new("changes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const REJECTED: TableDefinition<u64, &[u8]> = TableDefinition::new("rejected");
const TAKEN: TableDefinition<u64, &[u8]> = TableDefinition::new("taken");

/// A write of this device no server has taken yet.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pending {
    /// The device's number for it (increasing).
    pub seq: u64,
    /// The document, or `None` for a delete. For operations: the document as the
    /// device shows it with them applied.
    pub value: Option<Value>,
    /// CRDT operations to upload instead of the value (empty: a whole document).
    pub ops: Vec<Value>,
    /// The context token of the server read it replaced (`None`: nothing known).
    pub context: Option<String>,
    /// Dots of the device's own earlier writes it replaces (servers gave them).
    pub covers: Vec<String>,
    /// Dots of the server versions it replaced: the others are concurrent to it.
    pub replaced: Vec<String>,
    /// Nodes it was sent to that did not answer.
    pub in_doubt_at: Vec<String>,
}

impl Pending {
    fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "value": self.value,
            "ops": self.ops,
            "context": self.context,
            "covers": self.covers,
            "replaced": self.replaced,
            "in_doubt_at": self.in_doubt_at,
        })
    }

    fn from_json(v: &Value) -> Option<Pending> {
        let strings = |field: &str| -> Vec<String> {
            v[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        Some(Pending {
            seq: v["seq"].as_u64()?,
            value: Some(v["value"].clone()).filter(|v| !v.is_null()),
            ops: v["ops"].as_array().cloned().unwrap_or_default(),
            context: v["context"].as_str().map(str::to_owned),
            covers: strings("covers"),
            replaced: strings("replaced"),
            in_doubt_at: strings("in_doubt_at"),
        })
    }
}

/// What the device holds of one document.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Record {
    /// The server's read (`{"context", "versions", "value"?, "conflict"}`, or
    /// `{"deleted": true, "context"}`), as last downloaded.
    pub server: Option<Value>,
    /// The oldest write not taken yet (the one uploaded first).
    pub pending: Option<Pending>,
    /// A newer local write, waiting while `pending` is in doubt.
    pub next: Option<Pending>,
    /// The document's latest local change.
    pub change: u64,
}

impl Record {
    fn to_bytes(&self) -> Vec<u8> {
        json!({
            "server": self.server,
            "pending": self.pending.as_ref().map(Pending::to_json),
            "next": self.next.as_ref().map(Pending::to_json),
            "change": self.change,
        })
        .to_string()
        .into_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Record, DeviceError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| DeviceError::Corrupt(format!("a document record: {e}")))?;
        Ok(Record {
            server: Some(v["server"].clone()).filter(|s| !s.is_null()),
            pending: Pending::from_json(&v["pending"]),
            next: Pending::from_json(&v["next"]),
            change: v["change"].as_u64().unwrap_or(0),
        })
    }

    /// The write the device shows: the newest of its own.
    fn shown_write(&self) -> Option<&Pending> {
        self.next.as_ref().or(self.pending.as_ref())
    }

    /// Dots of the server versions the record holds.
    fn server_dots(&self) -> Vec<String> {
        server_versions(self.server.as_ref())
            .filter_map(|v| v["dot"].as_str().map(str::to_owned))
            .collect()
    }
}

fn server_versions(server: Option<&Value>) -> impl Iterator<Item = &Value> {
    server
        .and_then(|s| s["versions"].as_array())
        .into_iter()
        .flatten()
}

/// A write a node took, kept until every member has it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Taken {
    pub collection: String,
    pub key: String,
    /// The node that took it, and its feed id then.
    pub node: String,
    pub feed: String,
    /// The dot it got (`NODE:COUNTER`).
    pub dot: String,
    pub write: Pending,
}

impl Taken {
    fn to_bytes(&self) -> Vec<u8> {
        json!({
            "collection": self.collection,
            "key": self.key,
            "node": self.node,
            "feed": self.feed,
            "dot": self.dot,
            "write": self.write.to_json(),
        })
        .to_string()
        .into_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Taken, DeviceError> {
        let corrupt = || DeviceError::Corrupt("a taken write".into());
        let v: Value = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
        let text = |f: &str| v[f].as_str().map(str::to_owned).ok_or_else(corrupt);
        Ok(Taken {
            collection: text("collection")?,
            key: text("key")?,
            node: text("node")?,
            feed: text("feed")?,
            dot: text("dot")?,
            write: Pending::from_json(&v["write"]).ok_or_else(corrupt)?,
        })
    }
}

/// A document as the device shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalDocument {
    pub collection: String,
    pub key: String,
    /// The device's own unsynced write if it has one, else the value the collection's
    /// policy shows; `None` when versions conflict with no value chosen.
    pub value: Option<Value>,
    /// Every version shown (the device's own write first): more than one is a
    /// conflict, to resolve by writing.
    pub versions: Vec<Value>,
    pub conflict: bool,
    /// The device wrote it and no server has taken the write yet.
    pub pending: bool,
}

/// One entry of the device's local change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalChange {
    pub seq: u64,
    pub collection: String,
    pub key: String,
}

/// A write a server refused: it changed nothing there.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub collection: String,
    pub key: String,
    pub value: Option<Value>,
    pub error: String,
    pub message: String,
}

pub(crate) fn doc_id(collection: &str, key: &str) -> String {
    format!("{collection}\0{key}")
}

fn split_id(id: &str) -> (String, String) {
    let (c, k) = id.split_once('\0').unwrap_or((id, ""));
    (c.to_owned(), k.to_owned())
}

pub(crate) struct Local {
    db: Database,
    id: String,
}

/// A write transaction of the local store.
pub(crate) struct Txn(redb::WriteTransaction);

impl Local {
    pub fn open(path: &Path) -> Result<Local, DeviceError> {
        let open_error = |reason: String| DeviceError::Open {
            path: path.display().to_string(),
            reason,
        };
        let db = Database::create(path).map_err(|e| open_error(e.to_string()))?;
        let txn = Txn(db.begin_write()?);
        let id = match txn.meta("device")? {
            Some(meta) => meta["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| DeviceError::Corrupt("the device record has no id".into()))?,
            None => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| open_error(e.to_string()))?;
                let id = format!("{:032x}", u128::from_le_bytes(bytes));
                txn.set_meta(
                    "device",
                    &json!({"id": id, "next_seq": 1, "next_change": 1}),
                )?;
                id
            }
        };
        {
            // Every table exists from the start, so reads never meet a missing one.
            let w = &txn.0;
            w.open_table(DOCS)?;
            w.open_table(CHANGES)?;
            w.open_table(REJECTED)?;
            w.open_table(TAKEN)?;
        }
        txn.commit()?;
        Ok(Local { db, id })
    }

    pub fn id(&self) -> String {
        self.id.clone()
    }

    pub fn begin(&self) -> Result<Txn, DeviceError> {
        Ok(Txn(self.db.begin_write()?))
    }

    fn read_record(&self, collection: &str, key: &str) -> Result<Option<Record>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(DOCS)?;
        let value = table.get(doc_id(collection, key).as_str())?;
        value.map(|v| Record::from_bytes(v.value())).transpose()
    }

    pub fn get(&self, collection: &str, key: &str) -> Result<Option<LocalDocument>, DeviceError> {
        Ok(self
            .read_record(collection, key)?
            .and_then(|record| shown(collection, key, &record)))
    }

    pub fn write(
        &self,
        collection: &str,
        key: &str,
        value: Option<&Value>,
    ) -> Result<(), DeviceError> {
        self.change(collection, key, |_| Ok((value.cloned(), Vec::new())))
    }

    /// Records CRDT operations on a document: shown at once (applied to what the
    /// device shows), uploaded as operations. Operations after others not sent yet
    /// join them, so they go up as one write.
    pub fn update(&self, collection: &str, key: &str, ops: &[Value]) -> Result<(), DeviceError> {
        if ops.is_empty() {
            return Err(DeviceError::Invalid("give at least one operation".into()));
        }
        self.change(collection, key, |record| {
            let shown = shown(collection, key, record).and_then(|d| d.value);
            let mut value = shown.unwrap_or_else(|| json!({}));
            for op in ops {
                crate::ops::apply(&mut value, op).map_err(DeviceError::Invalid)?;
            }
            match record.shown_write() {
                // Not sent yet: the operations join it. A whole document not sent
                // yet stays one, with the operations applied to it.
                Some(unsent) if unsent.in_doubt_at.is_empty() => {
                    if unsent.ops.is_empty() {
                        return Ok((Some(value), Vec::new()));
                    }
                    let mut all = unsent.ops.clone();
                    all.extend_from_slice(ops);
                    Ok((Some(value), all))
                }
                _ => Ok((Some(value), ops.to_vec())),
            }
        })
    }

    /// Records a local write of the document: `make` gives its value and operations
    /// from the record as it stands.
    fn change(
        &self,
        collection: &str,
        key: &str,
        make: impl FnOnce(&Record) -> Result<(Option<Value>, Vec<Value>), DeviceError>,
    ) -> Result<(), DeviceError> {
        if collection.is_empty() || key.is_empty() {
            return Err(DeviceError::Invalid(
                "collection and key must not be empty".into(),
            ));
        }
        let txn = self.begin()?;
        let mut record = txn.record(collection, key)?.unwrap_or_default();
        let (value, ops) = make(&record)?;
        let seq = txn.next_counter("next_seq")?;
        // The write replaces what the device shows: the server read it holds (all of
        // it: its own write's context too), and its own earlier write, which is
        // replaced in place unless it was sent.
        let earlier = record.shown_write();
        let context = record
            .server
            .as_ref()
            .and_then(|s| s["context"].as_str())
            .map(str::to_owned)
            .or_else(|| earlier.and_then(|e| e.context.clone()));
        let covers = earlier.map(|e| e.covers.clone()).unwrap_or_default();
        let mut replaced = record.server_dots();
        replaced.extend(earlier.into_iter().flat_map(|e| e.replaced.iter().cloned()));
        replaced.sort();
        replaced.dedup();
        let write = Pending {
            seq,
            value,
            ops,
            context,
            covers,
            replaced,
            in_doubt_at: Vec::new(),
        };
        match &record.pending {
            Some(sent) if !sent.in_doubt_at.is_empty() => record.next = Some(write),
            _ => record.pending = Some(write),
        }
        txn.put_record(collection, key, &mut record)?;
        txn.commit()
    }

    /// Keys of the documents the device shows (present) in `collection` starting
    /// with `prefix`.
    pub fn list(&self, collection: &str, prefix: &str) -> Result<Vec<String>, DeviceError> {
        Ok(self
            .records(collection, prefix)?
            .into_iter()
            .filter(|(key, record)| shown(collection, key, record).is_some())
            .map(|(key, _)| key)
            .collect())
    }

    /// The records held in `collection` whose key starts with `prefix`, in key order.
    pub fn records(
        &self,
        collection: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Record)>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(DOCS)?;
        let start = doc_id(collection, prefix);
        let mut records = Vec::new();
        for entry in table.range(start.as_str()..)? {
            let (id, value) = entry?;
            let (c, k) = split_id(id.value());
            if c != collection || !k.starts_with(prefix) {
                break;
            }
            records.push((k, Record::from_bytes(value.value())?));
        }
        Ok(records)
    }

    pub fn changes(&self, after: u64, limit: usize) -> Result<Vec<LocalChange>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(CHANGES)?;
        let mut changes = Vec::new();
        for entry in table.range(after + 1..)?.take(limit) {
            let (seq, id) = entry?;
            let (collection, key) = split_id(id.value());
            changes.push(LocalChange {
                seq: seq.value(),
                collection,
                key,
            });
        }
        Ok(changes)
    }

    /// The collections the device holds documents of, in order.
    pub fn collections(&self) -> Result<Vec<String>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(DOCS)?;
        let mut names: Vec<String> = Vec::new();
        for entry in table.iter()? {
            let (collection, _) = split_id(entry?.0.value());
            if names.last() != Some(&collection) {
                names.push(collection);
            }
        }
        Ok(names)
    }

    /// Every record with a write to upload, by collection, in seq order.
    pub fn pending_records(&self) -> Result<Vec<(String, String, Record)>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(DOCS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, value) = entry?;
            let record = Record::from_bytes(value.value())?;
            if record.pending.is_some() || record.next.is_some() {
                let (c, k) = split_id(id.value());
                out.push((c, k, record));
            }
        }
        Ok(out)
    }

    pub fn pending_count(&self) -> Result<usize, DeviceError> {
        Ok(self
            .pending_records()?
            .iter()
            .map(|(_, _, r)| usize::from(r.pending.is_some()) + usize::from(r.next.is_some()))
            .sum())
    }

    pub fn rejected(&self) -> Result<Vec<Rejected>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(REJECTED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            let v: Value = serde_json::from_slice(value.value())
                .map_err(|e| DeviceError::Corrupt(format!("a rejected write: {e}")))?;
            let text = |f: &str| v[f].as_str().unwrap_or_default().to_owned();
            out.push(Rejected {
                collection: text("collection"),
                key: text("key"),
                value: Some(v["value"].clone()).filter(|v| !v.is_null()),
                error: text("error"),
                message: text("message"),
            });
        }
        Ok(out)
    }

    /// Writes nodes took that not every member is known to have yet.
    pub fn taken(&self) -> Result<Vec<Taken>, DeviceError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(TAKEN)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(Taken::from_bytes(entry?.1.value())?);
        }
        Ok(out)
    }

    pub fn meta(&self, name: &str) -> Result<Option<Value>, DeviceError> {
        read_meta(&self.db.begin_read()?.open_table(META)?, name)
    }
}

/// A `meta` record, decoded.
fn read_meta(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Value>, DeviceError> {
    let value = table.get(name)?;
    value
        .map(|v| {
            serde_json::from_slice(v.value())
                .map_err(|e| DeviceError::Corrupt(format!("meta {name}: {e}")))
        })
        .transpose()
}

/// The document as the device shows `record`, `None` when absent or deleted.
fn shown(collection: &str, key: &str, record: &Record) -> Option<LocalDocument> {
    let server = record.server.as_ref();
    let document = |value: Option<Value>, versions: Vec<Value>, conflict, pending| {
        Some(LocalDocument {
            collection: collection.to_owned(),
            key: key.to_owned(),
            value,
            versions,
            conflict,
            pending,
        })
    };
    match record.shown_write() {
        Some(own) => {
            let beside: Vec<Value> = server_versions(server)
                .filter(|v| {
                    let dot = v["dot"].as_str().unwrap_or_default();
                    !own.replaced.iter().any(|r| r == dot) && !v["value"].is_null()
                })
                .map(|v| v["value"].clone())
                .collect();
            let own_value = own.value.clone()?;
            if !own.ops.is_empty() {
                // Operations merge with the server's document: one version.
                return document(Some(own_value.clone()), vec![own_value], false, true);
            }
            let conflict = !beside.is_empty();
            let mut versions = vec![own_value.clone()];
            versions.extend(beside);
            document(Some(own_value), versions, conflict, true)
        }
        None => {
            let server = server.filter(|s| s["deleted"] != true)?;
            let versions: Vec<Value> = server_versions(Some(server))
                .filter(|v| !v["value"].is_null())
                .map(|v| v["value"].clone())
                .collect();
            if versions.is_empty() {
                return None;
            }
            let value = Some(server["value"].clone()).filter(|v| !v.is_null());
            document(value, versions, server["conflict"] == true, false)
        }
    }
}

impl Txn {
    pub fn meta(&self, name: &str) -> Result<Option<Value>, DeviceError> {
        read_meta(&self.0.open_table(META)?, name)
    }

    pub fn set_meta(&self, name: &str, value: &Value) -> Result<(), DeviceError> {
        let mut table = self.0.open_table(META)?;
        table.insert(name, value.to_string().as_bytes())?;
        Ok(())
    }

    /// Takes the next value of one of the device's counters.
    fn next_counter(&self, counter: &str) -> Result<u64, DeviceError> {
        let mut device = self
            .meta("device")?
            .ok_or_else(|| DeviceError::Corrupt("no device record".into()))?;
        let next = device[counter].as_u64().unwrap_or(1);
        device[counter] = json!(next + 1);
        self.set_meta("device", &device)?;
        Ok(next)
    }

    pub fn record(&self, collection: &str, key: &str) -> Result<Option<Record>, DeviceError> {
        let table = self.0.open_table(DOCS)?;
        let value = table.get(doc_id(collection, key).as_str())?;
        value.map(|v| Record::from_bytes(v.value())).transpose()
    }

    /// Stores `record` as the document's latest local change.
    pub fn put_record(
        &self,
        collection: &str,
        key: &str,
        record: &mut Record,
    ) -> Result<(), DeviceError> {
        let id = doc_id(collection, key);
        let change = self.next_counter("next_change")?;
        let mut changes = self.0.open_table(CHANGES)?;
        if record.change != 0 {
            changes.remove(record.change)?;
        }
        changes.insert(change, id.as_str())?;
        record.change = change;
        let mut docs = self.0.open_table(DOCS)?;
        docs.insert(id.as_str(), record.to_bytes().as_slice())?;
        Ok(())
    }

    /// Forgets a document (its server copy is gone and nothing of it is pending).
    pub fn remove_record(&self, collection: &str, key: &str) -> Result<(), DeviceError> {
        let id = doc_id(collection, key);
        let mut docs = self.0.open_table(DOCS)?;
        let old = docs.remove(id.as_str())?.map(|v| v.value().to_vec());
        if let Some(old) = old {
            let record = Record::from_bytes(&old)?;
            let mut changes = self.0.open_table(CHANGES)?;
            changes.remove(record.change)?;
        }
        Ok(())
    }

    pub fn reject(
        &self,
        collection: &str,
        key: &str,
        write: &Pending,
        error: &str,
        message: &str,
    ) -> Result<(), DeviceError> {
        let mut table = self.0.open_table(REJECTED)?;
        let value = json!({
            "collection": collection,
            "key": key,
            "value": write.value,
            "error": error,
            "message": message,
        });
        table.insert(write.seq, value.to_string().as_bytes())?;
        Ok(())
    }

    pub fn remember_taken(&self, taken: &Taken) -> Result<(), DeviceError> {
        let mut table = self.0.open_table(TAKEN)?;
        table.insert(taken.write.seq, taken.to_bytes().as_slice())?;
        Ok(())
    }

    pub fn forget_taken(&self, seq: u64) -> Result<(), DeviceError> {
        self.0.open_table(TAKEN)?.remove(seq)?;
        Ok(())
    }

    /// Queues `write` again as the document's pending write, with a new seq, unless
    /// the device wrote the document since (that write replaces it). Answers whether
    /// it was queued.
    pub fn requeue(
        &self,
        collection: &str,
        key: &str,
        write: &Pending,
    ) -> Result<bool, DeviceError> {
        let mut record = self.record(collection, key)?.unwrap_or_default();
        if record.pending.is_some() || record.next.is_some() {
            return Ok(false);
        }
        record.pending = Some(Pending {
            seq: self.next_counter("next_seq")?,
            in_doubt_at: Vec::new(),
            ..write.clone()
        });
        self.put_record(collection, key, &mut record)?;
        Ok(true)
    }

    pub fn commit(self) -> Result<(), DeviceError> {
        self.0.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_read(dot: &str, value: Value) -> Value {
        json!({"context": "ctx", "conflict": false, "value": value,
               "versions": [{"dot": dot, "value": value}]})
    }

    #[test]
    fn own_writes_show_at_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.device");
        let id = {
            let local = Local::open(&path).unwrap();
            local.write("notes", "n1", Some(&json!({"t": 1}))).unwrap();
            local.write("notes", "n2", Some(&json!({"t": 2}))).unwrap();
            local.write("notes", "n2", None).unwrap();
            let n1 = local.get("notes", "n1").unwrap().unwrap();
            assert_eq!(n1.value, Some(json!({"t": 1})));
            assert!(n1.pending);
            assert_eq!(local.get("notes", "n2").unwrap(), None, "deleted");
            local.id()
        };
        let local = Local::open(&path).unwrap();
        assert_eq!(local.id(), id, "the id is the store's");
        assert_eq!(local.list("notes", "").unwrap(), ["n1"]);
        assert_eq!(
            local.pending_count().unwrap(),
            2,
            "n2's write replaced in place"
        );
        let changes = local.changes(0, 10).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            ["n1", "n2"],
            "each document once, at its latest change"
        );
    }

    #[test]
    fn a_write_replaces_what_the_device_shows_and_keeps_concurrent_versions_beside() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(&dir.path().join("d.device")).unwrap();
        let txn = local.begin().unwrap();
        let mut record = Record {
            server: Some(server_read("a:1", json!({"v": "server"}))),
            ..Record::default()
        };
        txn.put_record("c", "k", &mut record).unwrap();
        txn.commit().unwrap();
        local.write("c", "k", Some(&json!({"v": "mine"}))).unwrap();
        let shown = local.get("c", "k").unwrap().unwrap();
        assert_eq!(shown.versions, [json!({"v": "mine"})], "a:1 was replaced");

        // A concurrent server version arrives before the upload: both show.
        let txn = local.begin().unwrap();
        let mut record = txn.record("c", "k").unwrap().unwrap();
        record.server = Some(json!({"context": "ctx2", "conflict": true, "versions": [
            {"dot": "a:1", "value": {"v": "server"}},
            {"dot": "b:1", "value": {"v": "theirs"}},
        ]}));
        txn.put_record("c", "k", &mut record).unwrap();
        txn.commit().unwrap();
        let shown = local.get("c", "k").unwrap().unwrap();
        assert!(shown.conflict);
        assert_eq!(shown.value, Some(json!({"v": "mine"})));
        assert_eq!(
            shown.versions,
            [json!({"v": "mine"}), json!({"v": "theirs"})]
        );
        let pending = &local.pending_records().unwrap()[0].2;
        assert_eq!(
            pending.pending.as_ref().unwrap().context.as_deref(),
            Some("ctx"),
            "the context of the read it replaced"
        );
    }

    #[test]
    fn a_write_beside_a_sent_one_waits_instead_of_replacing_it() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(&dir.path().join("d.device")).unwrap();
        local.write("c", "k", Some(&json!(1))).unwrap();
        let txn = local.begin().unwrap();
        let mut record = txn.record("c", "k").unwrap().unwrap();
        record.pending.as_mut().unwrap().in_doubt_at = vec!["a".into()];
        txn.put_record("c", "k", &mut record).unwrap();
        txn.commit().unwrap();
        local.write("c", "k", Some(&json!(2))).unwrap();
        local.write("c", "k", Some(&json!(3))).unwrap();
        let record = local.read_record("c", "k").unwrap().unwrap();
        assert_eq!(
            record.pending.unwrap().value,
            Some(json!(1)),
            "what a may hold"
        );
        assert_eq!(record.next.unwrap().value, Some(json!(3)));
        assert_eq!(local.get("c", "k").unwrap().unwrap().value, Some(json!(3)));
    }
}
