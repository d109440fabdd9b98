//! Conflict avoidance by home leader: a write to a collection with `home` set is
//! forwarded to its document's home leader, so writes to one document meet at one
//! node and do not conflict.
//!
//! ```text
//!  PUT at b ─▶ Home::order = rendezvous(key or field, members) = [a, c, b]
//!          ─▶ forward to a ── no connection / 503 ──▶ forward to c ── … ──▶ write here
//! ```
//!
//! The order (`Home::order`, in `chorus-rules`) is the same on every node, so when the
//! home is down every node fails over to the same next one. A request moves on only when it cannot have taken effect where it was
//! sent (the `chorus-client` rule); when every node before this one in the order is
//! unreachable, this node takes the write itself. Conflicts that still arise (two
//! sides of a partition each taking writes) are resolved by the collection's policy.
//!
//! **Invariant:** a forwarded write is never forwarded again: it carries
//! `Chorus-Forwarded-By`, and the node that receives it writes it locally. Two nodes
//! that disagree on the home (a cluster file reloaded on one only) therefore cannot
//! bounce a write between them.

use crate::error::ApiError;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_client::{Client, Error};
use chorus_node::Home;
use chorus_peer::replication::Replication;

/// Marks a forwarded write, naming the node that forwarded it.
pub const FORWARDED_BY: &str = "chorus-forwarded-by";
/// Names the node that took a write routed to a home leader.
pub const HOME_HEADER: &str = "chorus-home";
/// The header carrying a lease's fencing token with a write.
pub const LOCK_TOKEN_HEADER: &str = "chorus-lock-token";

/// What forwarding needs: the cluster, and how to reach the other nodes' APIs.
pub struct Forwarding {
    pub cluster: std::sync::Arc<Replication>,
    /// TLS on the nodes' APIs: writes are forwarded over `https://`, trusting
    /// `https_ca` (PEM; the public roots when `None`).
    pub https: bool,
    pub https_ca: Option<Vec<u8>>,
}

/// A write to route: what to send to the home leader.
pub struct Routed<'a> {
    pub home: &'a Home,
    pub method: &'a str,
    pub path: &'a str,
    pub key: &'a str,
    pub body: Option<&'a [u8]>,
    pub context: Option<&'a str>,
    /// A lease's fencing token, passed on.
    pub token: Option<&'a str>,
}

/// Sends `write` to its home leader, or the next in the order; `Ok(None)` when this
/// node is the one to take it (it is the home, every node before it is unreachable,
/// or the write was forwarded here).
pub async fn forward(
    forwarding: &Forwarding,
    headers: &HeaderMap,
    write: Routed<'_>,
) -> Result<Option<Response>, ApiError> {
    let cluster = &forwarding.cluster;
    let scheme = if forwarding.https { "https" } else { "http" };
    let https_ca = forwarding.https_ca.clone();
    if headers.contains_key(FORWARDED_BY) {
        return Ok(None);
    }
    let config = cluster.cluster();
    let me = cluster.me().to_owned();
    let value = write.home.routing_value(write.key, write.body);
    let before_me: Vec<String> = write
        .home
        .order(&config.names(), &value)
        .into_iter()
        .take_while(|m| *m != me)
        .filter_map(|m| config.node(&m).map(|n| format!("{scheme}://{}", n.http)))
        .collect();
    if before_me.is_empty() {
        return Ok(None);
    }
    let (method, path) = (write.method.to_owned(), write.path.to_owned());
    let (body, context) = (
        write.body.map(<[u8]>::to_vec),
        write.context.map(str::to_owned),
    );
    let token = write.token.map(str::to_owned);
    // The home checks the caller's rights too.
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = tokio::task::spawn_blocking(move || {
        let mut client = Client::new(before_me)?.with_header(FORWARDED_BY, &me);
        if let Some(ca) = &https_ca {
            client = client.with_ca(ca)?;
        }
        if let Some(token) = &token {
            client = client.with_header(LOCK_TOKEN_HEADER, token);
        }
        if let Some(authorization) = &authorization {
            client = client.with_header("authorization", authorization);
        }
        let answer = client.call(&method, &path, body.as_deref(), context.as_deref());
        answer.map(|value| (client.url().to_owned(), value))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let home_name = |url: &str| {
        config
            .nodes
            .iter()
            .find(|n| url == format!("{scheme}://{}", n.http))
            .map_or_else(|| url.to_owned(), |n| n.name.clone())
    };
    // The home's answer, whatever it is, passes through as it came.
    let (url, status, body) = match answer {
        Ok((url, value)) => (Some(url), StatusCode::OK, value),
        Err(Error::Unreachable { tried }) => {
            tracing::warn!(
                ?tried,
                "the home leaders before this node are unreachable; taking it here"
            );
            return Ok(None);
        }
        Err(Error::Api { status, body, .. }) => (
            None,
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body,
        ),
        Err(other) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "home_uncertain",
                format!("{other}; read the document to see whether the write was applied"),
            ));
        }
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(name) = url.and_then(|u| HeaderValue::from_str(&home_name(&u)).ok()) {
        response.headers_mut().insert(HOME_HEADER, name);
    }
    Ok(Some(response))
}
