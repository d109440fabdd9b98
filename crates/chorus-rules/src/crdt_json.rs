//! CRDT documents in JSON: reads render a document as plain JSON, and the HTTP API's
//! operations (`[{"op": "counter.add", "path": "/likes", "by": 1}]`) parse into
//! [`Operation`]s.
//!
//! Rendering: a counter or bounded counter is a number, a set an array of its
//! elements (in byte order of their JSON text), an LWW register its value, a
//! multi-value register an array of its concurrent values (usually one), an enabled
//! flag `true` (a disabled flag is absent), a text a string, a list an array of its
//! elements, a map an object (a removed text or list that still holds items for
//! concurrent edits shows nothing, nor does a map of only such). When leaders
//! concurrently created one name with different types, the name shows
//! `{"$types": {"counter": 3, "set": ["x"]}}`, each kind's data kept.
//!
//! Set elements and register values are stored as canonical JSON text (objects with
//! sorted keys, as `serde_json` writes them), so `{"a":1,"b":2}` added on one leader
//! and `{"b":2,"a":1}` removed on another are the same element.

use crate::limits::WRITE_OPERATIONS_MAX;
use chorus_core::NodeId;
use chorus_core::crdt::{self, Action, Field, Operation, Update};
use chorus_text::{Content, Id, Op as SequenceOp};
use serde_json::{Map as JsonMap, Value, json};

/// The JSON a read shows of a stored CRDT state. Stored states were checked when
/// written, so this only fails on corrupt data (shown as `null`, and logged).
pub fn render_state(value: &[u8]) -> Value {
    match crdt::decode_state(value) {
        Ok(doc) => render(&doc),
        Err(error) => {
            tracing::error!(%error, "stored CRDT document does not decode");
            Value::Null
        }
    }
}

pub fn render(doc: &crdt::Map) -> Value {
    let mut object = JsonMap::new();
    let mut fields = doc.fields().filter(|(_, _, f)| f.is_shown()).peekable();
    while let Some((name, kind, field)) = fields.next() {
        let mut kinds = vec![(kind, render_field(field))];
        while let Some((_, kind, field)) = fields.next_if(|(next, _, _)| *next == name) {
            kinds.push((kind, render_field(field)));
        }
        let value = match kinds.len() {
            1 => kinds.pop().expect("one").1,
            _ => {
                let by_kind: JsonMap<String, Value> = kinds
                    .into_iter()
                    .map(|(k, v)| (k.name().to_owned(), v))
                    .collect();
                json!({ "$types": by_kind })
            }
        };
        object.insert(name.to_owned(), value);
    }
    Value::Object(object)
}

/// A counter's value as JSON, never rounded: a number from `i64::MIN` to
/// `u64::MAX`, and past that (only concurrent adds on several nodes get there) a
/// string of its decimal digits.
fn exact_integer(value: i128) -> Value {
    if let Ok(small) = i64::try_from(value) {
        json!(small)
    } else if let Ok(large) = u64::try_from(value) {
        json!(large)
    } else {
        json!(value.to_string())
    }
}

fn render_field(field: &Field) -> Value {
    match field {
        Field::Counter(d) => exact_integer(Field::counter_value(d)),
        Field::Bounded(b) => exact_integer(b.value() as i128),
        Field::Set(elements) => elements.keys().map(|e| element(e)).collect(),
        Field::MvRegister(d) => d.iter().map(|(_, v)| element(v)).collect(),
        Field::LwwRegister(d) => Field::lww_value(d).map_or(Value::Null, element),
        Field::Flag(_) => Value::Bool(true),
        Field::Map(map) => render(map),
        Field::Text(t) => Value::String(t.items().content()),
        Field::List(l) => l
            .items()
            .content()
            .iter()
            .map(|e| element(e.as_bytes()))
            .collect(),
    }
}

