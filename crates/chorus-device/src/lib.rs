//! An offline-first device replica: a local store of Chorus documents that an app
//! reads and writes at local latency, online or not, and syncs with any node of a
//! cluster when it can (`docs/devices.md`, design in `docs/design/devices.md`).
//!
//! ```no_run
//! use chorus_device::{Device, Subscription};
//! let device = Device::open("notes.device")?;
//! device.put("notes", "n1", &serde_json::json!({"text": "written offline"}))?;
//! let subscription = Subscription::collections(["notes"]);
//! device.sync(&["http://127.0.0.1:7070".into()], &subscription, &mut |_| {})?;
//! # Ok::<(), chorus_device::DeviceError>(())
//! ```
//!
//! A device is a client of the servers' dots, not a cluster member: each document it
//! holds is the server's read of it (versions with the servers' dots, and the
//! context token to write against), plus at most one write of its own not yet
//! taken by a server (*pending*). Its writes replace what the device shows (the
//! pending write's context is the server read it replaced), so a later local write
//! replaces an earlier pending one in place: values that never left the device are
//! not uploaded.
//!
//! **Invariants:**
//! - every `put`/`delete` is durable (fsync) before it returns, and shows in reads at
//!   once; a pending write leaves only when a server answered that it took it (or
//!   had taken it before), or refused it (then it is kept in [`Device::rejected`]);
//! - a pending write sent to a node that did not answer names that node
//!   (`in_doubt_at`) until a node answers for it, so that no other node takes it
//!   while that node may have (see `chorus_server::devices`).

mod local;
mod ops;
mod sync;

pub use local::{LocalChange, LocalDocument, Rejected};
pub use sync::{Progress, Subscription, SyncReport};

use local::Local;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the device store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the device store failed: {0}")]
    Store(String),
    #[error("the device store is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    #[error("sync: {0}")]
    Sync(#[from] chorus_client::Error),
    #[error("sync: {0}")]
    Protocol(String),
}

impl From<redb::Error> for DeviceError {
    fn from(e: redb::Error) -> DeviceError {
        DeviceError::Store(e.to_string())
    }
}

macro_rules! store_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DeviceError {
            fn from(e: $t) -> DeviceError {
                DeviceError::Store(e.to_string())
            }
        }
    )*};
}
store_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A device replica: one local store file.
pub struct Device {
    local: Local,
}

impl Device {
    /// Opens (or creates) the device store at `path`. A new store draws the
    /// device's id.
    pub fn open(path: impl AsRef<Path>) -> Result<Device, DeviceError> {
        Ok(Device {
            local: Local::open(path.as_ref())?,
        })
    }

    /// The device's id (32 hex digits), the same for the life of its store.
    pub fn id(&self) -> String {
        self.local.id()
    }

    /// The document as this device shows it (its own pending write, if any), or
    /// `None` when it is absent or deleted.
    pub fn get(&self, collection: &str, key: &str) -> Result<Option<LocalDocument>, DeviceError> {
        self.local.get(collection, key)
    }

    /// Writes `value` (a JSON object or any JSON value), replacing what this device
    /// shows of the document. Durable when it returns.
    pub fn put(
        &self,
        collection: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), DeviceError> {
        self.local.write(collection, key, Some(value))
    }

    /// Deletes the document as this device shows it. Durable when it returns.
    pub fn delete(&self, collection: &str, key: &str) -> Result<(), DeviceError> {
        self.local.write(collection, key, None)
    }

    /// CRDT operations on a document of a `crdt` collection, as
    /// `POST /v1/docs/{c}/{key}/ops` takes them (`[{"op": "counter.add", "path":
    /// "/views", "by": 1}]`): shown at once, uploaded as operations made against the
    /// read the device holds, so they merge with what others did meanwhile (a set
    /// remove removes only what this device saw). Durable when it returns. After a
    /// whole-document write not synced yet, they apply to that document instead.
    pub fn update(
        &self,
        collection: &str,
        key: &str,
        operations: &[serde_json::Value],
    ) -> Result<(), DeviceError> {
        self.local.update(collection, key, operations)
    }

    /// Keys of present documents of `collection` starting with `prefix`, in order.
    pub fn list(&self, collection: &str, prefix: &str) -> Result<Vec<String>, DeviceError> {
        self.local.list(collection, prefix)
    }

    /// Documents changed on this device (by its own writes or by syncs) after local
    /// change `after`, each once at its latest change, at most `limit`.
    pub fn changes(&self, after: u64, limit: usize) -> Result<Vec<LocalChange>, DeviceError> {
        self.local.changes(after, limit)
    }

    /// The collections this device holds documents of (or has written), in order.
    pub fn collections(&self) -> Result<Vec<String>, DeviceError> {
        self.local.collections()
    }

    /// How many of this device's writes no server has taken yet.
    pub fn pending(&self) -> Result<usize, DeviceError> {
        self.local.pending_count()
    }

    /// How many of this device's writes a node took that not every member of the
    /// cluster is known to have yet: the device keeps them, to upload again should
    /// that node lose them (restored from an older backup, or replaced).
    pub fn unconfirmed(&self) -> Result<usize, DeviceError> {
        Ok(self.local.taken()?.len())
    }

    /// Writes servers refused (they changed nothing there), with why.
    pub fn rejected(&self) -> Result<Vec<Rejected>, DeviceError> {
        self.local.rejected()
    }

    /// Syncs with the first node of `urls` that answers (then the next, if it stops
    /// answering): uploads pending writes, then downloads what changed in
    /// `subscription` since this device last read that node's feed (everything in it,
    /// on a first contact or when the node's feed is not the one the device read).
    /// `progress` is told after each step. Resumable: an interrupted sync loses
    /// nothing and the next one continues.
    pub fn sync(
        &self,
        urls: &[String],
        subscription: &Subscription,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncReport, DeviceError> {
        sync::sync(
            &self.local,
            urls,
            &sync::Access::default(),
            subscription,
            progress,
        )
    }

    /// Waits, at most `timeout_ms` (capped at a minute), until a node of `urls` has
    /// something new in the subscription's first entry, by a long poll of its change
    /// feed, for a live sync: sync, wait, sync again. Returns at once when the device
    /// has not synced with that node yet.
    pub fn wait_for_changes(
        &self,
        urls: &[String],
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
        subscription: &Subscription,
        timeout_ms: u64,
    ) -> Result<(), DeviceError> {
        let access = sync::Access::new(token, ca_pem);
        sync::wait_for_changes(&self.local, urls, &access, subscription, timeout_ms)
    }

    /// [`Device::sync`] with an access token (`NAME.SECRET`) and, for `https://`
    /// nodes, the CA certificate (PEM) to trust.
    pub fn sync_with(
        &self,
        urls: &[String],
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
        subscription: &Subscription,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncReport, DeviceError> {
        let access = sync::Access::new(token, ca_pem);
        sync::sync(&self.local, urls, &access, subscription, progress)
    }
}
