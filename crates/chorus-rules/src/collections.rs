//! Collection settings, stored as documents of the reserved collection `_collections`.
//!
//! A collection's settings are the JSON document `_collections/{name}` resolved with
//! last-write-wins, so they replicate exactly like documents and concurrent changes
//! resolve the same way everywhere. A collection without such a document uses the
//! defaults (`siblings`).
//!
//! ```json
//! {"policy": "merge", "merge": {"default": "lww", "fields": {"likes": "sum-of-deltas"}}}
//! ```

use crate::custom::Script;
use crate::merge::{FieldRule, MergeRules};
use chorus_core::{KeyState, Policy};
use serde_json::{Map, Value};

/// The reserved collection holding every collection's settings.
pub const SETTINGS_COLLECTION: &str = "_collections";

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CollectionConfig {
    pub policy: Policy,
    /// The field rules of a `merge` collection.
    pub merge: MergeRules,
    /// The Rhai script of a `custom` collection (`fn merge(versions, ancestor)`).
    pub script: Option<String>,
    /// Conflict avoidance: each document's writes go to its home leader (the
    /// policy then only handles what still conflicts, after a failover).
    pub home: Option<Home>,
}

/// How a collection's documents choose their home leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// By a hash of the key.
    Key,
    /// By a hash of this field's value in the written document (the key when the
    /// document lacks it, and for deletes).
    Field(String),
    /// This node, for every document.
    Node(String),
}

impl Home {
    fn from_json(value: &Value) -> Result<Home, String> {
        let usage = "home must be {\"by\": \"key\"}, {\"by\": \"field\", \"field\": NAME} or {\"by\": \"node\", \"node\": NAME}";
        let Value::Object(fields) = value else {
            return Err(usage.into());
        };
        let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
        let home = match fields.get("by").and_then(Value::as_str) {
            Some("key") if fields.len() == 1 => Home::Key,
            Some("field") if fields.len() == 2 => Home::Field(text("field").ok_or(usage)?),
            Some("node") if fields.len() == 2 => Home::Node(text("node").ok_or(usage)?),
            _ => return Err(usage.into()),
        };
        Ok(home)
    }

    fn to_json(&self) -> Value {
        match self {
            Home::Key => serde_json::json!({"by": "key"}),
            Home::Field(field) => serde_json::json!({"by": "field", "field": field}),
            Home::Node(node) => serde_json::json!({"by": "node", "node": node}),
        }
    }
}

impl CollectionConfig {
    /// Parses settings given by a user; unknown fields are an error, not ignored.
    pub fn from_json(bytes: &[u8]) -> Result<CollectionConfig, String> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("settings are not valid JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("settings must be a JSON object such as {\"policy\": \"lww\"}".into());
        };
        let mut config = CollectionConfig::default();
        for (name, value) in fields {
            match (name.as_str(), value) {
                // Shorthand: home routing by key, lww for what still conflicts.
                ("policy", Value::String(p)) if p == "home" => {
                    config.policy = Policy::Lww;
                    config.home.get_or_insert(Home::Key);
                }
                ("policy", Value::String(p)) => {
                    config.policy = Policy::from_name(&p).ok_or_else(|| {
                        format!(
                            "unknown policy {p:?}; use \"siblings\", \"lww\", \"merge\", \"custom\", \"crdt\" or \"home\""
                        )
                    })?;
                }
                ("policy", _) => return Err("policy must be a string".into()),
                ("merge", Value::Object(rules)) => config.merge = merge_rules(rules)?,
                ("merge", _) => {
                    return Err(
                        "merge must be an object such as {\"default\": \"lww\", \"fields\": {\"likes\": \"sum-of-deltas\"}}"
                            .into(),
                    );
                }
                ("script", Value::String(text)) => {
                    Script::compile(&text)?;
                    config.script = Some(text);
                }
                ("script", _) => return Err("script must be a string of Rhai code".into()),
                ("home", value) => config.home = Some(Home::from_json(&value)?),
                (other, _) => {
                    return Err(format!(
                        "unknown setting {other:?}; known: policy, merge, script, home"
                    ));
                }
            }
        }
        if config.script.is_some() && config.policy != Policy::Custom {
            return Err("a script needs \"policy\": \"custom\"".into());
        }
        if config.merge != MergeRules::default() && config.policy != Policy::Merge {
            return Err("merge rules need \"policy\": \"merge\"".into());
        }
        Ok(config)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut fields = Map::new();
        fields.insert("policy".into(), Value::String(self.policy.name().into()));
        if let Some(home) = &self.home {
            fields.insert("home".into(), home.to_json());
        }
        if let Some(script) = &self.script {
            fields.insert("script".into(), Value::String(script.clone()));
        }
        if self.policy == Policy::Merge {
            let rules: Map<String, Value> = self
                .merge
                .fields
                .iter()
                .map(|(f, r)| (f.clone(), Value::String(r.name().into())))
                .collect();
            fields.insert(
                "merge".into(),
                serde_json::json!({"default": self.merge.default.name(), "fields": rules}),
            );
        }
        serde_json::to_vec(&Value::Object(fields)).expect("a map serialises")
    }

    /// The settings a stored `_collections` key state stands for.
    pub fn from_state(state: &KeyState) -> CollectionConfig {
        Policy::Lww
            .winner(state.plain_versions())
            .and_then(|v| v.value.as_deref())
            // Settings were validated before they were written; a value that no longer
            // parses (written by a newer version) falls back to the defaults.
            .and_then(|bytes| CollectionConfig::from_json(bytes).ok())
            .unwrap_or_default()
    }
}