/// The JSON the change feed shows of a CRDT delta: one object per change, with
/// the path, the action and its value (a counter change carries the writer's new
/// total, a bounded counter change the writer's totals).
pub fn render_delta(value: &[u8]) -> Value {
    let Ok(delta) = crdt::decode_delta(value) else {
        tracing::error!("logged CRDT delta does not decode");
        return Value::Null;
    };
    delta
        .changes
        .iter()
        .map(|change| {
            let (action, value) = match &change.action {
                Action::CounterTotal(total) => ("counter.total", json!(total)),
                Action::BoundedEntry(rights) => (
                    "bounded.rights",
                    json!({"added": rights.added, "spent": rights.spent,
                           "sent": rights.sent.values().sum::<u64>()}),
                ),
                Action::SetAdd(v) => ("set.add", element(v)),
                Action::SetRemove(v) => ("set.remove", element(v)),
                Action::MvSet(v) => ("mvreg.set", element(v)),
                Action::LwwSet(v) => ("lwwreg.set", element(v)),
                Action::FlagEnable => ("flag.enable", Value::Null),
                Action::FlagDisable => ("flag.disable", Value::Null),
                Action::Remove => ("map.remove", Value::Null),
                Action::Text(ops) => ("text.ops", sequence_ops(ops, |text| json!(text))),
                Action::List(ops) => (
                    "list.ops",
                    sequence_ops(ops, |elements| {
                        elements.iter().map(|e| element(e.as_bytes())).collect()
                    }),
                ),
            };
            json!({"path": crdt::path_text(&change.path), "action": action, "value": value})
        })
        .collect()
}

/// Text and list operations as the feed and live subscriptions show them: an insert
/// `{"insert": CONTENT, "id", "left", "right"}` (a string of characters, or an array
/// of elements, the first item's id and its neighbours' when inserted, `null` at an
/// end), a delete `{"delete": COUNT, "id", "by"}`. Ids are `"NODE:SEQ"`, the node
/// in hexadecimal as everywhere.
pub fn sequence_ops<C: Content>(ops: &[SequenceOp<C>], items: impl Fn(&C) -> Value) -> Value {
    let id = |id: Id| json!(format!("{}:{}", NodeId(id.agent), id.seq));
    let origin = |origin: Option<Id>| origin.map_or(Value::Null, id);
    ops.iter()
        .map(|op| match op {
            SequenceOp::Insert {
                id: first,
                origin_left,
                origin_right,
                content,
            } => json!({"insert": items(content), "id": id(*first),
                        "left": origin(*origin_left), "right": origin(*origin_right)}),
            SequenceOp::Delete { id: first, len, by } => {
                json!({"delete": len, "id": id(*first), "by": id(*by)})
            }
        })
        .collect()
}

