//! Byte strings in records and frames, encoded in one piece.
//!
//! Serde encodes a `Vec<u8>` field as a sequence of single bytes, one call per byte;
//! for a 12 MiB document that dominated replication and storage time. These helpers
//! (`#[serde(with = "...")]`) use serde's byte-string calls instead. In postcard
//! both are `varint(length) ++ bytes`, so stored records and frames are unchanged
//! (the test below holds the two encodings equal).

use serde::de::{Deserializer, Error, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }
    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }
    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }
}

/// A byte string inside another type (a tuple, a list), encoded in one piece; a
/// newtype, so its encoding is the byte string's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob(#[serde(with = "vec")] pub Vec<u8>);

/// `Vec<u8>` as one byte string.
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(ByteBuf)
    }
}

/// `Option<Vec<u8>>` as an optional byte string.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_some(&Borrowed(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Blob>::deserialize(d)?.map(|blob| blob.0))
    }

    struct Borrowed<'a>(&'a [u8]);

    impl Serialize for Borrowed<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        one: Vec<u8>,
        maybe: Option<Vec<u8>>,
        list: Vec<Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Fast {
        #[serde(with = "super::vec")]
        one: Vec<u8>,
        #[serde(with = "super::option")]
        maybe: Option<Vec<u8>>,
        list: Vec<super::Blob>,
    }

    /// The byte-string encoding is the same bytes as the per-byte one, both ways.
    #[test]
    fn same_bytes_as_a_sequence_of_bytes() {
        for (one, maybe) in [
            (vec![], None),
            (vec![0, 255, 7], Some(vec![])),
            ((0..=255).cycle().take(70_000).collect(), Some(vec![1; 300])),
        ] {
            let plain = Plain {
                one: one.clone(),
                maybe: maybe.clone(),
                list: vec![vec![9]],
            };
            let fast = Fast {
                one,
                maybe,
                list: vec![super::Blob(vec![9])],
            };
            let bytes = postcard::to_stdvec(&plain).unwrap();
            assert_eq!(postcard::to_stdvec(&fast).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<Fast>(&bytes).unwrap(), fast);
        }
    }
}
