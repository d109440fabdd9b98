//! Lease locks with fencing tokens, for users who prefer to wait rather than merge.
//!
//! A lease on a document is held by one owner until it expires or is released. Each
//! grant carries a **fencing number** that only grows for a document, and a random
//! **secret** told only to the holder; the holder's token is both (`FENCING.SECRET`).
//! A write that presents a token is taken only while that token's lease is live, so a
//! holder that paused past its lease (and lost it to another) cannot write with its
//! old token, and nobody else can write with a token it pieced together from what it
//! was shown (owner, expiry): the secret is never stored or shown, only its SHA-256.
//!
//! Leases are documents of the reserved collection `_locks` (key `{collection}/{key}`,
//! value `{"owner", "fencing", "secret_sha256", "expires_ms"}`), so they are durable
//! and replicate. The server takes and checks them at the document's home leader (see
//! `chorus-server`'s `home` module), where one node serialises them.
//!
//! **Invariant:** fencing numbers grow: a grant's is above the last this node knows
//! for the document and at least the grant's wall-clock milliseconds, so a node that
//! takes over after a failover, without the latest grant, still issues numbers above
//! those granted before (with clocks in step). Like any lease under
//! asynchronous replication, two sides of a partition can each grant one; fencing
//! then refuses the older token wherever the newer lease is known.

use crate::node::{Node, ReadError, Write, WriteError};
use chorus_core::Policy;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fmt;

/// The reserved collection holding leases.
pub const LOCKS_COLLECTION: &str = "_locks";
/// Lease lengths accepted, in milliseconds.
pub const LEASE_MS_MAX: u64 = 10 * 60 * 1000;
pub const LEASE_MS_DEFAULT: u64 = 10_000;

/// The last grant of a lease on one document (it may have expired or been released).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub fencing: u64,
    /// The SHA-256 of the holder's secret (all zeros for a grant stored before
    /// secrets existed: no token matches it).
    secret_sha256: [u8; 32],
    /// Wall-clock milliseconds; 0 once released.
    pub expires_ms: u64,
}

impl Lease {
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    /// Whether `token` is this grant's: its fencing number, and a secret whose hash
    /// is the one stored (compared in constant time).
    fn granted(&self, token: &LeaseToken) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.secret).into();
        let differing = hash
            .iter()
            .zip(&self.secret_sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        token.fencing == self.fencing && differing == 0
    }
}

/// What the holder of a lease presents with its writes: `FENCING.SECRET` (the
/// secret as 32 hex digits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseToken {
    pub fencing: u64,
    secret: [u8; 16],
}

impl LeaseToken {
    pub fn parse(text: &str) -> Option<LeaseToken> {
        let (fencing, secret) = text.trim().split_once('.')?;
        let mut bytes = [0u8; 16];
        if secret.len() != 32 {
            return None;
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(secret.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(LeaseToken {
            fencing: fencing.parse().ok()?,
            secret: bytes,
        })
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.", self.fencing)?;
        self.secret.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the document is locked by {:?} until {}", .0.owner, .0.expires_ms)]
    Held(Lease),
    #[error("the token (fencing number {presented}) is not the live lease's{}", current.map_or(" (none is live)".to_string(), |c| format!(" (fencing number {c})")))]
    Stale {
        presented: u64,
        current: Option<u64>,
    },
    #[error("cannot draw a lease's secret from the system: {0}")]
    Random(String),
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
            .winner(state.plain_versions())
            .and_then(|v| v.value.as_deref())
        else {
            return Ok(None);
        };
        let value: Value = serde_json::from_slice(value).unwrap_or_default();
        let mut secret_sha256 = [0u8; 32];
        if let Some(hex) = value["secret_sha256"].as_str().filter(|h| h.len() == 64) {
            for (i, byte) in secret_sha256.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
        }
        Ok(Some(Lease {
            owner: value["owner"].as_str().unwrap_or_default().to_owned(),
            // Grants stored before secrets existed named their number "token".
            fencing: value["fencing"]
                .as_u64()
                .or_else(|| value["token"].as_u64())
                .unwrap_or(0),
            secret_sha256,
            expires_ms: value["expires_ms"].as_u64().unwrap_or(0),
        }))
    }

    /// Grants `owner` a lease of `length_ms` on `collection/key` at `now_ms`, unless
    /// another owner holds a live one. The token is for the holder alone: it is not
    /// stored, and cannot be read back.
    pub async fn acquire_lease(
        &self,
        collection: &str,
        key: &str,
        owner: &str,
        length_ms: u64,
        now_ms: u64,
    ) -> Result<(Lease, LeaseToken), LeaseError> {
        if !(1..=LEASE_MS_MAX).contains(&length_ms) {
            return Err(LeaseError::BadLength);
        }
        let _one_at_a_time = self.lease_guard().lock().await;
        let last = self.lease(collection, key)?;
        if let Some(held) = last.as_ref().filter(|l| l.is_live(now_ms)) {
            return Err(LeaseError::Held(held.clone()));
        }
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).map_err(|e| LeaseError::Random(e.to_string()))?;
        let token = LeaseToken {
            fencing: last.map_or(0, |l| l.fencing).saturating_add(1).max(now_ms),
            secret,
        };
        let lease = Lease {
            owner: owner.to_owned(),
            fencing: token.fencing,
            secret_sha256: Sha256::digest(secret).into(),
            expires_ms: now_ms.saturating_add(length_ms),
        };
        self.record_lease(collection, key, &lease).await?;
        Ok((lease, token))
    }

    /// Ends the live lease whose token is `token`.
    pub async fn release_lease(
        &self,
        collection: &str,
        key: &str,
        token: &LeaseToken,
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
        token: &LeaseToken,
        now_ms: u64,
    ) -> Result<Lease, LeaseError> {
        let live = self.lease(collection, key)?.filter(|l| l.is_live(now_ms));
        match live {
            Some(lease) if lease.granted(token) => Ok(lease),
            other => Err(LeaseError::Stale {
                presented: token.fencing,
                current: other.map(|l| l.fencing),
            }),
        }
    }

    async fn record_lease(
        &self,
        collection: &str,
        key: &str,
        lease: &Lease,
    ) -> Result<(), WriteError> {
        let secret_sha256: String = lease
            .secret_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let value = json!({
            "owner": lease.owner,
            "fencing": lease.fencing,
            "secret_sha256": secret_sha256,
            "expires_ms": lease.expires_ms,
        });
        let write = Write {
            collection: LOCKS_COLLECTION.into(),
            key: Some(lease_key(collection, key)),
            value: Some(value.to_string().into_bytes()),
            context: None,
        };
        self.write_reserved(write).await.map(|_| ())
    }
}