fn element(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// Parses the body of `POST /v1/docs/{c}/{key}/ops`. `node_named` resolves the
/// `to` of a `bounded.transfer` (a node name).
pub fn parse_operations(
    body: &[u8],
    node_named: impl Fn(&str) -> Option<NodeId>,
) -> Result<Vec<Operation>, String> {
    let list: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| format!("operations must be a JSON array of objects: {e}"))?;
    if list.is_empty() || list.len() > WRITE_OPERATIONS_MAX {
        return Err(format!(
            "give 1 to {WRITE_OPERATIONS_MAX} operations, not {}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, op)| parse_operation(op, &node_named).map_err(|e| format!("operation {i}: {e}")))
        .collect()
}

const NAMES: &str = "counter.add, bounded.add, bounded.transfer, set.add, set.remove, \
                     mvreg.set, lwwreg.set, flag.enable, flag.disable, map.remove, \
                     text.insert, text.delete, list.insert, list.delete";

fn parse_operation(
    op: &Value,
    node_named: &impl Fn(&str) -> Option<NodeId>,
) -> Result<Operation, String> {
    let object = op.as_object().ok_or("each operation is a JSON object")?;
    let known = ["op", "path", "by", "value", "to", "pos", "len", "text"];
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown member {unknown:?} (known: {})",
            known.join(", ")
        ));
    }
    let name = object
        .get("op")
        .and_then(Value::as_str)
        .ok_or(format!("\"op\" names the operation: one of {NAMES}"))?;
    let path =
        parse_path(object.get("path").and_then(Value::as_str).ok_or(
            "\"path\" names the field, as a JSON pointer such as \"/likes\" or \"/a/b\"",
        )?)?;
    let by = || {
        object
            .get("by")
            .and_then(Value::as_i64)
            .ok_or(format!("{name} needs \"by\", an integer"))
    };
    let count = |member: &str| {
        object.get(member).and_then(Value::as_u64).ok_or(format!(
            "{name} needs \"{member}\", a count of {} from 0",
            if name.starts_with("text") {
                "characters (Unicode code points)"
            } else {
                "elements"
            }
        ))
    };
    let value = || {
        object
            .get("value")
            .map(|v| serde_json::to_vec(v).expect("a Value serializes"))
            .ok_or(format!("{name} needs \"value\", any JSON value"))
    };
    let update = match name {
        "counter.add" => Update::CounterAdd(by()?),
        "bounded.add" => Update::BoundedAdd(by()?),
        "bounded.transfer" => {
            let to = object
                .get("to")
                .and_then(Value::as_str)
                .ok_or("bounded.transfer needs \"to\", the name of the receiving node")?;
            let to = node_named(to).ok_or(format!(
                "no node named {to:?} is known here (name a member of the cluster)"
            ))?;
            let by = u64::try_from(by()?).map_err(|_| "bounded.transfer needs \"by\" >= 0")?;
            Update::BoundedTransfer { to, by }
        }
        "set.add" => Update::SetAdd(value()?),
        "set.remove" => Update::SetRemove(value()?),
        "mvreg.set" => Update::MvSet(value()?),
        "lwwreg.set" => Update::LwwSet(value()?),
        "flag.enable" => Update::FlagEnable,
        "flag.disable" => Update::FlagDisable,
        "map.remove" => Update::Remove,
        "text.insert" => Update::TextInsert {
            pos: count("pos")?,
            text: object
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or("text.insert needs \"text\", a non-empty string")?
                .to_owned(),
        },
        "text.delete" => Update::TextDelete {
            pos: count("pos")?,
            len: count("len")?,
        },
        "list.insert" => Update::ListInsert {
            pos: count("pos")?,
            value: value()?,
        },
        "list.delete" => Update::ListDelete {
            pos: count("pos")?,
            len: count("len")?,
        },
        other => return Err(format!("unknown op {other:?}: one of {NAMES}")),
    };
    Ok(Operation { path, update })
}

/// A JSON pointer (`/a/b`, with `~1` for `/` and `~0` for `~` in names) as names.
fn parse_path(pointer: &str) -> Result<Vec<String>, String> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("path {pointer:?} must start with \"/\""));
    };
    let names = rest
        .split('/')
        .map(unescape_name)
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| {
            format!(
                "path {pointer:?} has a \"~\" not followed by 0 or 1 (write ~0 for ~, ~1 for /)"
            )
        })?;
    if names.iter().any(String::is_empty) || names.len() > crdt::PATH_DEPTH_MAX {
        return Err(format!(
            "path {pointer:?} needs 1 to {} non-empty names",
            crdt::PATH_DEPTH_MAX
        ));
    }
    Ok(names)
}

