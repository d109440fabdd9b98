//! The routes of the API and their handlers.

use crate::changes;
use crate::connections::{BodyGuard, guard_body};
use crate::error::ApiError;
pub use crate::extract::CONTEXT_HEADER;
use crate::extract::{
    body, check_collection, context, json_document, page_limit, path, query, refuse_malformed_paths,
};
use crate::home::LOCK_TOKEN_HEADER;
use crate::render;
use crate::{ReloadCluster, ServerConfig, metrics};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chorus_node::leases::{Lease, LeaseError, LeaseToken};
use chorus_node::{CollectionConfig, ConflictId, Dot, Home, Node, Resolution, ResolveError, Write};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};

type ApiResult<T = Response> = Result<T, ApiError>;
/// The node's cluster, when it has one (for status, and routing writes to home
/// leaders).
type ClusterRef = Option<Arc<crate::home::Forwarding>>;

pub fn router(node: Node, config: ServerConfig) -> Router {
    // Install the metrics recorder before the first request records anything.
    metrics::handle();
    let body_bytes_max = config.body_bytes_max;
    let cluster: ClusterRef = config.cluster.clone().map(|cluster| {
        Arc::new(crate::home::Forwarding {
            cluster,
            https: config.tls.is_some(),
            https_ca: config.https_ca.clone(),
        })
    });
    Router::new()
        .route("/", get(about))
        .route("/v1/status", get(status))
        .route("/v1/cluster/status", get(cluster_status))
        .layer(Extension(Security {
            peer_tls: config.peer_tls,
            http_tls: config.tls.is_some(),
            auth: config.auth,
            insecure: config.insecure,
        }))
        .route("/v1/digest", get(digest))
        .route("/v1/collections", get(list_collections))
        .route(
            "/v1/collections/{collection}",
            get(get_collection).put(put_collection),
        )
        .route("/v1/docs/{collection}", get(list_docs).post(insert_doc))
        .route(
            "/v1/docs/{collection}/{key}",
            get(get_doc).put(put_doc).delete(delete_doc),
        )
        .route("/v1/docs/{collection}/{key}/ops", post(apply_ops))
        .route("/v1/docs/{collection}/{key}/live", get(crate::live::live))
        .route("/v1/bulk/{collection}", post(crate::bulk::bulk_write))
        .route("/v1/bulk/{collection}/get", post(crate::bulk::bulk_get))
        .route(
            "/v1/devices/upload/{collection}",
            post(crate::devices::upload),
        )
        .route("/v1/changes", get(changes::changes))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/conflicts/{id}", get(get_conflict))
        .route("/v1/conflicts/{id}/resolve", post(resolve_conflict))
        .route(
            "/v1/locks/{collection}/{key}",
            get(get_lock).post(acquire_lock).delete(release_lock),
        )
        .route(
            "/v1/cluster/reload",
            post(move || reload_cluster(config.reload_cluster.clone())),
        )
        .route("/v1/backup", get(backup))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/metrics", get(prometheus))
        .merge(crate::ui::router())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/api.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path",
            )
        })
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(axum::middleware::from_fn_with_state(
            BodyGuard::new(body_bytes_max, config.body_read_timeout),
            guard_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            crate::auth::Gate {
                node: node.clone(),
                required: config.auth,
                limiter: config
                    .token_requests_per_s
                    .map(|per_s| Arc::new(crate::auth::RateLimiter::new(per_s))),
            },
            crate::auth::authorize,
        ))
        .layer(axum::middleware::from_fn(refuse_malformed_paths))
        .layer(axum::middleware::from_fn_with_state(
            config.cors_origins.clone(),
            crate::cors::cors,
        ))
        .layer(Extension(cluster))
        // Answers are gzipped for clients that accept it (devices on slow links read
        // pages of documents); event streams, tiny answers and backups (store pages,
        // large, written byte for byte) are not.
        .layer(
            tower_http::compression::CompressionLayer::new().compress_when(
                DefaultPredicate::new()
                    .and(NotForContentType::const_new("application/octet-stream")),
            ),
        )
        .with_state(node)
}

