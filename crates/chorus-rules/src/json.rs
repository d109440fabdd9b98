//! What Chorus takes as a JSON document: one definition, for the write check and the
//! read path alike.
//!
//! Reads render stored documents with serde_json's `Value` parser, so a write is
//! accepted exactly when that parser can read it back: UTF-8 text, strings without
//! lone surrogates, arrays and objects nested less than 128 deep, numbers within an
//! `f64`'s range. On top of that, an object may not name a field twice: a read would
//! show only the last one, which is not what was written.
//!
//! **Invariant:** `check_document(bytes).is_ok()` implies
//! `serde_json::from_slice::<Value>(bytes).is_ok()` (a property test holds the two
//! together). The check builds no tree: it visits the document once, keeping only the
//! field names of the objects it is inside.
//!
//! Rejected alternative: checking with `serde::de::IgnoredAny`, as the node once did.
//! It skips strings and numbers without decoding them, so invalid UTF-8, `"\ud800"` and
//! `1e99999` passed the door and then read back as `null`.

use serde::Deserializer;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeSet;
use std::fmt;

/// Why a body is not a document Chorus accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document is not valid JSON: {0}")]
pub struct JsonError(String);

/// Checks that `bytes` is one JSON document that reads back as written.
pub fn check_document(bytes: &[u8]) -> Result<(), JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    AnyValue
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| JsonError(e.to_string()))
}

/// Visits any JSON value, decoding every string and number as `Value` would.
struct AnyValue;

impl<'de> DeserializeSeed<'de> for AnyValue {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // `deserialize_any` is where serde_json counts nesting depth and decodes
        // strings (UTF-8, escapes) and numbers (range), as it does for `Value`.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyValue {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(AnyValue)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names = BTreeSet::new();
        while let Some(name) = map.next_key_seed(FieldName)? {
            if !names.insert(name) {
                return Err(A::Error::custom("an object names a field twice"));
            }
            map.next_value_seed(AnyValue)?;
        }
        Ok(())
    }
}

/// An object's field name, decoded (borrowed when it has no escapes).
struct FieldName;

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(name.into())
    }
    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(name.to_owned().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// The bodies an adversarial run got acknowledged and then read back as `null`
    /// are refused; ordinary documents pass.
    #[test]
    fn refuses_what_cannot_be_read_back() {
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let refused: Vec<&[u8]> = vec![
            b"\"\xff\xfe\"",
            br#""\ud800""#,
            br#"{"a": "\udc00x"}"#,
            deep.as_bytes(),
            b"1e99999",
            b"-1e400",
            br#"{"a": 1, "a": 2}"#,
            b"{} {}",
            b"",
            b"nul",
        ];
        for body in refused {
            assert!(
                check_document(body).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(body)
            );
        }
        let shallow = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let accepted: Vec<&[u8]> = vec![
            b"null",
            b"  {\"a\": [1, 2.5, -3e10, true, null, \"\\u00e9\\ud83d\\ude00\"]}  ",
            shallow.as_bytes(),
            br#"{"a": {"a": 1}, "b": {"a": 2}}"#,
            "\"caf\u{e9}\"".as_bytes(),
        ];
        for body in accepted {
            check_document(body).unwrap();
            serde_json::from_slice::<Value>(body).unwrap();
        }
    }

    /// Goal: the door never lets through what the read path cannot parse. Method:
    /// arbitrary bytes and JSON-shaped strings through both.
    fn door_agrees_with_reads(bytes: &[u8]) {
        if check_document(bytes).is_ok() {
            assert!(serde_json::from_slice::<Value>(bytes).is_ok());
        }
    }

    proptest! {
        #[test]
        fn accepted_bytes_read_back(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            door_agrees_with_reads(&bytes);
        }

        #[test]
        fn accepted_json_shapes_read_back(text in r#"[\[\]{}":,0-9eE.+\-a-z\\u ]{0,40}"#) {
            door_agrees_with_reads(text.as_bytes());
        }
    }
}
