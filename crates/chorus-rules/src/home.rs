//! Where a document's writes go when its collection has a home: the order of the
//! members each write tries, its home first.
//!
//! **Invariant:** the order depends only on the routing value and the set of member
//! names (rendezvous hashing of the value with each name), never on the order the
//! cluster file lists them in or on the node asking, so every node that knows the
//! same members sends a document's writes to the same home, and fails over to the
//! same next node when the home is down.

use crate::collections::Home;
use sha2::{Digest, Sha256};

impl Home {
    /// The members in the order a document routed by `value` tries them: its home
    /// first. For `Home::Node`, the named node first, then the others by rendezvous.
    pub fn order(&self, members: &[String], value: &str) -> Vec<String> {
        let weight = |member: &str| {
            let mut hasher = Sha256::new();
            for part in [value, member] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
            let digest = hasher.finalize();
            u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
        };
        let mut ordered: Vec<String> = members.to_vec();
        ordered.sort_by_key(|m| (std::cmp::Reverse(weight(m)), m.clone()));
        if let Home::Node(named) = self
            && let Some(at) = ordered.iter().position(|m| m == named)
        {
            let first = ordered.remove(at);
            ordered.insert(0, first);
        }
        ordered
    }

    /// The value a document is routed by: its key, or a field of the written
    /// document (the key when the document lacks it, and for deletes).
    pub fn routing_value(&self, key: &str, document: Option<&[u8]>) -> String {
        match self {
            Home::Field(field) => document
                .and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok())
                .and_then(|d| d.get(field).map(|v| v.to_string()))
                .unwrap_or_else(|| key.to_owned()),
            Home::Key | Home::Node(_) => key.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// The order is the same whatever order the members are listed in, spreads
    /// documents over every member, and puts a named home first.
    #[test]
    fn order_is_deterministic_and_spread() {
        let members = names(&["a", "b", "c"]);
        let reversed = names(&["c", "b", "a"]);
        let mut firsts = std::collections::BTreeMap::new();
        for k in 0..300 {
            let key = format!("k{k}");
            let o = Home::Key.order(&members, &key);
            assert_eq!(o, Home::Key.order(&reversed, &key));
            assert_eq!(o.len(), 3);
            *firsts.entry(o[0].clone()).or_insert(0) += 1;
        }
        assert!(firsts.values().all(|n| *n > 60), "{firsts:?}");
        let named = Home::Node("b".into()).order(&members, "x");
        assert_eq!(named[0], "b");
        let by_field = Home::Field("tenant".into());
        assert_eq!(
            by_field.routing_value("k", Some(br#"{"tenant":"acme"}"#)),
            "\"acme\""
        );
        assert_eq!(by_field.routing_value("k", Some(br#"{"other":1}"#)), "k");
        assert_eq!(by_field.routing_value("k", None), "k");
    }
}
