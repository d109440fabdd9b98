//! Access tokens: who may read, write and administer through the API.
//!
//! A token is `NAME.SECRET`: a name the operator chose and 32 random hex digits. Only
//! the secret's SHA-256 is stored, with the token's rights, as the document
//! `_tokens/NAME` of a reserved collection: tokens replicate like any document, so a
//! client that fails over to another node keeps its rights, and a revocation (the
//! document deleted) reaches every node as writes do.
//!
//! **Invariant:** a token is honoured only while the newest version of its document
//! (last writer wins, as for settings) holds the hash of the secret presented,
//! compared in constant time. A revoked or re-created token stops working wherever
//! the change has arrived.

use crate::node::{Node, ReadError, Write, WriteError};
use chorus_core::Policy;
use chorus_rules::rights::Rights;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The reserved collection holding tokens.
pub const TOKENS_COLLECTION: &str = "_tokens";
/// Longest token name.
pub const TOKEN_NAME_BYTES_MAX: usize = 64;

/// A stored token: its rights, and the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub rights: Rights,
    secret_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token names are 1 to {TOKEN_NAME_BYTES_MAX} letters, digits, '-' or '_'; got {0:?}")]
    BadName(String),
    #[error("{0}")]
    BadRights(String),
    #[error("no token named {0:?}")]
    Unknown(String),
    #[error("cannot draw a token's secret from the system: {0}")]
    Random(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let valid = !name.is_empty()
        && name.len() <= TOKEN_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(TokenError::BadName(name.to_owned()))
    }
}

/// The token a key state of `_tokens` holds: its newest version, unless deleted.
fn token_of(name: &str, state: &chorus_core::KeyState) -> Option<Token> {
    let value = Policy::Lww
        .winner(state.plain_versions())?
        .value
        .as_deref()?;
    let value: Value = serde_json::from_slice(value).ok()?;
    let rights = Rights::parse(value["rights"].as_str()?).ok()?;
    Some(Token {
        name: name.to_owned(),
        rights,
        secret_sha256: value["secret_sha256"].as_str()?.to_owned(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two strings in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Node {
    /// The token named `name`, if it exists (not revoked) as this node knows it.
    pub fn token(&self, name: &str) -> Result<Option<Token>, ReadError> {
        let state = self.snapshot()?.key_state(TOKENS_COLLECTION, name)?;
        Ok(token_of(name, &state))
    }

    /// Every token this node knows, in name order (without secrets).
    pub fn tokens(&self) -> Result<Vec<Token>, ReadError> {
        let snapshot = self.snapshot()?;
        let mut tokens = Vec::new();
        for entry in snapshot.keys_from(TOKENS_COLLECTION, std::ops::Bound::Unbounded)? {
            let (name, state) = entry?;
            tokens.extend(token_of(&name, &state));
        }
        Ok(tokens)
    }

    /// The token that `presented` (`NAME.SECRET`) is, if it is a live token.
    pub fn authenticate(&self, presented: &str) -> Result<Option<Token>, ReadError> {
        let Some((name, secret)) = presented.trim().rsplit_once('.') else {
            return Ok(None);
        };
        if check_name(name).is_err() {
            return Ok(None);
        }
        let hash = hex(&Sha256::digest(secret.as_bytes()));
        Ok(self
            .token(name)?
            .filter(|token| same(&token.secret_sha256, &hash)))
    }

    /// Creates (or replaces, with a new secret) the token `name` with `rights`;
    /// returns the token to give its holder (`NAME.SECRET`), which is not stored.
    pub async fn create_token(&self, name: &str, rights: &str) -> Result<String, TokenError> {
        check_name(name)?;
        let rights = Rights::parse(rights).map_err(TokenError::BadRights)?;
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
        let secret = hex(&secret);
        let value = json!({
            "rights": rights.to_string(),
            "secret_sha256": hex(&Sha256::digest(secret.as_bytes())),
        });
        let write = Write {
            collection: TOKENS_COLLECTION.into(),
            key: Some(name.into()),
            value: Some(value.to_string().into_bytes()),
            context: None,
        };
        self.write_reserved(write).await?;
        Ok(format!("{name}.{secret}"))
    }

    /// Revokes the token `name` (on every node, as the deletion replicates).
    pub async fn revoke_token(&self, name: &str) -> Result<(), TokenError> {
        check_name(name)?;
        if self.token(name)?.is_none() {
            return Err(TokenError::Unknown(name.to_owned()));
        }
        let write = Write {
            collection: TOKENS_COLLECTION.into(),
            key: Some(name.into()),
            value: None,
            context: None,
        };
        self.write_reserved(write).await?;
        Ok(())
    }
}