// ---- handlers ----------------------------------------------------------------------

/// `GET /`: what this is, and where to go next; the feed's id (the part before `-`
/// of its cursors), so that a client holding cursors of several nodes picks this
/// node's; the cluster's members, and how far their histories agree (`stable`: on
/// every member, `seen`: on some; `heard_from_all`: false for a while after the node
/// starts, when both may miss what members hold), for devices deciding whether a
/// write they gave a node is safe.
async fn about(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
) -> ApiResult<Json<Value>> {
    let feed = node.feed()?;
    let (stability, members) = match &cluster {
        Some(c) => (c.cluster.stability(), c.cluster.cluster().names()),
        // Alone, this node is every member.
        None => {
            let applied = node.replica().position()?.applied;
            let stability = chorus_peer::replication::Stability {
                stable: applied.clone(),
                seen: applied,
                heard_from_all: true,
            };
            (stability, vec![node.name().to_owned()])
        }
    };
    Ok(Json(json!({
        "chorus": "a multi-leader replicated JSON document database",
        "version": env!("CARGO_PKG_VERSION"),
        "node": node.name(),
        "feed": format!("{:016x}", feed.id),
        "feed_last": render::cursor(feed.id, feed.last_seq),
        "stable": render::vector(&stability.stable),
        "seen": render::vector(&stability.seen),
        "heard_from_all": stability.heard_from_all,
        "members": members,
        "api": "/v1 (docs/api.md; docs/openapi.json)",
        "status": "/v1/status",
    })))
}

/// How the node is protected, for the status (a node run with `--insecure` says so).
#[derive(Clone, Copy)]
struct Security {
    peer_tls: bool,
    http_tls: bool,
    auth: bool,
    insecure: bool,
}

async fn status(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    Extension(security): Extension<Security>,
) -> ApiResult<Json<Value>> {
    status_json(&node, cluster.as_ref(), &security).map(Json)
}

