//! `GET /v1/docs/{c}/{key}/live`: one document, live. A WebSocket (or, without
//! the upgrade, a server-sent-event stream, read only) that sends the document once,
//! then every change as this node applies it, with the operations a client needs to
//! update its own replica of a text or list without reading the document again; on
//! a WebSocket the client sends its own operations too.
//!
//! ```text
//! node → client  {"type": "snapshot", "node", "context", "doc": READ | null, "sequences": {PATH: B64}}
//!                {"type": "change", "context", "dot", "origin", "changes": [CHANGE]}
//!                {"type": "ack", "id", "context", "dot"}
//!                {"type": "error", "id"?, "error", "message"}
//! client → node  {"id"?: ANY, "ops": [OP], "context"?: TOKEN}
//! ```
//!
//! `doc` is what `GET` answers (`null` when there is no document); `sequences` holds
//! each text and list field of a `crdt` document in `chorus_text`'s encoding
//! (base64url), to seed a replica with the ids later operations name. A `change`
//! carries one CRDT write's changes as the change feed shows them (text and list
//! operations with their ids and neighbours); `context` is the document's after it,
//! so an edit made on a replica that applied every change received so far names it.
//! A plain write, a deletion, a state transfer, or a client too slow to keep up
//! (more than `DOCUMENT_CHANGES_BUFFERED` changes behind) gets a new `snapshot`.
//! The client's operations are those of `POST .../ops`, positions in the read
//! `context` names; each is answered by `ack` (with its write's dot: the `change`
//! with that dot is the node's version of the edit) or `error`.
//!
//! Operations sent on a socket are applied at this node (not routed to a home
//! leader: CRDT operations merge anywhere) and are not counted by the per-token rate
//! limit, which counts requests; a token that may only read gets `forbidden`.
//!
//! **Invariant:** a subscriber subscribes to the node's changes *before* it reads
//! the snapshot, and skips changes the snapshot's context covers, so it misses
//! nothing and sees nothing twice; changes come in the order the node applied them,
//! which is causal.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{check_collection, path};
use crate::render;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Extension, Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_node::crdt::{self, Field, Map};
use chorus_node::rights::Right;
use chorus_node::{Context, Document, DocumentChange, Node, WriteError};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::broadcast::error::RecvError;

/// Live subscriptions a node serves at once; past it, new ones get 503.
const LIVE_SUBSCRIBERS_MAX: usize = 1024;
/// Largest message a client may send (a batch of operations), in bytes.
const CLIENT_MESSAGE_BYTES_MAX: usize = 1 << 20;

static SUBSCRIBERS: AtomicUsize = AtomicUsize::new(0);

/// One live subscription counted in [`SUBSCRIBERS`] while it lasts.
struct Subscribed;

impl Subscribed {
    fn take() -> Option<Subscribed> {
        let taken = SUBSCRIBERS.fetch_add(1, Ordering::SeqCst);
        if taken >= LIVE_SUBSCRIBERS_MAX {
            SUBSCRIBERS.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        metrics::gauge!("chorus_live_subscribers").increment(1.0);
        Some(Subscribed)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        SUBSCRIBERS.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("chorus_live_subscribers").decrement(1.0);
    }
}

pub(crate) async fn live(
    State(node): State<Node>,
    params: Result<Path<(String, String)>, PathRejection>,
    caller: Option<Extension<Caller>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (collection, key) = path(params)?;
    check_collection(&collection)?;
    let may_write = Caller::allows(caller.as_deref(), Right::Write, &collection);
    let subscribed = Subscribed::take().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("this node serves {LIVE_SUBSCRIBERS_MAX} live subscriptions already; try another node or later"),
        )
    })?;
    let follower = Follower::start(node, collection, key, may_write)?;
    Ok(match upgrade {
        Ok(upgrade) => upgrade
            .max_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .on_upgrade(move |socket| async move {
                let _subscribed = subscribed;
                follower.serve(socket).await;
            }),
        Err(_) => {
            let events = futures_util::stream::unfold(
                (follower, subscribed, true),
                |(mut follower, subscribed, first)| async move {
                    let message = match first {
                        true => Some(follower.snapshot.take().expect("taken once")),
                        false => follower.next().await,
                    }?;
                    let event = Event::default().data(message.to_string());
                    Some((Ok::<_, Infallible>(event), (follower, subscribed, false)))
                },
            );
            Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
    })
}

/// Follows one document: its snapshot, then its changes.
struct Follower {
    node: Node,
    collection: String,
    key: String,
    changes: tokio::sync::broadcast::Receiver<Arc<DocumentChange>>,
    /// The document's context as last sent: changes it covers were sent already.
    sent: chorus_node::VersionVector,
    /// The first message, until sent.
    snapshot: Option<Value>,
    /// Whether the caller's token allows writes to the collection.
    may_write: bool,
}

impl Follower {
    fn start(
        node: Node,
        collection: String,
        key: String,
        may_write: bool,
    ) -> Result<Follower, ApiError> {
        let changes = node.subscribe_changes();
        let mut follower = Follower {
            node,
            collection,
            key,
            changes,
            sent: Default::default(),
            snapshot: None,
            may_write,
        };
        follower.snapshot = Some(follower.read()?);
        Ok(follower)
    }

    /// A snapshot of the document as the node holds it now.
    fn read(&mut self) -> Result<Value, ApiError> {
        // One snapshot: the sequences hold exactly what the context names.
        let (doc, crdt) = self.node.get_with_crdt(&self.collection, &self.key)?;
        self.sent = doc.context.vector().clone();
        Ok(snapshot(
            &self.node,
            &self.collection,
            &self.key,
            &doc,
            crdt.as_ref(),
        ))
    }

