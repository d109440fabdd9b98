//! JSON renderings of node values, and the parsing of context tokens.

use crate::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_node::{
    Change, ConflictRecord, Context, DocVersion, Document, Hlc, Node, NodeId, Outcome,
    VersionVector,
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
        // Over once none of its versions is in the document any more.
        "resolved": node.is_resolved(record).unwrap_or(false),
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

/// A version vector as `{NODE_ID: counter}` (node ids as 16 hex digits).
pub fn vector(vv: &VersionVector) -> Value {
    vv.iter()
        .map(|(node, counter)| (node.to_string(), json!(counter)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A feed cursor: the feed's id and a change sequence (`0` is the start of any feed).
pub fn cursor(feed: u64, seq: u64) -> String {
    format!("{feed:016x}-{seq}")
}

/// One change of the feed: where it is, which document, whether it is deleted, the
/// context to write against; with `include_docs`, the document as a read shows it.
pub fn change(node: &Node, feed: u64, change: &Change, include_docs: bool) -> Value {
    let doc = &change.doc;
    let mut out = json!({
        "seq": cursor(feed, change.seq),
        "collection": doc.collection,
        "key": doc.key,
        "deleted": doc.is_absent(),
        "context": token(&doc.context, &doc.collection, &doc.key),
    });
    if include_docs && !doc.is_absent() {
        out["doc"] = document(node, doc);
    }
    out
}
