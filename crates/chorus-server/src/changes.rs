//! `GET /v1/changes`: the change feed, as a page (optionally long-polled) or as a
//! live server-sent-event stream.
//!
//! The cursor is the `seq` of the last change seen, as a string; without one the
//! feed starts at the beginning. An SSE client that reconnects with
//! `Last-Event-ID` resumes after that event.

use crate::error::ApiError;
use crate::extract::{page_limit, query};
use crate::render;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chorus_node::Node;
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// Longest a long-poll request waits for a change.
const LONGPOLL_WAIT_MS_MAX: u64 = 60_000;
const LONGPOLL_WAIT_MS_DEFAULT: u64 = 30_000;
/// Changes read from the store per step of a live stream.
const STREAM_READ_ITEMS_MAX: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    since: Option<String>,
    limit: Option<usize>,
    feed: Option<String>,
    timeout_ms: Option<u64>,
}

fn parse_cursor(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request("since must be a cursor returned by this feed (a number)")
    })
}

pub async fn changes(
    State(node): State<Node>,
    headers: HeaderMap,
    params: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(params)?;
    let since = match (&q.since, headers.get("last-event-id")) {
        (Some(text), _) => parse_cursor(text)?,
        (None, Some(id)) => parse_cursor(id.to_str().unwrap_or(""))?,
        (None, None) => 0,
    };
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let limit = page_limit(q.limit)?;
    if wants_stream {
        return Ok(stream(node, since).into_response());
    }
    let mut page = node.changes(since, limit)?;
    match q.feed.as_deref() {
        None | Some("normal") => {}
        Some("longpoll") => {
            if page.changes.is_empty() {
                let wait_ms = q
                    .timeout_ms
                    .unwrap_or(LONGPOLL_WAIT_MS_DEFAULT)
                    .min(LONGPOLL_WAIT_MS_MAX);
                let _ = tokio::time::timeout(
                    Duration::from_millis(wait_ms),
                    node.wait_for_changes(since),
                )
                .await;
                page = node.changes(since, limit)?;
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown feed {other:?}; use normal or longpoll"
            )));
        }
    }
    let mut body = json!({
        "changes": page.changes.iter().map(|c| render::change(&node, c)).collect::<Vec<_>>(),
        "next": page.next.to_string(),
    });
    if let Some(seq) = page.collected_before {
        body["collected_before"] = json!(seq.to_string());
    }
    Ok(Json(body).into_response())
}

struct StreamState {
    node: Node,
    cursor: u64,
    buffered: VecDeque<chorus_node::Change>,
}

fn stream(
    node: Node,
    since: u64,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let state = StreamState {
        node,
        cursor: since,
        buffered: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(change) = s.buffered.pop_front() {
                let data = render::change(&s.node, &change).to_string();
                let event = Event::default()
                    .event("change")
                    .id(change.seq.to_string())
                    .data(data);
                return Some((Ok(event), s));
            }
            match s.node.changes(s.cursor, STREAM_READ_ITEMS_MAX) {
                // Nothing after the cursor: wait for the next commit.
                Ok(page) if page.next == s.cursor => s.node.wait_for_changes(s.cursor).await,
                // The page may hold no changes (only conflict records), but the
                // cursor moves past what it read either way.
                Ok(page) => {
                    s.cursor = page.next;
                    s.buffered.extend(page.changes);
                }
                Err(error) => {
                    tracing::error!(%error, "change stream ended by a read failure");
                    return None;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
