//! CRDT operations as a device shows them before any node took them: applied to
//! the document's JSON as a read renders it (counters as numbers, sets as arrays,
//! registers as values, flags as booleans, texts as strings, lists as arrays, maps as
//! objects).
//!
//! This is the device's preview: the node that takes the operations applies them to
//! the typed document, against the read the device made them on, and the device
//! shows the node's read from then on. The two agree for what one device does alone;
//! what others did concurrently arrives with the node's read.

use serde_json::{Map, Value};

/// Applies one operation (`{"op", "path", ...}`, as `POST /v1/docs/{c}/{key}/ops`
/// takes it) to `doc`; refuses one the API would refuse for its shape.
pub(crate) fn apply(doc: &mut Value, op: &Value) -> Result<(), String> {
    let name = op["op"]
        .as_str()
        .ok_or("each operation names itself in \"op\"")?;
    let path = op["path"]
        .as_str()
        .ok_or("each operation names its field in \"path\", a JSON pointer such as \"/likes\"")?;
    let names = parse_path(path)?;
    let (field, maps) = names.split_last().ok_or("the path names no field")?;
    let mut map = doc;
    for name in maps {
        map = object(map)?
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let map = object(map)?;
    let by = || op["by"].as_i64().ok_or("\"by\" is an integer");
    let value = || {
        op.get("value")
            .cloned()
            .ok_or("\"value\" is the element or value")
    };
    match name {
        "counter.add" | "bounded.add" => {
            let now = map.get(field).and_then(Value::as_i64).unwrap_or(0);
            map.insert(field.clone(), Value::from(now.saturating_add(by()?)));
        }
        // Rights move between nodes; the value a read shows stays.
        "bounded.transfer" => {
            by()?;
        }
        "set.add" => {
            let element = value()?;
            let set = array(map, field)?;
            if !set.contains(&element) {
                set.push(element);
            }
        }
        "set.remove" => {
            let element = value()?;
            array(map, field)?.retain(|e| *e != element);
        }
        "mvreg.set" | "lwwreg.set" => {
            map.insert(field.clone(), value()?);
        }
        "flag.enable" | "flag.disable" => {
            map.insert(field.clone(), Value::Bool(name == "flag.enable"));
        }
        "map.remove" => {
            map.remove(field);
        }
        "text.insert" | "text.delete" => {
            let text = map
                .entry(field.clone())
                .or_insert_with(|| Value::String(String::new()));
            let mut chars: Vec<char> = text
                .as_str()
                .ok_or_else(|| format!("the field {field:?} is not a text"))?
                .chars()
                .collect();
            let pos = position(op, chars.len())?;
            match name {
                "text.insert" => {
                    let inserted = op["text"].as_str().ok_or("\"text\" is a string")?;
                    chars.splice(pos..pos, inserted.chars());
                }
                _ => {
                    chars.drain(pos..span(op, pos, chars.len())?);
                }
            }
            *text = Value::String(chars.into_iter().collect());
        }
        "list.insert" | "list.delete" => {
            let list = array(map, field)?;
            let pos = position(op, list.len())?;
            match name {
                "list.insert" => list.insert(pos, value()?),
                _ => {
                    list.drain(pos..span(op, pos, list.len())?);
                }
            }
        }
        other => return Err(format!("unknown operation {other:?}")),
    }
    Ok(())
}

/// The operation's `pos`, within `len` items.
fn position(op: &Value, len: usize) -> Result<usize, String> {
    op["pos"]
        .as_u64()
        .and_then(|pos| usize::try_from(pos).ok())
        .filter(|pos| *pos <= len)
        .ok_or_else(|| format!("\"pos\" is a position from 0 to {len}"))
}

/// The end of the operation's `len` items from `pos`, within `len` items.
fn span(op: &Value, pos: usize, len: usize) -> Result<usize, String> {
    op["len"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| pos.checked_add(n))
        .filter(|end| *end <= len)
        .ok_or_else(|| format!("\"len\" is a count of at most {} items", len - pos))
}

/// The names of a JSON pointer (`/a/b`, with `~1` for `/` and `~0` for `~`).
fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("the path {path:?} is a JSON pointer: it starts with /"))?;
    Ok(rest
        .split('/')
        .map(|name| name.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn object(value: &mut Value) -> Result<&mut Map<String, Value>, String> {
    if value.is_null() {
        *value = Value::Object(Map::new());
    }
    value
        .as_object_mut()
        .ok_or_else(|| "the path goes through a field that is not a map".to_owned())
}

fn array<'a>(map: &'a mut Map<String, Value>, field: &str) -> Result<&'a mut Vec<Value>, String> {
    map.entry(field.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| format!("the field {field:?} is not a set or list"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applied(doc: Value, ops: Value) -> Result<Value, String> {
        let mut doc = doc;
        for op in ops.as_array().unwrap() {
            apply(&mut doc, op)?;
        }
        Ok(doc)
    }

    #[test]
    fn operations_show_as_a_read_would_render_them() {
        let doc = applied(
            json!({"views": 2, "tags": ["a"]}),
            json!([
                {"op": "counter.add", "path": "/views", "by": 3},
                {"op": "set.add", "path": "/tags", "value": "b"},
                {"op": "set.add", "path": "/tags", "value": "a"},
                {"op": "set.remove", "path": "/tags", "value": "a"},
                {"op": "lwwreg.set", "path": "/details/title", "value": "T"},
                {"op": "flag.enable", "path": "/published"},
                {"op": "bounded.transfer", "path": "/seats", "to": "b", "by": 1},
                {"op": "map.remove", "path": "/gone"},
                {"op": "counter.add", "path": "/a~1b", "by": 1}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"views": 5, "tags": ["b"], "details": {"title": "T"}, "published": true,
                   "a/b": 1})
        );
        assert_eq!(
            applied(
                Value::Null,
                json!([{"op": "counter.add", "path": "/n", "by": -1}])
            ),
            Ok(json!({"n": -1})),
            "a document that does not exist yet starts empty"
        );
    }

    #[test]
    fn operations_of_the_wrong_shape_are_refused() {
        for op in [
            json!({"op": "counter.add", "path": "/n"}),
            json!({"op": "counter.add", "path": "n", "by": 1}),
            json!({"op": "set.add", "path": "/n"}),
            json!({"op": "teleport", "path": "/n"}),
            json!({"path": "/n"}),
        ] {
            assert!(applied(json!({}), json!([op])).is_err(), "{op}");
        }
        let not_a_set = applied(
            json!({"n": 1}),
            json!([{"op": "set.add", "path": "/n", "value": 1}]),
        );
        assert!(not_a_set.is_err());
    }
}
