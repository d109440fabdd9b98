//! Who may call what: bearer tokens and their rights, checked before any handler.
//!
//! ```text
//!  request ─▶ needed(method, path, query) ─▶ Authorization: Bearer NAME.SECRET
//!             ─▶ Node::authenticate ─▶ rights.allow(right, collection) ─▶ handler
//!                       │ none / unknown / revoked: 401     │ not allowed: 403
//! ```
//!
//! With tokens required (`chorus serve --auth`), every route needs a live token:
//! reading a collection needs `read` on it, writing needs `write`, and changing the
//! cluster (collection settings, conflict resolution, reload, tokens) needs `admin`;
//! the status (the node's and the cluster's), digest and metrics need any live token. Cross-collection reads (the
//! change feed, the whole conflict log) need `read:*`. A route missing from
//! `needed` needs `admin`, so a new route is closed until it is classified.
//!
//! **Bootstrap (the localhost exception):** while the cluster has no token at all, a
//! request from this machine's loopback may create one, so that an operator can make
//! the first admin token (`chorus token create`) on a node that already requires
//! them. Once any token exists, the exception is gone.
//!
//! **Invariant:** the check reads the path as the handlers will (percent-decoded
//! segments), so a collection cannot be named one way to the check and another to
//! the handler.

use crate::error::ApiError;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chorus_node::Node;
use chorus_node::rights::Right;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The rights of the token a request came with, when tokens are required (absent
/// when they are not: everything is allowed). For handlers that do more than their
/// route's right, such as a live subscription (a read) taking writes.
#[derive(Clone)]
pub(crate) struct Caller {
    pub rights: chorus_node::rights::Rights,
}

impl Caller {
    /// Whether the request's caller may use `right` on `collection`.
    pub fn allows(caller: Option<&Caller>, right: Right, collection: &str) -> bool {
        caller.is_none_or(|c| c.rights.allow(right, Some(collection)))
    }
}

/// What the middleware needs: the node (tokens), whether tokens are required, and
/// the per-token rate limit.
#[derive(Clone)]
pub(crate) struct Gate {
    pub node: Node,
    pub required: bool,
    pub limiter: Option<Arc<RateLimiter>>,
}

/// Tokens buckets, one per token name: `per_s` requests a second on average, bursts
/// of up to `max(per_s, 1)`.
pub(crate) struct RateLimiter {
    per_s: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Token names tracked at most; past it the fullest buckets are forgotten (a
/// forgotten bucket is full again, so this only ever lets more through).
const RATE_BUCKETS_MAX: usize = 100_000;

impl RateLimiter {
    pub(crate) fn new(per_s: f64) -> RateLimiter {
        RateLimiter {
            per_s,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `token`'s bucket, or says how many seconds until one
    /// is there.
    fn take(&self, token: &str, now: Instant) -> Result<(), u64> {
        let burst = self.per_s.max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= RATE_BUCKETS_MAX && !buckets.contains_key(token) {
            buckets.retain(|_, (level, _)| *level < burst - 1.0);
        }
        let (level, at) = buckets.entry(token.to_owned()).or_insert((burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.per_s).min(burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *level) / self.per_s).ceil() as u64)
        }
    }
}

/// What a request needs.
#[derive(Debug, PartialEq, Eq)]
enum Needed {
    /// Nothing: the pages' static files (the API calls they make are checked).
    Nothing,
    /// Any live token.
    Token,
    /// A right, on one collection or (`None`) on all.
    Right(Right, Option<String>),
}

/// Decodes `%XX` escapes (the path was checked for malformed ones before).
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at..at + 2)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        };
        match (bytes[i], hex(i + 1)) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of query parameter `name`, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| decode(&value.replace('+', " ")))
    })
}