    /// The next message to send about the document; `None` when the node closes.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let change = match self.changes.recv().await {
                Ok(change) => change,
                Err(RecvError::Lagged(_)) => return Some(self.read_or_error()),
                Err(RecvError::Closed) => return None,
            };
            if change.collection != self.collection || change.key != self.key {
                continue;
            }
            let Some(op) = &change.op else {
                return Some(self.read_or_error()); // A state transfer.
            };
            if self.sent.covers(op.dot) {
                continue;
            }
            let delta = op.value.as_deref().filter(|v| crdt::is_delta(v));
            let Some(delta) = delta else {
                return Some(self.read_or_error()); // A plain write or a deletion.
            };
            self.sent = change.context.clone();
            let context = Context::new(change.context.clone());
            return Some(json!({
                "type": "change",
                "context": render::token(&context, &self.collection, &self.key),
                "dot": dot_text(op.dot),
                "origin": self.node.origin_name(op.dot.node),
                "changes": chorus_node::crdt_json::render_delta(delta),
            }));
        }
    }

    fn read_or_error(&mut self) -> Value {
        self.read().unwrap_or_else(|e| e.to_json())
    }

    /// Serves a WebSocket: the snapshot, then changes and the client's operations,
    /// until either side closes.
    async fn serve(mut self, mut socket: WebSocket) {
        let first = self.snapshot.take().expect("taken once");
        if send(&mut socket, &first).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                message = self.next() => {
                    let Some(message) = message else { return };
                    if send(&mut socket, &message).await.is_err() {
                        return;
                    }
                }
                received = socket.recv() => {
                    let text = match received {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => continue, // Pings are answered by the socket.
                    };
                    let answer = self.take_operations(text.as_str()).await;
                    if send(&mut socket, &answer).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Applies a client's `{"id", "ops", "context"}`; answers `ack` or `error`.
    async fn take_operations(&self, text: &str) -> Value {
        let message: Value = match serde_json::from_str(text) {
            Ok(Value::Object(message)) => Value::Object(message),
            _ => {
                return ApiError::bad_request(
                    "send {\"id\": ANY, \"ops\": [OPERATION, ...], \"context\": TOKEN}",
                )
                .to_json();
            }
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let answer = self.apply(&message).await;
        let mut answer = answer.unwrap_or_else(|e| e.to_json());
        answer["id"] = id;
        answer
    }

    async fn apply(&self, message: &Value) -> Result<Value, ApiError> {
        let (collection, key) = (&self.collection, &self.key);
        if !self.may_write {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                format!("this subscription's token may not write to collection {collection}"),
            ));
        }
        let ops = message
            .get("ops")
            .ok_or_else(|| ApiError::bad_request("\"ops\" lists the operations"))?;
        let read = match message.get("context") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) => Some(render::parse_token(token, collection, key)?),
            Some(_) => return Err(ApiError::bad_request("\"context\" is a context token")),
        };
        let names = self.node.replica().known_names();
        let operations =
            chorus_node::crdt_json::parse_operations(ops.to_string().as_bytes(), |name| {
                names.iter().find(|(_, n)| n == name).map(|(id, _)| *id)
            })
            .map_err(ApiError::bad_request)?;
        let ack = update(&self.node, collection, key, operations, read).await?;
        Ok(json!({
            "type": "ack",
            "context": render::token(&ack.context, collection, key),
            "dot": dot_text(ack.dot),
        }))
    }
}

/// Applies CRDT operations made against `read`, naming in a refusal the nodes that
/// hold a bounded counter's rights.
pub(crate) async fn update(
    node: &Node,
    collection: &str,
    key: &str,
    operations: Vec<crdt::Operation>,
    read: Option<Context>,
) -> Result<chorus_node::WriteAck, ApiError> {
    match node.update_async(collection, key, operations, read).await {
        Ok(ack) => Ok(ack),
        Err(WriteError::Refused(refused)) => {
            let message = refused.describe(|id| node.origin_name(id));
            let mut error = ApiError::from(WriteError::Refused(refused));
            error.message = message;
            Err(error)
        }
        Err(other) => Err(other.into()),
    }
}

async fn send(socket: &mut WebSocket, message: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(message.to_string().into())).await
}

fn dot_text(dot: chorus_node::Dot) -> String {
    format!("{}:{}", dot.node, dot.counter)
}

/// The first message: the read, and the sequences of a CRDT document.
fn snapshot(node: &Node, collection: &str, key: &str, doc: &Document, crdt: Option<&Map>) -> Value {
    let mut sequences = serde_json::Map::new();
    if let Some(map) = crdt {
        collect_sequences(map, "", &mut sequences);
    }
    json!({
        "type": "snapshot",
        // The node the subscription writes through (a page's tentative items take
        // the id just below it: see crates/chorus-wasm).
        "node": node.node_id().to_string(),
        "context": render::token(&doc.context, collection, key),
        "doc": if doc.is_absent() { Value::Null } else { render::document(node, doc) },
        "sequences": sequences,
    })
}

/// Every shown text and list under `map`, by JSON pointer, encoded.
fn collect_sequences(map: &Map, prefix: &str, out: &mut serde_json::Map<String, Value>) {
    for (name, _, field) in map.fields().filter(|(_, _, f)| f.is_shown()) {
        let pointer = format!("{prefix}{}", crdt::path_text(&[name.to_owned()]));
        let encoded = match field {
            Field::Text(t) => t.items().encode(),
            Field::List(l) => l.items().encode(),
            Field::Map(inner) => {
                collect_sequences(inner, &pointer, out);
                continue;
            }
            _ => continue,
        };
        out.insert(pointer, json!(URL_SAFE_NO_PAD.encode(encoded)));
    }
}