/// How long `GET /v1/cluster/status` waits for a member's status.
const MEMBER_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /v1/cluster/status`: every member's status, as each answers `GET
/// /v1/status` (asked by this node, with the caller's token), or why it did not
/// answer within two seconds: the whole cluster in one read, for the dashboard.
async fn cluster_status(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    Extension(security): Extension<Security>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let own = status_json(&node, cluster.as_ref(), &security)?;
    let Some(forwarding) = cluster else {
        let name = own["node"].clone();
        return Ok(Json(json!({"nodes": [{"name": name, "status": own}]})));
    };
    let config = forwarding.cluster.cluster();
    let me = forwarding.cluster.me().to_owned();
    let scheme = if forwarding.https { "https" } else { "http" };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let asked = config.nodes.iter().map(|member| {
        let (name, http) = (member.name.clone(), member.http.clone());
        let own = (name == me).then(|| own.clone());
        let (ca, authorization) = (forwarding.https_ca.clone(), authorization.clone());
        let url = format!("{scheme}://{http}");
        async move {
            let answer = match own {
                Some(own) => Ok(own),
                None => {
                    let ask = tokio::task::spawn_blocking(move || {
                        let mut client = chorus_client::Client::new([url])?;
                        if let Some(ca) = &ca {
                            client = client.with_ca(ca)?;
                        }
                        if let Some(authorization) = &authorization {
                            client = client.with_header("authorization", authorization);
                        }
                        client.status()
                    });
                    match tokio::time::timeout(MEMBER_STATUS_WAIT, ask).await {
                        Ok(Ok(answer)) => answer.map_err(|e| e.to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer within 2 s".to_owned()),
                    }
                }
            };
            match answer {
                Ok(status) => json!({"name": name, "http": http, "status": status}),
                Err(error) => json!({"name": name, "http": http, "error": error}),
            }
        }
    });
    let nodes = futures_util::future::join_all(asked).await;
    Ok(Json(json!({"nodes": nodes})))
}

fn status_json(
    node: &Node,
    cluster: Option<&Arc<crate::home::Forwarding>>,
    security: &Security,
) -> ApiResult<Value> {
    let status = node.status()?;
    // Peers and links belong to the replication runtime, when the node has one.
    let peers = cluster
        .as_ref()
        .map(|c| c.cluster.peer_status())
        .unwrap_or_default();
    let links = cluster.as_ref().map(|c| c.cluster.link_status());
    let devices_seen = node.devices_seen()?;
    Ok(json!({
        "node": status.name,
        "node_id": status.node_id.to_string(),
        "peers": peers.iter().map(|p| json!({
            "name": p.name.as_str(),
            "connected": p.connected,
            "lag_ops": p.lag_ops,
            "lag_ms": p.lag_ms,
            "acked_seq": p.acked_seq,
            "entries_sent": p.entries_sent,
            "entries_received": p.entries_received,
            "syncing": p.syncing,
        })).collect::<Vec<_>>(),
        "last_seq": status.last_seq,
        "hlc": render::hlc(status.hlc),
        "log_start": status.log_start,
        "store_failed": status.store_failed,
        "store_failure": status.store_failure.map(|failure| {
            let error = crate::error::ApiError::from(failure.error());
            json!({"error": error.code, "message": error.message})
        }),
        "conflicts": node.conflict_counts().iter().map(|(collection, policy, count)| json!({
            "collection": collection,
            "policy": policy,
            "count": count,
        })).collect::<Vec<_>>(),
        "links": links.map(|l| json!({
            "planned": l.planned,
            "wanted": l.wanted,
            "actual": l.connected,
            "unreachable": l.unreachable,
            "heal_after_ms": l.heal_after_ms,
        })),
        "devices": {"seen": devices_seen},
        "security": {
            "peer_tls": security.peer_tls,
            "http_tls": security.http_tls,
            "tokens_required": security.auth,
            "insecure": security.insecure,
        },
    }))
}

fn conflict_id(extracted: Result<Path<String>, PathRejection>) -> ApiResult<ConflictId> {
    let text = path(extracted)?;
    ConflictId::from_hex(&text).ok_or_else(|| {
        ApiError::bad_request("a conflict id is 32 hex digits (from GET /v1/conflicts)")
    })
}

/// One conflict record, beside the document as it stands now (so a user can see
/// whether it is still in conflict and what a resolution would replace).
async fn get_conflict(
    State(node): State<Node>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = conflict_id(id)?;
    let record = node
        .conflict(id)?
        .ok_or_else(|| ApiError::not_found(format!("no conflict {id} in this node's log")))?;
    let current = node.get(&record.collection, &record.key)?;
    let mut out = render::conflict(&node, &record);
    out["current"] = render::document(&node, &current);
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    value: Option<Box<serde_json::value::RawValue>>,
    pick: Option<String>,
}

/// Ends a conflict: `{"value": DOC}` or `{"pick": DOT}` replaces exactly the record's
/// versions.
async fn resolve_conflict(
    State(node): State<Node>,
    id: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = conflict_id(id)?;
    let body: ResolveBody = serde_json::from_slice(&body(bytes)?).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be {{\"value\": DOC}} or {{\"pick\": DOT}}: {e}"),
        )
    })?;
    let resolution = match (body.value, body.pick) {
        (Some(value), None) => Resolution::Value(value.get().as_bytes().to_vec()),
        (None, Some(dot)) => Resolution::Pick(Dot::parse(&dot).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{dot:?} is not a dot (NODE:COUNTER, as in the record's versions)"
            ))
        })?),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"value\" (a new document) or \"pick\" (a version's dot)",
            ));
        }
    };
    let ending = node.resolution(id, resolution).map_err(|e| match e {
        ResolveError::NoSuchConflict(_) => ApiError::not_found(e.to_string()),
        ResolveError::NotInRecord(_) => ApiError::bad_request(e.to_string()),
        ResolveError::AlreadyResolved(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_resolved", e.to_string())
        }
        ResolveError::Read(e) => e.into(),
    })?;
    Ok(Json(write(&node, ending).await?))
}

