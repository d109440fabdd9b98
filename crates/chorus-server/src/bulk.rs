//! Bulk: many documents in one request.
//!
//! ```text
//!  POST /v1/bulk/{c}      {"docs": [{"key", "value"?, "context"?, "deleted"?}]}
//!        ─▶ each item checked ─▶ all valid writes queued at once ─▶ group commits (fsync)
//!        ◀─ {"results": [{"key", "context"} | {"key", "error", "message"}]}  (request order)
//!  POST /v1/bulk/{c}/get  {"keys": [...]}
//!        ◀─ {"docs": [READ | {"key", "error": "not_found", "context"}]}     (one snapshot)
//! ```
//!
//! **Per item, not all or nothing:** a bad item (bad key, value or context, a write
//! the node refuses) gets its own error and the others are written; every result is
//! answered only once its write is durable. Items are written by the node that
//! receives the request, even in a collection with a home (conflicts that follow
//! resolve by the collection's policy), and carry no lease tokens.

use crate::error::ApiError;
use crate::extract::{collection_and_body, json_document};
use crate::render;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use chorus_node::limits::BULK_ITEMS_MAX;
use chorus_node::{Node, Write};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkWrite {
    docs: Vec<BulkDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkDoc {
    key: String,
    value: Option<Box<RawValue>>,
    context: Option<String>,
    #[serde(default)]
    deleted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkGet {
    keys: Vec<String>,
}

pub(crate) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], usage: &str) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("{usage}: {e}")))
}

fn check_count(count: usize) -> ApiResult<()> {
    if count > BULK_ITEMS_MAX {
        return Err(ApiError::bad_request(format!(
            "{count} items; a bulk request takes at most {BULK_ITEMS_MAX}"
        )));
    }
    Ok(())
}

/// The write an item asks for, or why it cannot be made.
fn item_write(collection: &str, item: &BulkDoc) -> ApiResult<Write> {
    document_write(
        collection,
        &item.key,
        item.value.as_deref(),
        item.context.as_deref(),
        item.deleted,
    )
}

/// The write of `key` in `collection` that a request item asks for: `value` (a JSON
/// document) or `deleted`, against `context` (a read's token) if given.
pub(crate) fn document_write(
    collection: &str,
    key: &str,
    value: Option<&RawValue>,
    context: Option<&str>,
    deleted: bool,
) -> ApiResult<Write> {
    let value = match (value, deleted) {
        (Some(_), true) => {
            return Err(ApiError::bad_request("give value or deleted, not both"));
        }
        (Some(raw), false) => Some(json_document(raw.get().as_bytes())?),
        (None, true) => None,
        (None, false) => {
            return Err(ApiError::bad_request(
                "give value (a JSON document) or \"deleted\": true",
            ));
        }
    };
    let context = context
        .map(|text| render::parse_token(text, collection, key))
        .transpose()?;
    Ok(Write {
        collection: collection.to_owned(),
        key: Some(key.to_owned()),
        value,
        context,
    })
}

fn item_error(key: &str, error: ApiError) -> Value {
    json!({"key": key, "error": error.code, "message": error.message})
}

/// `POST /v1/bulk/{c}`.
pub(crate) async fn bulk_write(
    State(node): State<Node>,
    collection: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let (collection, bytes) = collection_and_body(collection, bytes)?;
    let request: BulkWrite = parse(
        &bytes,
        "the body must be {\"docs\": [{\"key\", \"value\"?, \"context\"?, \"deleted\"?}]}",
    )?;
    check_count(request.docs.len())?;
    let collection = collection.as_str();
    let writes = request.docs.iter().map(|item| {
        let node = node.clone();
        let write = item_write(collection, item);
        async move {
            let key = item.key.as_str();
            match write {
                Err(error) => item_error(key, error),
                Ok(write) => match node.write_async(write).await {
                    Ok(ack) => json!({
                        "key": ack.key,
                        "context": render::token(&ack.context, collection, &ack.key),
                    }),
                    Err(error) => item_error(key, error.into()),
                },
            }
        }
    });
    // Queued together, so the committer takes them in as few commits as it can.
    let results = futures_util::future::join_all(writes).await;
    metrics::counter!("chorus_bulk_documents_total").increment(results.len() as u64);
    Ok(Json(json!({ "results": results })))
}

/// `POST /v1/bulk/{c}/get`.
pub(crate) async fn bulk_get(
    State(node): State<Node>,
    collection: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let (collection, bytes) = collection_and_body(collection, bytes)?;
    let request: BulkGet = parse(&bytes, "the body must be {\"keys\": [KEY, ...]}")?;
    check_count(request.keys.len())?;
    let docs = node.get_many(&collection, &request.keys)?;
    let docs: Vec<Value> = docs
        .iter()
        .map(|doc| {
            if doc.is_absent() {
                let context = render::token(&doc.context, &collection, &doc.key);
                json!({"key": doc.key, "error": "not_found", "context": context})
            } else {
                render::document(&node, doc)
            }
        })
        .collect();
    Ok(Json(json!({ "docs": docs })))
}
