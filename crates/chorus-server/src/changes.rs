//! `GET /v1/changes`: the change feed, as a page (optionally long-polled) or as a
//! live server-sent-event stream.
//!
//! The feed is the node's by-sequence index (`chorus-store`): each document changed
//! after the cursor, once, in the order of its latest change, as it reads now. A
//! cursor is `FEED-SEQ` (the feed's id in hex, a change sequence); `0`, or none,
//! starts at the beginning, which lists every document the node holds. A cursor of
//! another feed (another node, or this node before its data was wiped) is refused:
//! the reader starts again from `0`. An SSE client that reconnects with
//! `Last-Event-ID` resumes after that event.
//!
//! **Invariant:** `next` is past every change a page examined, so a reader that keeps
//! following `next` never reads the same change twice and never stalls; waiting
//! (long poll, streams) sleeps on the feed's commit watch, never spins.

use crate::error::ApiError;
use crate::extract::{page_limit, query};
use crate::render;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
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
    /// Only this collection's documents.
    collection: Option<String>,
    /// Only documents whose key starts with this.
    #[serde(default)]
    prefix: String,
    /// Each change carries the document as a read shows it.
    #[serde(default)]
    include_docs: bool,
}

/// What one feed request reads: where from, and which documents.
#[derive(Clone)]
struct Reading {
    feed: u64,
    after: u64,
    collection: Option<String>,
    prefix: String,
    include_docs: bool,
}

impl Reading {
    fn page(&self, node: &Node, limit: usize) -> Result<chorus_node::ChangesPage, ApiError> {
        Ok(node.changes(self.after, limit, self.collection.as_deref(), &self.prefix)?)
    }
}

/// The change sequence after which `text` resumes, if it is a cursor of feed `feed`.
fn parse_cursor(text: &str, feed: u64) -> Result<u64, ApiError> {
    if text == "0" {
        return Ok(0);
    }
    let malformed = || {
        ApiError::bad_request(format!(
            "{text:?} is not a cursor of this feed (FEED-SEQ, as `next` gives it, or 0)"
        ))
    };
    let (id, seq) = text.split_once('-').ok_or_else(malformed)?;
    let id = u64::from_str_radix(id, 16).map_err(|_| malformed())?;
    let seq: u64 = seq.parse().map_err(|_| malformed())?;
    if id != feed {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "foreign_cursor",
            "this cursor is from another node's feed, or from before this node's data was \
             replaced; read the feed again from 0 (it lists every document once)",
        ));
    }
    Ok(seq)
}

pub async fn changes(
    State(node): State<Node>,
    headers: HeaderMap,
    params: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(params)?;
    if let Some(collection) = &q.collection {
        crate::extract::check_collection(collection)?;
    }
    let feed = node.feed()?.id;
    let after = match (&q.since, headers.get("last-event-id")) {
        (Some(text), _) => parse_cursor(text, feed)?,
        (None, Some(id)) => parse_cursor(id.to_str().unwrap_or(""), feed)?,
        (None, None) => 0,
    };
    let reading = Reading {
        feed,
        after,
        collection: q.collection,
        prefix: q.prefix,
        include_docs: q.include_docs,
    };
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let limit = page_limit(q.limit)?;
    if wants_stream {
        return Ok(stream(node, reading).into_response());
    }
    let mut page = reading.page(&node, limit)?;
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
                    node.wait_for_changes(page.next),
                )
                .await;
                let later = Reading {
                    after: page.next,
                    ..reading.clone()
                };
                page = later.page(&node, limit)?;
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown feed {other:?}; use normal or longpoll"
            )));
        }
    }
    let changes: Vec<_> = page
        .changes
        .iter()
        .map(|c| render::change(&node, feed, c, reading.include_docs))
        .collect();
    let body = json!({
        "changes": changes,
        "next": render::cursor(feed, page.next),
    });
    Ok(Json(body).into_response())
}

struct StreamState {
    node: Node,
    reading: Reading,
    buffered: VecDeque<chorus_node::Change>,
}

fn stream(
    node: Node,
    reading: Reading,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let state = StreamState {
        node,
        reading,
        buffered: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(change) = s.buffered.pop_front() {
                let (feed, include_docs) = (s.reading.feed, s.reading.include_docs);
                let data = render::change(&s.node, feed, &change, include_docs).to_string();
                let event = Event::default()
                    .event("change")
                    .id(render::cursor(feed, change.seq))
                    .data(data);
                return Some((Ok(event), s));
            }
            match s.reading.page(&s.node, STREAM_READ_ITEMS_MAX) {
                // Nothing after the cursor: sleep until the next commit of the feed.
                Ok(page) if page.next == s.reading.after => {
                    s.node.wait_for_changes(s.reading.after).await
                }
                // The page may hold no change its filter wants, but the cursor moves
                // past what it examined either way.
                Ok(page) => {
                    s.reading.after = page.next;
                    s.buffered.extend(page.changes);
                }
                Err(error) => {
                    tracing::error!(message = %error.message, "change stream ended by a read failure");
                    return None;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