async fn reload_cluster(reload: Option<ReloadCluster>) -> ApiResult<Json<Value>> {
    let Some(reload) = reload else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_clustered",
            "this node was not started with --cluster; there is no cluster file to reload",
        ));
    };
    match reload().await {
        Ok(nodes) => Ok(Json(json!({ "nodes": nodes }))),
        Err(message) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_cluster_file",
            format!("{message}; nothing changed"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    rights: String,
}

/// `POST /v1/tokens`: creates (or renews) a token; the answer is the only place its
/// secret is ever shown.
async fn create_token(State(node): State<Node>, request: Bytes) -> ApiResult<Response> {
    let new: NewToken = serde_json::from_slice(&request).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"name\": NAME, \"rights\": RIGHTS}}: {e}"
        ))
    })?;
    let token = node.create_token(&new.name, &new.rights).await?;
    tracing::info!(target: "audit", token = new.name, rights = new.rights, "token created");
    let body = json!({"name": new.name, "rights": new.rights, "token": token});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/tokens`: every token's name and rights (never a secret).
async fn list_tokens(State(node): State<Node>) -> ApiResult<Json<Value>> {
    let tokens: Vec<Value> = node
        .tokens()?
        .into_iter()
        .map(|t| json!({"name": t.name, "rights": t.rights.to_string()}))
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /v1/tokens/{name}`: revokes a token on every node (the deletion
/// replicates).
async fn revoke_token(
    State(node): State<Node>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let name = path(name)?;
    node.revoke_token(&name).await?;
    tracing::info!(target: "audit", token = name, "token revoked");
    Ok(Json(json!({ "revoked": name })))
}

/// `GET /v1/backup`: a consistent copy of the node's store (a redb file), taken
/// while the node serves; staged in the temporary folder, then streamed.
async fn backup(State(node): State<Node>) -> ApiResult<Response> {
    let internal = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup_failed",
            e.to_string(),
        )
    };
    let staging = tempfile::tempdir().map_err(internal)?;
    let path = staging.path().join("chorus.redb");
    let copy = path.clone();
    tokio::task::spawn_blocking(move || node.backup(&copy))
        .await
        .map_err(|e| internal(std::io::Error::other(e)))??;
    let file = tokio::fs::File::open(&path).await.map_err(internal)?;
    let length = file.metadata().await.map_err(internal)?.len();
    // The staging folder lives as long as the stream, and goes with it.
    let chunks = futures_util::stream::unfold((file, staging), |(mut file, staging)| async move {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 1 << 20];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (file, staging)))
            }
            Err(e) => Some((Err(e), (file, staging))),
        }
    });
    // Ended for good once it ends (a body may be polled again after its end).
    let chunks = futures_util::StreamExt::fuse(chunks);
    tracing::info!(target: "audit", bytes = length, "backup taken");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"chorus.redb\"".to_owned(),
            ),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

async fn digest(State(node): State<Node>) -> ApiResult<Json<Value>> {
    let digest = node.digest()?;
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Json(json!({ "digest": hex })))
}

async fn prometheus(State(node): State<Node>) -> Response {
    metrics::record_process();
    if let Ok(seen) = node.devices_seen() {
        ::metrics::gauge!("chorus_devices_seen").set(seen as f64);
    }
    match metrics::handle() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => {
            ApiError::not_found("metrics are exported by the embedding application").into_response()
        }
    }
}

/// A collection's settings as stored (policy, merge rules, script), with its name
/// and whether they were set explicitly.
fn collection_json(name: &str, config: &CollectionConfig, explicit: bool) -> Value {
    let mut out: Value = serde_json::from_slice(&config.to_json()).unwrap_or_else(|_| json!({}));
    out["name"] = json!(name);
    out["explicit"] = json!(explicit);
    out
}

/// `GET /v1/collections`: every collection the node knows, with its settings.
async fn list_collections(State(node): State<Node>) -> ApiResult<Json<Value>> {
    let collections: Vec<Value> = node
        .collections()?
        .iter()
        .map(|(name, config, explicit)| collection_json(name, config, *explicit))
        .collect();
    Ok(Json(json!({ "collections": collections })))
}

