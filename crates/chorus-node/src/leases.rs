//! Lease locks with fencing tokens, for users who prefer to wait rather than merge.
//!
//! A lease on a document is held by one owner until it expires or is released. Each
//! grant carries a **fencing token** that only grows for a document; a write that
//! presents a token is taken only while that token's lease is live, so a holder that
//! paused past its lease (and lost it to another) cannot write with its old token.
//!
//! Leases are documents of the reserved collection `_locks` (key `{collection}/{key}`,
//! value `{"owner", "token", "expires_ms"}`), so they are durable and replicate. The
//! server takes and checks them at the document's home leader (see
//! `chorus-server`'s `home` module), where one node serialises them.
//!
//! **Invariant:** tokens grow: a grant's token is above the last token this node
//! knows for the document and at least the grant's wall-clock milliseconds, so a node
//! that takes over after a failover, without the latest grant, still issues tokens
//! above those granted before (with clocks in step). Like any lease under
//! asynchronous replication, two sides of a partition can each grant one; fencing
//! then refuses the older token wherever the newer lease is known.

use crate::node::{Node, ReadError, Write, WriteError};
use chorus_core::Policy;
use serde_json::{Value, json};

/// The reserved collection holding leases.
pub const LOCKS_COLLECTION: &str = "_locks";
/// Lease lengths accepted, in milliseconds.
pub const LEASE_MS_MAX: u64 = 10 * 60 * 1000;
pub const LEASE_MS_DEFAULT: u64 = 10_000;

/// The last grant of a lease on one document (it may have expired or been released).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub token: u64,
    /// Wall-clock milliseconds; 0 once released.
    pub expires_ms: u64,
}

impl Lease {
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the document is locked by {:?} until {} (fencing token {})", .0.owner, .0.expires_ms, .0.token)]
    Held(Lease),
    #[error("fencing token {presented} is not the live lease's ({})", current.map_or("none".to_string(), |c| c.to_string()))]
    Stale {
        presented: u64,
        current: Option<u64>,
    },
    #[error("the lease must last 1 to {LEASE_MS_MAX} ms")]
    BadLength,
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn lease_key(collection: &str, key: &str) -> String {
    format!("{collection}/{key}")
}

impl Node {
    /// The last grant of a lease on `collection/key` this node knows.
    pub fn lease(&self, collection: &str, key: &str) -> Result<Option<Lease>, ReadError> {
        let state = self
            .snapshot()?
            .key_state(LOCKS_COLLECTION, &lease_key(collection, key))?;
        let Some(value) = Policy::Lww
            .winner(state.versions())
            .and_then(|v| v.value.as_deref())
        else {
            return Ok(None);
        };
        let value: Value = serde_json::from_slice(value).unwrap_or_default();
        Ok(Some(Lease {
            owner: value["owner"].as_str().unwrap_or_default().to_owned(),
            token: value["token"].as_u64().unwrap_or(0),
            expires_ms: value["expires_ms"].as_u64().unwrap_or(0),
        }))
    }

    /// Grants `owner` a lease of `length_ms` on `collection/key` at `now_ms`, unless
    /// another owner holds a live one.
    pub async fn acquire_lease(
        &self,
        collection: &str,
        key: &str,
        owner: &str,
        length_ms: u64,
        now_ms: u64,
    ) -> Result<Lease, LeaseError> {
        if !(1..=LEASE_MS_MAX).contains(&length_ms) {
            return Err(LeaseError::BadLength);
        }
        let _one_at_a_time = self.lease_guard().lock().await;
        let last = self.lease(collection, key)?;
        if let Some(held) = last.as_ref().filter(|l| l.is_live(now_ms)) {
            return Err(LeaseError::Held(held.clone()));
        }
        let token = last.map_or(0, |l| l.token).saturating_add(1).max(now_ms);
        let lease = Lease {
            owner: owner.to_owned(),
            token,
            expires_ms: now_ms.saturating_add(length_ms),
        };
        self.record_lease(collection, key, &lease).await?;
        Ok(lease)
    }

    /// Ends the live lease whose token is `token`.
    pub async fn release_lease(
        &self,
        collection: &str,
        key: &str,
        token: u64,
        now_ms: u64,
    ) -> Result<(), LeaseError> {
        let _one_at_a_time = self.lease_guard().lock().await;
        let lease = self.check_fencing(collection, key, token, now_ms)?;
        let released = Lease {
            expires_ms: 0,
            ..lease
        };
        self.record_lease(collection, key, &released).await?;
        Ok(())
    }

    /// The live lease on `collection/key`, if `token` is its token; a write that
    /// presents any other token is refused.
    pub fn check_fencing(
        &self,
        collection: &str,
        key: &str,
        token: u64,
        now_ms: u64,
    ) -> Result<Lease, LeaseError> {
        let live = self.lease(collection, key)?.filter(|l| l.is_live(now_ms));
        match live {
            Some(lease) if lease.token == token => Ok(lease),
            other => Err(LeaseError::Stale {
                presented: token,
                current: other.map(|l| l.token),
            }),
        }
    }

    async fn record_lease(
        &self,
        collection: &str,
        key: &str,
        lease: &Lease,
    ) -> Result<(), WriteError> {
        let value =
            json!({"owner": lease.owner, "token": lease.token, "expires_ms": lease.expires_ms});
        let write = Write {
            collection: LOCKS_COLLECTION.into(),
            key: Some(lease_key(collection, key)),
            value: Some(value.to_string().into_bytes()),
            context: None,
        };
        self.write_reserved(write).await.map(|_| ())
    }
}
