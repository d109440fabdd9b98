//! Context tokens: the causal context of a read, handed to clients as opaque bytes
//! and given back with a later write.
//!
//! Layout (version 1):
//!
//! ```text
//! [0x01] [n: varint] n × ([node: u64 LE] [counter: varint]) [check: 8 bytes]
//! ```
//!
//! `check` is the first 8 bytes of SHA-256 over a domain tag, the collection, the key
//! and the preceding bytes. A token that was corrupted, truncated, or issued for
//! another key fails the check and is refused, never misapplied. It is not a secret:
//! a client may forge a token, but it can only claim to have seen versions, which is
//! the same power a real read gives.

use crate::{NodeId, VersionVector, varint};
use sha2::{Digest, Sha256};

const TOKEN_FORMAT: u8 = 1;
const CHECK_BYTES: usize = 8;
/// More entries than any real cluster has replicas; bounds decoding work.
const TOKEN_ENTRIES_MAX: u64 = 100_000;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("context token is empty or truncated")]
    Truncated,
    #[error("context token has unknown format {0}")]
    UnknownFormat(u8),
    #[error("context token is corrupt or belongs to another document")]
    CheckFailed,
    #[error("context token is malformed")]
    Malformed,
}

/// Encoding and decoding of context tokens.
pub struct ContextToken;

impl ContextToken {
    pub fn encode(context: &VersionVector, collection: &str, key: &str) -> Vec<u8> {
        let mut out = vec![TOKEN_FORMAT];
        varint::write(&mut out, context.len() as u64);
        for (node, counter) in context.iter() {
            out.extend_from_slice(&node.0.to_le_bytes());
            varint::write(&mut out, counter);
        }
        let check = check(collection, key, &out);
        out.extend_from_slice(&check);
        out
    }

    pub fn decode(bytes: &[u8], collection: &str, key: &str) -> Result<VersionVector, TokenError> {
        if bytes.len() < 1 + CHECK_BYTES {
            return Err(TokenError::Truncated);
        }
        let (body, tail) = bytes.split_at(bytes.len() - CHECK_BYTES);
        if check(collection, key, body) != tail {
            return match body[0] {
                TOKEN_FORMAT => Err(TokenError::CheckFailed),
                other => Err(TokenError::UnknownFormat(other)),
            };
        }
        let mut rest = &body[1..];
        let count = varint::read(&mut rest).ok_or(TokenError::Malformed)?;
        if count > TOKEN_ENTRIES_MAX {
            return Err(TokenError::Malformed);
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (node, after) = rest.split_first_chunk::<8>().ok_or(TokenError::Malformed)?;
            rest = after;
            entries.push((
                NodeId(u64::from_le_bytes(*node)),
                varint::read(&mut rest).ok_or(TokenError::Malformed)?,
            ));
        }
        if !rest.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(VersionVector::from_entries(entries))
    }
}

fn check(collection: &str, key: &str, body: &[u8]) -> [u8; CHECK_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(b"chorus-context-v1\0");
    for part in [collection.as_bytes(), key.as_bytes(), body] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut out = [0; CHECK_BYTES];
    out.copy_from_slice(&hasher.finalize()[..CHECK_BYTES]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any context survives a round trip through a token of its own key.
        #[test]
        fn round_trip(entries in proptest::collection::vec((any::<u64>(), 1..u64::MAX), 0..20)) {
            let vv = VersionVector::from_entries(entries.into_iter().map(|(n, c)| (NodeId(n), c)));
            let token = ContextToken::encode(&vv, "c", "k");
            prop_assert_eq!(ContextToken::decode(&token, "c", "k"), Ok(vv));
        }

        /// Flipping any bit of a token makes it fail to decode.
        #[test]
        fn any_bit_flip_is_refused(bit in 0usize..(8 * 31)) {
            let vv = VersionVector::from_entries([(NodeId(7), 300), (NodeId(9), 1)]);
            let mut token = ContextToken::encode(&vv, "c", "k");
            let bit = bit % (token.len() * 8);
            token[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ContextToken::decode(&token, "c", "k").is_err());
        }
    }

    /// A token is bound to its key, and short input is reported as truncated.
    #[test]
    fn token_of_another_key_is_refused() {
        let vv = VersionVector::from_entries([(NodeId(1), 1)]);
        let token = ContextToken::encode(&vv, "c", "k");
        assert_eq!(
            ContextToken::decode(&token, "c", "other"),
            Err(TokenError::CheckFailed)
        );
        assert_eq!(
            ContextToken::decode(&token[..3], "c", "k"),
            Err(TokenError::Truncated)
        );
    }
}
