//! Uploads of device replicas (`docs/design/devices.md`); they download through the
//! change feed.
//!
//! ```text
//!  POST /v1/devices/upload/{c}  {"device", "writes": [{"seq", "key", "value"? | "deleted"? | "ops"?,
//!                                "context"?, "covers"?: [DOT]}], "in_doubt_at"?: [NODE],
//!                                "acked"?: SEQ}
//!        ─▶ (in doubt at other nodes: their records of the device decide)
//!        ─▶ Node::upload: the writes and this node's record of the device, one commit
//!        ◀─ {"node", "results": [{"seq", "key", "context", "dot"} | {"seq", "taken": "before", "dot"?}
//!                                | {"seq", "error", "message"}]}  (seq order)
//! ```
//!
//! A write replaces what its `context` (the token of the read the device showed)
//! covers, and the device's own earlier writes named in `covers` (dots servers gave
//! them), which its context cannot name. A write that cannot be read or taken is
//! refused on its own (an error in its result); the request fails whole only when it
//! is not an upload at all (not JSON, a bad device id, writes out of order).
//!
//! **In doubt.** A device whose upload to node N went unanswered names N when it
//! retries elsewhere. The node asked takes only what N's record (replicated like a
//! document, in the same commit as N's writes) shows N did not take, and only when N
//! is not a member any more or its record covers the writes: while N is a member
//! whose record here does not cover them, N may have taken them without the record
//! having arrived yet, so the answer is 503 `in_doubt` (retry on N, or later) and
//! nothing is taken twice.

use crate::bulk::{document_write, parse};
use crate::error::ApiError;
use crate::extract::collection_and_body;
use crate::render;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use chorus_node::crdt_json::parse_operations;
use chorus_node::devices::{Change, DeviceId, DeviceWrite, Upload, UploadOutcome};
use chorus_node::{Context, Dot, Node};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::Arc;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadRequest {
    device: String,
    writes: Vec<UploadItem>,
    #[serde(default)]
    in_doubt_at: Vec<String>,
    /// The greatest seq the device has this node's answer for.
    #[serde(default)]
    acked: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadItem {
    seq: u64,
    key: String,
    value: Option<Box<RawValue>>,
    context: Option<String>,
    #[serde(default)]
    covers: Vec<String>,
    #[serde(default)]
    deleted: bool,
    /// CRDT operations, instead of a value.
    ops: Option<Box<RawValue>>,
}

const USAGE: &str = "the body must be {\"device\": 32 hex digits, \"writes\": [{\"seq\", \"key\", \
                     \"value\"? or \"deleted\"? or \"ops\"?, \"context\"?, \"covers\"?}], \"in_doubt_at\"?: [NODE], \"acked\"?: SEQ}";

/// The write an item asks for: its document or its CRDT operations, and its context
/// (the read's token, plus the dots it covers).
fn device_write(node: &Node, collection: &str, item: &UploadItem) -> ApiResult<DeviceWrite> {
    let (change, context) = match &item.ops {
        Some(ops) => {
            if item.value.is_some() || item.deleted {
                return Err(ApiError::bad_request(
                    "give ops, value or deleted: one of them",
                ));
            }
            let names = node.replica().known_names();
            let operations = parse_operations(ops.get().as_bytes(), |name| {
                names.iter().find(|(_, n)| n == name).map(|(id, _)| *id)
            })
            .map_err(ApiError::bad_request)?;
            let context = item
                .context
                .as_deref()
                .map(|text| render::parse_token(text, collection, &item.key))
                .transpose()?;
            (Change::Operations(operations), context)
        }
        None => {
            let write = document_write(
                collection,
                &item.key,
                item.value.as_deref(),
                item.context.as_deref(),
                item.deleted,
            )?;
            (Change::Document(write.value), write.context)
        }
    };
    let mut seen = context.map(|c| c.vector().clone()).unwrap_or_default();
    for text in &item.covers {
        let dot = Dot::parse(text)
            .ok_or_else(|| ApiError::bad_request("covers holds dots, NODE:COUNTER"))?;
        seen.add(dot);
    }
    Ok(DeviceWrite {
        seq: item.seq,
        key: item.key.clone(),
        change,
        context: (!seen.is_empty()).then(|| Context::new(seen)),
    })
}

/// `POST /v1/devices/upload/{c}`.
pub(crate) async fn upload(
    State(node): State<Node>,
    Extension(cluster): Extension<Option<Arc<crate::home::Forwarding>>>,
    collection: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let (collection, bytes) = collection_and_body(collection, bytes)?;
    let request: UploadRequest = parse(&bytes, USAGE)?;
    let device = DeviceId::parse(&request.device)
        .ok_or_else(|| ApiError::bad_request("device must be 32 hex digits"))?;
    // A write that cannot be read is refused on its own; the others go on.
    let mut outcomes = Vec::new();
    let mut writes = Vec::with_capacity(request.writes.len());
    for item in &request.writes {
        match device_write(&node, &collection, item) {
            Ok(write) => writes.push(write),
            Err(e) => outcomes.push(UploadOutcome::Refused {
                seq: item.seq,
                error: chorus_node::WriteError::Invalid(e.message),
            }),
        }
    }
    let members = cluster
        .as_ref()
        .map(|c| c.cluster.cluster().names())
        .unwrap_or_default();
    let is_member = |name: &str| members.iter().any(|m| m == name);
    // Alone (no cluster) a node has nothing to wait for.
    let stability = cluster.as_ref().map(|c| c.cluster.stability());
    let seen = match &stability {
        Some(s) if !s.heard_from_all => None,
        Some(s) => Some(s.seen.clone()),
        None => Some(Default::default()),
    };
    let (answered, writes) = node
        .settle_doubt(
            device,
            &collection,
            writes,
            &request.in_doubt_at,
            &is_member,
            seen.as_ref(),
        )
        .map_err(|doubt| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "in_doubt",
                doubt.to_string(),
            )
        })?;
    outcomes.extend(answered);
    let count = writes.len();
    outcomes.extend(
        node.upload(Upload {
            device,
            collection: collection.clone(),
            writes,
            acked: request.acked,
        })
        .await?,
    );
    metrics::counter!("chorus_device_uploads_total").increment(1);
    metrics::counter!("chorus_device_upload_writes_total").increment(count as u64);
    outcomes.sort_by_key(UploadOutcome::seq);
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            UploadOutcome::Taken { seq, ack } => json!({
                "seq": seq,
                "key": ack.key,
                "context": render::token(&ack.context, &collection, &ack.key),
                "dot": ack.dot.to_string(),
            }),
            UploadOutcome::TakenBefore { seq, dot } => {
                json!({"seq": seq, "taken": "before", "dot": dot.map(|d| d.to_string())})
            }
            UploadOutcome::Refused { seq, error } => {
                let error = ApiError::from(error);
                json!({"seq": seq, "error": error.code, "message": error.message})
            }
        })
        .collect();
    Ok(Json(json!({ "node": node.name(), "results": results })))
}