/// What calling `method` on `path` (with `query`) needs.
fn needed(method: &Method, path: &str, query: Option<&str>) -> Needed {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let reading = method == Method::GET || method == Method::HEAD;
    let on = |right, collection: &str| Needed::Right(right, Some(collection.to_owned()));
    match segments.as_slice() {
        ["v1", "bulk", collection, "get"] => on(Right::Read, collection),
        ["v1", "bulk", collection] | ["v1", "devices", "upload", collection] => {
            on(Right::Write, collection)
        }
        ["v1", "docs", collection, ..] | ["v1", "locks", collection, ..] => {
            on(if reading { Right::Read } else { Right::Write }, collection)
        }
        ["v1", "collections", collection] if reading => on(Right::Read, collection),
        ["v1", "collections"] if reading => Needed::Right(Right::Read, None),
        ["v1", "cluster", "status"] if reading => Needed::Token,
        ["v1", "collections", ..]
        | ["v1", "cluster", ..]
        | ["v1", "tokens", ..]
        | ["v1", "backup"] => Needed::Right(Right::Admin, None),
        ["v1", "conflicts", ..] if reading => {
            Needed::Right(Right::Read, query_param(query, "collection"))
        }
        ["v1", "conflicts", ..] => Needed::Right(Right::Admin, None),
        ["v1", "changes"] => Needed::Right(Right::Read, query_param(query, "collection")),
        ["v1", "status"] | ["v1", "digest"] | ["metrics"] | [""] => Needed::Token,
        ["ui", ..] => Needed::Nothing,
        // A route not classified here (a new one) is for admins until it is.
        _ => Needed::Right(Right::Admin, None),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether the request may create the first token: none exists, and it comes from
/// this machine.
fn bootstrapping(node: &Node, request: &Request, needed: &Needed) -> bool {
    let from_loopback = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(from)| from.ip().is_loopback());
    let creating_token = request.method() == Method::POST && request.uri().path() == "/v1/tokens";
    from_loopback
        && creating_token
        && *needed == Needed::Right(Right::Admin, None)
        && node.tokens().is_ok_and(|tokens| tokens.is_empty())
}

/// The middleware: refuses a request its token does not allow (when tokens are
/// required), or that goes beyond its token's rate (429 with `Retry-After`).
pub(crate) async fn authorize(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let Gate {
        node,
        required,
        limiter,
    } = gate;
    if !required {
        return next.run(request).await;
    }
    let needed = needed(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    if needed == Needed::Nothing {
        return next.run(request).await;
    }
    // Browsers cannot send a header with a WebSocket or an EventSource: a token may
    // come as `access_token` in the query instead.
    let from_query = query_param(request.uri().query(), "access_token");
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or(from_query);
    let presented = presented.as_deref();
    let Some(presented) = presented else {
        if bootstrapping(&node, &request, &needed) {
            tracing::warn!(target: "audit", "the first token is created from loopback (no token existed)");
            return next.run(request).await;
        }
        return unauthorized(
            "this node requires a token: send `Authorization: Bearer NAME.SECRET` \
             (create one with `chorus token create`)",
        );
    };
    let token = match node.authenticate(presented) {
        Ok(Some(token)) => token,
        Ok(None) => {
            let name = presented.rsplit_once('.').map_or("", |(name, _)| name);
            tracing::warn!(target: "audit", token = name, path = %request.uri().path(), "refused an unknown or revoked token");
            return unauthorized("the token is unknown or revoked");
        }
        Err(error) => return ApiError::from(error).into_response(),
    };
    let allowed = match &needed {
        Needed::Nothing | Needed::Token => true,
        Needed::Right(right, collection) => token.rights.allow(*right, collection.as_deref()),
    };
    if !allowed {
        let Needed::Right(right, collection) = &needed else {
            unreachable!("any live token is allowed")
        };
        let on = collection
            .as_deref()
            .map_or("every collection".to_owned(), |c| format!("collection {c}"));
        tracing::warn!(target: "audit", token = token.name, path = %request.uri().path(), right = right.name(), "refused a token without the right");
        let message = match right {
            Right::Admin => format!("token {:?} is not an admin token", token.name),
            _ => format!("token {:?} may not {} {on}", token.name, right.name()),
        };
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    if let Some(limiter) = limiter
        && let Err(wait_s) = limiter.take(&token.name, Instant::now())
    {
        tracing::warn!(target: "audit", token = token.name, "a token went beyond its rate");
        let message = format!(
            "token {:?} went beyond its {} requests a second; retry in {wait_s} s",
            token.name, limiter.per_s
        );
        let mut response =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait_s.max(1)));
        return response;
    }
    let mut request = request;
    request.extensions_mut().insert(Caller {
        rights: token.rights.clone(),
    });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let limiter = RateLimiter::new(2.0);
        let start = Instant::now();
        assert!(limiter.take("t", start).is_ok());
        assert!(limiter.take("t", start).is_ok());
        assert_eq!(limiter.take("t", start), Err(1), "the burst is spent");
        assert!(
            limiter.take("other", start).is_ok(),
            "buckets are per token"
        );
        let later = start + std::time::Duration::from_millis(500);
        assert!(
            limiter.take("t", later).is_ok(),
            "one more after half a second"
        );
        assert!(limiter.take("t", later).is_err());
    }

    fn right(r: Right, c: Option<&str>) -> Needed {
        Needed::Right(r, c.map(str::to_owned))
    }

    #[test]
    fn every_route_needs_what_it_touches() {
        let cases = [
            (
                Method::GET,
                "/v1/docs/orders/k1",
                None,
                right(Right::Read, Some("orders")),
            ),
            (
                Method::PUT,
                "/v1/docs/orders/k1",
                None,
                right(Right::Write, Some("orders")),
            ),
            (
                Method::DELETE,
                "/v1/docs/orders/k1",
                None,
                right(Right::Write, Some("orders")),
            ),
            (
                Method::POST,
                "/v1/docs/orders",
                None,
                right(Right::Write, Some("orders")),
            ),
            (
                Method::POST,
                "/v1/docs/c/k/ops",
                None,
                right(Right::Write, Some("c")),
            ),
            (
                Method::GET,
                "/v1/docs/%6Frders",
                None,
                right(Right::Read, Some("orders")),
            ),
            (
                Method::POST,
                "/v1/locks/c/k",
                None,
                right(Right::Write, Some("c")),
            ),
            (
                Method::GET,
                "/v1/collections/c",
                None,
                right(Right::Read, Some("c")),
            ),
            (
                Method::PUT,
                "/v1/collections/c",
                None,
                right(Right::Admin, None),
            ),
            (
                Method::GET,
                "/v1/changes",
                Some("since=4"),
                right(Right::Read, None),
            ),
            (
                Method::GET,
                "/v1/conflicts",
                Some("collection=c&key=k"),
                right(Right::Read, Some("c")),
            ),
            (
                Method::GET,
                "/v1/conflicts/abc",
                None,
                right(Right::Read, None),
            ),
            (
                Method::POST,
                "/v1/conflicts/abc/resolve",
                None,
                right(Right::Admin, None),
            ),
            (
                Method::POST,
                "/v1/cluster/reload",
                None,
                right(Right::Admin, None),
            ),
            (Method::POST, "/v1/tokens", None, right(Right::Admin, None)),
            (
                Method::DELETE,
                "/v1/tokens/ci",
                None,
                right(Right::Admin, None),
            ),
            (Method::GET, "/v1/status", None, Needed::Token),
            (Method::GET, "/metrics", None, Needed::Token),
            (Method::GET, "/nowhere", None, right(Right::Admin, None)),
            (
                Method::GET,
                "/v1/new-route",
                None,
                right(Right::Admin, None),
            ),
        ];
        for (method, path, query, expected) in cases {
            assert_eq!(needed(&method, path, query), expected, "{method} {path}");
        }
    }
}