async fn get_collection(
    State(node): State<Node>,
    collection: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let collection = path(collection)?;
    check_collection(&collection)?;
    let (config, explicit) = node.collection(&collection)?;
    Ok(Json(collection_json(&collection, &config, explicit)))
}

async fn put_collection(
    State(node): State<Node>,
    collection: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let (collection, bytes) = crate::extract::collection_and_body(collection, bytes)?;
    let config = CollectionConfig::from_json(&bytes).map_err(ApiError::bad_request)?;
    node.set_collection_async(&collection, &config).await?;
    Ok(Json(collection_json(&collection, &config, true)))
}

async fn get_doc(
    State(node): State<Node>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let doc = node.get(&collection, &key)?;
    if doc.is_absent() {
        let mut error = ApiError::not_found(format!(
            "document {collection}/{key} does not exist or was deleted"
        ));
        let mut extra = serde_json::Map::new();
        extra.insert("key".into(), json!(key));
        extra.insert(
            "context".into(),
            json!(render::token(&doc.context, &collection, &key)),
        );
        error.extra = Some(extra);
        return Err(error);
    }
    Ok(Json(render::document(&node, &doc)).into_response())
}

async fn write(node: &Node, write: Write) -> ApiResult<Value> {
    let collection = write.collection.clone();
    let ack = node.write_async(write).await?;
    Ok(json!({
        "key": ack.key,
        "context": render::token(&ack.context, &collection, &ack.key),
    }))
}

async fn put_doc(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let value = json_document(&body(bytes)?)?;
    let context = context(&headers, &collection, &key)?;
    let w = Write {
        collection,
        key: Some(key),
        value: Some(value),
        context,
    };
    write_document(&node, cluster.as_ref(), &headers, "PUT", w).await
}

async fn delete_doc(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let context = context(&headers, &collection, &key)?;
    let w = Write {
        collection,
        key: Some(key),
        value: None,
        context,
    };
    write_document(&node, cluster.as_ref(), &headers, "DELETE", w).await
}

/// CRDT operations on one document of a `crdt` collection, applied all or none,
/// against the read named by the `Chorus-Context` header if there is one. Answers
/// the write's context and the document as this node now holds it.
async fn apply_ops(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let bytes = body(bytes)?;
    let names = node.replica().known_names();
    let operations = chorus_node::crdt_json::parse_operations(&bytes, |name| {
        names.iter().find(|(_, n)| n == name).map(|(id, _)| *id)
    })
    .map_err(ApiError::bad_request)?;
    let path = format!("{}/ops", chorus_client::doc_path(&collection, &key));
    let target = (collection.as_str(), key.as_str());
    let leased = headers.contains_key(LOCK_TOKEN_HEADER);
    if let Some(forwarded) = route_home(
        &node,
        cluster.as_ref(),
        &headers,
        "POST",
        &path,
        target,
        Some(&bytes),
        leased,
    )
    .await?
    {
        return Ok(forwarded);
    }
    check_fencing(&node, &headers, &collection, &key)?;
    let read = crate::extract::context(&headers, &collection, &key)?;
    let ack = crate::live::update(&node, &collection, &key, operations, read).await?;
    let doc = node.get(&collection, &key)?;
    let mut out = json!({
        "key": ack.key,
        "context": render::token(&ack.context, &collection, &ack.key),
    });
    if let Some(value) = render::document(&node, &doc).get("value") {
        out["value"] = value.clone();
    }
    Ok(Json(out).into_response())
}

/// A PUT or DELETE of one document: forwarded to its home leader when it has one
/// (and when it presents a fencing token), else checked against the lease and
/// written here.
async fn write_document(
    node: &Node,
    cluster: Option<&Arc<crate::home::Forwarding>>,
    headers: &HeaderMap,
    method: &str,
    w: Write,
) -> ApiResult {
    let key = w.key.clone().expect("a document write names its key");
    let path = chorus_client::doc_path(&w.collection, &key);
    let leased = headers.contains_key(LOCK_TOKEN_HEADER);
    let target = (w.collection.as_str(), key.as_str());
    let body = w.value.as_deref();
    if let Some(forwarded) =
        route_home(node, cluster, headers, method, &path, target, body, leased).await?
    {
        return Ok(forwarded);
    }
    check_fencing(node, headers, &w.collection, &key)?;
    Ok(Json(write(node, w).await?).into_response())
}