/// One name of a JSON pointer with its escapes undone (RFC 6901: `~0` is `~`, `~1`
/// is `/`, any other `~` is an error).
fn unescape_name(escaped: &str) -> Option<String> {
    let mut name = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        name.push(match (c, c == '~') {
            (_, false) => c,
            (_, true) => match chars.next()? {
                '0' => '~',
                '1' => '/',
                _ => return None,
            },
        });
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{Dot, Hlc, VersionVector};

    fn ops(body: &str) -> Result<Vec<Operation>, String> {
        parse_operations(body.as_bytes(), |name| (name == "b").then_some(NodeId(2)))
    }

    /// Every operation parses; values are kept as canonical JSON text.
    #[test]
    fn parses_every_operation() {
        let parsed = ops(r#"[
            {"op": "counter.add", "path": "/likes", "by": -2},
            {"op": "bounded.transfer", "path": "/stock", "to": "b", "by": 3},
            {"op": "set.add", "path": "/tags", "value": {"b": 1, "a": 2}},
            {"op": "map.remove", "path": "/a~1b/c~0d"},
            {"op": "map.remove", "path": "/~01"}
        ]"#)
        .unwrap();
        assert_eq!(parsed[0].update, Update::CounterAdd(-2));
        assert_eq!(
            parsed[1].update,
            Update::BoundedTransfer {
                to: NodeId(2),
                by: 3
            }
        );
        assert_eq!(
            parsed[2].update,
            Update::SetAdd(br#"{"a":2,"b":1}"#.to_vec())
        );
        assert_eq!(parsed[3].path, ["a/b", "c~d"]);
        assert_eq!(parsed[4].path, ["~1"]);
    }

    /// Bad input is refused with a message naming the operation and what to fix.
    #[test]
    fn refuses_bad_operations() {
        for (body, wanted) in [
            ("{}", "JSON array"),
            ("[]", "1 to 1000"),
            (
                r#"[{"op": "counter.inc", "path": "/a", "by": 1}]"#,
                "unknown op",
            ),
            (
                r#"[{"op": "counter.add", "path": "a", "by": 1}]"#,
                "must start with",
            ),
            (
                r#"[{"op": "counter.add", "path": "/a//b", "by": 1}]"#,
                "non-empty names",
            ),
            (
                r#"[{"op": "counter.add", "path": "/a~2", "by": 1}]"#,
                "not followed by 0 or 1",
            ),
            (
                r#"[{"op": "counter.add", "path": "/a~", "by": 1}]"#,
                "not followed by 0 or 1",
            ),
            (
                r#"[{"op": "counter.add", "path": "/a", "by": 1.5}]"#,
                "integer",
            ),
            (r#"[{"op": "set.add", "path": "/a"}]"#, "needs \"value\""),
            (
                r#"[{"op": "bounded.transfer", "path": "/a", "to": "zz", "by": 1}]"#,
                "no node named",
            ),
            (
                r#"[{"op": "set.add", "path": "/a", "value": 1, "extra": 2}]"#,
                "unknown member",
            ),
        ] {
            let error = ops(body).unwrap_err();
            assert!(error.contains(wanted), "{body}: {error}");
        }
    }

    /// Reads show plain JSON; two kinds made concurrently under one name both show.
    #[test]
    fn renders_plain_json() {
        let mut doc = crdt::Map::default();
        let mut context = VersionVector::new();
        let writes = [
            (
                1,
                r#"[{"op": "counter.add", "path": "/n", "by": 5},
                    {"op": "set.add", "path": "/tags", "value": "x"},
                    {"op": "lwwreg.set", "path": "/m/title", "value": "hi"},
                    {"op": "flag.enable", "path": "/m/done"},
                    {"op": "bounded.add", "path": "/stock", "by": 4}]"#,
            ),
            // Concurrent: its writer had seen nothing, so /n is not a counter there.
            (2, r#"[{"op": "mvreg.set", "path": "/n", "value": 1}]"#),
        ];
        for (node, body) in writes {
            let dot = Dot::new(NodeId(node), 1);
            let mut seen = if node == 1 {
                doc.clone()
            } else {
                crdt::Map::default()
            };
            let writer_context = if node == 1 {
                context.clone()
            } else {
                VersionVector::new()
            };
            let delta = crdt::prepare(
                &mut seen,
                &writer_context,
                dot,
                Hlc(node),
                &ops(body).unwrap(),
            )
            .unwrap();
            let mut applied = writer_context.clone();
            applied.add(dot);
            for change in &delta.changes {
                doc.apply(change, dot, Hlc(node), &applied).unwrap();
            }
            context.add(dot);
        }
        assert_eq!(
            render(&doc),
            json!({
                "n": {"$types": {"counter": 5, "mvreg": [1]}},
                "tags": ["x"],
                "m": {"title": "hi", "done": true},
                "stock": 4
            })
        );
    }

    /// Counter values render exactly: numbers over the whole i64 and u64 range, a
    /// string of digits beyond (never a rounded float).
    #[test]
    fn counter_values_render_exactly() {
        assert_eq!(exact_integer(-5), json!(-5));
        assert_eq!(exact_integer(i128::from(i64::MIN)), json!(i64::MIN));
        let two_max = 2 * i128::from(i64::MAX);
        assert_eq!(exact_integer(two_max), json!(u64::MAX - 1));
        assert_eq!(exact_integer(3 * two_max), json!((3 * two_max).to_string()));
        assert_eq!(exact_integer(-two_max), json!((-two_max).to_string()));
    }
}
