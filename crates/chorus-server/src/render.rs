//! JSON renderings of node values, and the parsing of context tokens.

use crate::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_node::{
    Change, ConflictRecord, Context, DocVersion, Document, Hlc, Node, NodeId, Outcome,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub fn token(context: &Context, collection: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(context.to_token(collection, key))
}

pub fn parse_token(text: &str, collection: &str, key: &str) -> Result<Context, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| {
        ApiError::bad_request(
            "context token is not base64url; pass the context of a read unchanged",
        )
    })?;
    Context::from_token(&bytes, collection, key).map_err(|e| {
        ApiError::bad_request(format!("{e}; read the document again for a fresh context"))
    })
}

pub fn hlc(hlc: Hlc) -> Value {
    json!({"wall_ms": hlc.wall_ms(), "logical": hlc.logical()})
}

/// A stored document as JSON without re-building it as a tree (a merge collection's
/// stamps left out). Stored documents were validated when written, so this only fails
/// on corrupt data.
fn raw(value: &[u8]) -> Value {
    match serde_json::from_slice::<Box<RawValue>>(&chorus_node::document_bytes(value)) {
        Ok(raw) => serde_json::to_value(raw).unwrap_or(Value::Null),
        Err(error) => {
            tracing::error!(%error, "stored document is not JSON");
            Value::Null
        }
    }
}

fn origin(node: &Node, id: NodeId) -> Value {
    json!(node.origin_name(id))
}

fn version(node: &Node, dot: chorus_node::Dot, hlc_: Hlc, value: Option<&[u8]>) -> Value {
    let mut out = json!({
        "value": value.map_or(Value::Null, raw),
        "origin": origin(node, dot.node),
        "hlc": hlc(hlc_),
        "dot": dot.to_string(),
    });
    if value.is_none() {
        out["deleted"] = json!(true);
    }
    out
}

fn doc_version(node: &Node, v: &DocVersion) -> Value {
    if v.crdt {
        // Its dot and HLC depend on the order writes arrived in (see DocVersion).
        return json!({"value": v.value.as_deref().map_or(Value::Null, raw), "crdt": true});
    }
    version(node, v.dot, v.hlc, v.value.as_deref())
}

pub fn document(node: &Node, doc: &Document) -> Value {
    let mut out = json!({
        "key": doc.key,
        "context": token(&doc.context, &doc.collection, &doc.key),
        "conflict": doc.conflict(),
        "versions": doc.versions.iter().map(|v| doc_version(node, v)).collect::<Vec<_>>(),
    });
    if let Some(value) = doc.value() {
        out["value"] = raw(value);
    }
    if let Some(error) = &doc.merge_error {
        out["merge_error"] = json!(error);
    }
    out
}

pub fn conflict(node: &Node, record: &ConflictRecord) -> Value {
    let mut out = json!({
        "id": record.id.to_hex(),
        "collection": record.collection,
        "key": record.key,
        "policy": record.policy.name(),
        "versions": record.versions.iter().map(|v| version(node, v.dot, v.hlc, v.value.as_deref())).collect::<Vec<_>>(),
    });
    match record.outcome {
        Outcome::Siblings => out["outcome"] = json!("siblings"),
        Outcome::Merged => out["outcome"] = json!("merged"),
        Outcome::Winner(dot) => {
            out["outcome"] = json!("winner");
            out["winner"] = json!(dot.to_string());
        }
    }
    out
}

pub fn change(node: &Node, change: &Change) -> Value {
    let op = &change.op;
    let mut out = json!({
        "seq": change.seq,
        "collection": op.collection,
        "key": op.key,
        "origin": origin(node, op.dot.node),
        "dot": op.dot.to_string(),
        "hlc": hlc(op.hlc),
        "deleted": op.value.is_none(),
    });
    match &op.value {
        Some(delta) if chorus_core::crdt::is_delta(delta) => {
            out["crdt"] = chorus_node::crdt_json::render_delta(delta);
        }
        Some(value) => out["value"] = raw(value),
        None => {}
    }
    out
}