/// The lease token a request presents, if any.
fn lock_token(headers: &HeaderMap) -> ApiResult<Option<LeaseToken>> {
    let Some(value) = headers.get(LOCK_TOKEN_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(LeaseToken::parse)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Chorus-Lock-Token must be the token a lease was granted with (FENCING.SECRET)",
            )
        })
}

/// How a request about `collection/key` is routed: by the collection's `home`, or,
/// for leases and writes that present a fencing token, by the key's home.
fn routing(node: &Node, collection: &str, leased: bool) -> ApiResult<Option<Home>> {
    let home = node.collection(collection)?.0.home;
    Ok(home.or_else(|| leased.then_some(Home::Key)))
}

/// Forwards a request to the home leader of `collection/key` when it has one (see
/// [`crate::home`]); `None` when this node takes it.
#[allow(clippy::too_many_arguments)]
async fn route_home(
    node: &Node,
    cluster: Option<&Arc<crate::home::Forwarding>>,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    (collection, key): (&str, &str),
    body: Option<&[u8]>,
    leased: bool,
) -> ApiResult<Option<Response>> {
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    let Some(home) = routing(node, collection, leased)? else {
        return Ok(None);
    };
    let context = headers.get(CONTEXT_HEADER).and_then(|v| v.to_str().ok());
    let token = headers.get(LOCK_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let write = crate::home::Routed {
        home: &home,
        method,
        path,
        key,
        body,
        context,
        token,
    };
    crate::home::forward(cluster, headers, write).await
}

/// Refuses a write that presents a fencing token other than the live lease's.
fn check_fencing(node: &Node, headers: &HeaderMap, collection: &str, key: &str) -> ApiResult<()> {
    if let Some(token) = lock_token(headers)? {
        node.check_fencing(collection, key, &token, now_ms())
            .map_err(lease_error)?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn lease_error(error: LeaseError) -> ApiError {
    match &error {
        LeaseError::Held(lease) => {
            // Who holds it and until when; never anything a write could present.
            let mut e = ApiError::new(StatusCode::CONFLICT, "locked", error.to_string());
            e.extra = json!({"owner": lease.owner, "expires_ms": lease.expires_ms})
                .as_object()
                .cloned();
            e
        }
        LeaseError::Stale { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "stale_token",
            format!("{error}; take the lease again"),
        ),
        LeaseError::BadLength => ApiError::bad_request(error.to_string()),
        LeaseError::Write(_) | LeaseError::Read(_) | LeaseError::Random(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lease_failed",
            error.to_string(),
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    ttl_ms: Option<u64>,
    owner: Option<String>,
}

/// `POST /v1/locks/{c}/{key}`: takes a lease at the document's home leader.
async fn acquire_lock(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let raw = body(bytes)?;
    let request: LeaseBody = if raw.is_empty() {
        LeaseBody::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body must be {{\"ttl_ms\": N, \"owner\": TEXT}} (both optional): {e}"),
            )
        })?
    };
    let path = lock_path(&collection, &key);
    let target = (collection.as_str(), key.as_str());
    if let Some(forwarded) = route_home(
        &node,
        cluster.as_ref(),
        &headers,
        "POST",
        &path,
        target,
        Some(&raw),
        true,
    )
    .await?
    {
        return Ok(forwarded);
    }
    let owner = request.owner.unwrap_or_else(|| "anonymous".into());
    let ttl_ms = request
        .ttl_ms
        .unwrap_or(chorus_node::leases::LEASE_MS_DEFAULT);
    let (lease, token) = node
        .acquire_lease(&collection, &key, &owner, ttl_ms, now_ms())
        .await
        .map_err(lease_error)?;
    let mut granted = lease_json(&lease, now_ms());
    granted["token"] = json!(token.to_string());
    Ok(Json(granted).into_response())
}

/// `DELETE /v1/locks/{c}/{key}` with the lease's token: releases it.
async fn release_lock(
    State(node): State<Node>,
    Extension(cluster): Extension<ClusterRef>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let token = lock_token(&headers)?
        .ok_or_else(|| ApiError::bad_request("give the lease's token in Chorus-Lock-Token"))?;
    let path = lock_path(&collection, &key);
    let target = (collection.as_str(), key.as_str());
    if let Some(forwarded) = route_home(
        &node,
        cluster.as_ref(),
        &headers,
        "DELETE",
        &path,
        target,
        None,
        true,
    )
    .await?
    {
        return Ok(forwarded);
    }
    node.release_lease(&collection, &key, &token, now_ms())
        .await
        .map_err(lease_error)?;
    Ok(Json(json!({ "released": true })).into_response())
}

/// `GET /v1/locks/{c}/{key}`: the last grant this node knows (never its token).
async fn get_lock(
    State(node): State<Node>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let lease = node
        .lease(&collection, &key)?
        .ok_or_else(|| ApiError::not_found("no lease was ever taken on this document"))?;
    Ok(Json(lease_json(&lease, now_ms())))
}

fn lock_path(collection: &str, key: &str) -> String {
    format!(
        "/v1/locks/{}/{}",
        chorus_client::segment(collection),
        chorus_client::segment(key)
    )
}

fn lease_json(lease: &Lease, now_ms: u64) -> Value {
    json!({
        "owner": lease.owner,
        "fencing": lease.fencing,
        "expires_ms": lease.expires_ms,
        "live": lease.is_live(now_ms),
    })
}

async fn insert_doc(
    State(node): State<Node>,
    collection: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let collection = path(collection)?;
    check_collection(&collection)?;
    let value = json_document(&body(bytes)?)?;
    let w = Write {
        collection,
        key: None,
        value: Some(value),
        context: None,
    };
    Ok((StatusCode::CREATED, Json(write(&node, w).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    include_docs: bool,
}

/// `GET /v1/docs/{c}`: the keys of present documents in order (a page); with
/// `include_docs=true` also each document as a read shows it, from one snapshot.
async fn list_docs(
    State(node): State<Node>,
    collection: Result<Path<String>, PathRejection>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let collection = path(collection)?;
    check_collection(&collection)?;
    let q = query(params)?;
    let (after, limit) = (q.after.as_deref(), page_limit(q.limit)?);
    if !q.include_docs {
        let page = node.list(&collection, &q.prefix, after, limit)?;
        return Ok(Json(json!({ "keys": page.keys, "next": page.next })));
    }
    let page = node.list_documents(&collection, &q.prefix, after, limit)?;
    let keys: Vec<&str> = page.docs.iter().map(|d| d.key.as_str()).collect();
    let docs: Vec<Value> = page
        .docs
        .iter()
        .map(|doc| render::document(&node, doc))
        .collect();
    Ok(Json(
        json!({ "keys": keys, "docs": docs, "next": page.next }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    after: Option<String>,
    limit: Option<usize>,
    collection: Option<String>,
    key: Option<String>,
}

async fn conflicts(
    State(node): State<Node>,
    params: Result<Query<ConflictsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(params)?;
    let after =
        match q.after.as_deref() {
            Some(text) => Some(ConflictId::from_hex(text).ok_or_else(|| {
                ApiError::bad_request("after must be a conflict id (32 hex digits)")
            })?),
            None => None,
        };
    if let Some(collection) = &q.collection {
        check_collection(collection)?;
    }
    let filter = chorus_node::ConflictFilter {
        collection: q.collection,
        key: q.key,
    };
    let page = node.conflicts(after, page_limit(q.limit)?, &filter)?;
    Ok(Json(json!({
        "conflicts": page.conflicts.iter().map(|c| render::conflict(&node, c)).collect::<Vec<_>>(),
        "next": page.next.map(|id| id.to_hex()),
    })))
}