fn merge_rules(given: Map<String, Value>) -> Result<MergeRules, String> {
    let rule = |value: &Value| -> Result<FieldRule, String> {
        value.as_str().and_then(FieldRule::from_name).ok_or_else(|| {
            format!(
                "unknown merge rule {value}; use lww, max, min, sum-of-deltas, union or siblings"
            )
        })
    };
    let mut rules = MergeRules::default();
    for (name, value) in given {
        match (name.as_str(), value) {
            ("default", value) => rules.default = rule(&value)?,
            ("fields", Value::Object(fields)) => {
                for (field, value) in fields {
                    rules.fields.insert(field, rule(&value)?);
                }
            }
            ("fields", _) => return Err("merge.fields must map field names to rules".into()),
            (other, _) => {
                return Err(format!(
                    "unknown merge setting {other:?}; known: default, fields"
                ));
            }
        }
    }
    Ok(rules)
}

/// Whether `name` may be used as a collection name by clients.
pub fn check_collection_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > crate::limits::COLLECTION_NAME_BYTES_MAX {
        return Err(format!(
            "collection name must be 1 to {} bytes",
            crate::limits::COLLECTION_NAME_BYTES_MAX
        ));
    }
    if name.starts_with('_') {
        return Err("collection names starting with '_' are reserved".into());
    }
    // URLs and paths built from a name would resolve these to another place.
    if name == "." || name == ".." {
        return Err("'.' and '..' are not collection names".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err("collection name may contain only letters, digits, '_', '-' and '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings parse strictly and round-trip.
    #[test]
    fn settings_parse_strictly() {
        let lww = CollectionConfig::from_json(br#"{"policy":"lww"}"#).unwrap();
        assert_eq!(lww.policy, Policy::Lww);
        assert_eq!(CollectionConfig::from_json(&lww.to_json()).unwrap(), lww);
        assert_eq!(
            CollectionConfig::from_json(b"{}").unwrap(),
            CollectionConfig::default()
        );
        assert!(
            CollectionConfig::from_json(br#"{"policy":"max"}"#)
                .unwrap_err()
                .contains("unknown policy")
        );
        assert!(
            CollectionConfig::from_json(br#"{"polcy":"lww"}"#)
                .unwrap_err()
                .contains("unknown setting")
        );
        let merge = CollectionConfig::from_json(
            br#"{"policy":"merge","merge":{"default":"max","fields":{"tags":"union"}}}"#,
        )
        .unwrap();
        assert_eq!(merge.policy, Policy::Merge);
        assert_eq!(merge.merge.default, FieldRule::Max);
        assert_eq!(merge.merge.fields["tags"], FieldRule::Union);
        assert_eq!(
            CollectionConfig::from_json(&merge.to_json()).unwrap(),
            merge
        );
        for (bad, needle) in [
            (
                &br#"{"policy":"merge","merge":{"default":"avg"}}"#[..],
                "unknown merge rule",
            ),
            (
                br#"{"policy":"merge","merge":{"fields":[1]}}"#,
                "map field names",
            ),
            (
                br#"{"policy":"merge","merge":{"rules":{}}}"#,
                "unknown merge setting",
            ),
            (br#"{"policy":"lww","merge":{"default":"max"}}"#, "need"),
        ] {
            let err = CollectionConfig::from_json(bad).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        assert!(CollectionConfig::from_json(b"[1]").is_err());
        assert!(CollectionConfig::from_json(b"{").is_err());
    }

    /// Collection names are checked for length, reserved prefix and characters.
    #[test]
    fn collection_names() {
        assert!(check_collection_name("users.v2-x_y").is_ok());
        assert!(check_collection_name("").is_err());
        assert!(check_collection_name("_collections").is_err());
        assert!(check_collection_name(".").is_err());
        assert!(check_collection_name("..").is_err());
        assert!(check_collection_name("...").is_ok());
        assert!(check_collection_name("a/b").is_err());
        assert!(check_collection_name("a\0b").is_err());
        assert!(check_collection_name(&"x".repeat(129)).is_err());
    }
}
