//! Conflict avoidance by home leader: a write to a collection with `home` set is
//! forwarded to its document's home leader, so writes to one document meet at one
//! node and do not conflict.
//!
//! ```text
//!  PUT at b ─▶ order = rendezvous(key or field, members) = [a, c, b]
//!          ─▶ forward to a ── no connection / 503 ──▶ forward to c ── … ──▶ write here
//! ```
//!
//! The order is the same on every node (rendezvous hashing of the routing value with
//! each member's name), so when the home is down every node fails over to the same
//! next one. A request moves on only when it cannot have taken effect where it was
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
use sha2::{Digest, Sha256};

/// Marks a forwarded write, naming the node that forwarded it.
pub const FORWARDED_BY: &str = "chorus-forwarded-by";
/// Names the node that took a write routed to a home leader.
pub const HOME_HEADER: &str = "chorus-home";
/// The header carrying a lease's fencing token with a write.
pub const LOCK_TOKEN_HEADER: &str = "chorus-lock-token";

/// The members in the order a document routed by `value` tries them: its home
/// first. For `Home::Node`, the named node first, then the others by rendezvous.
pub fn order(members: &[String], home: &Home, value: &str) -> Vec<String> {
    let weight = |member: &str| {
        let mut hasher = Sha256::new();
        for part in [value, member] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    };
    let mut ordered: Vec<String> = members.to_vec();
    ordered.sort_by_key(|m| (std::cmp::Reverse(weight(m)), m.clone()));
    if let Home::Node(named) = home
        && let Some(at) = ordered.iter().position(|m| m == named)
    {
        let first = ordered.remove(at);
        ordered.insert(0, first);
    }
    ordered
}

/// The value a document is routed by: its key, or a field of the written document.
pub fn routing_value(home: &Home, key: &str, document: Option<&[u8]>) -> String {
    match home {
        Home::Field(field) => document
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok())
            .and_then(|d| d.get(field).map(|v| v.to_string()))
            .unwrap_or_else(|| key.to_owned()),
        Home::Key | Home::Node(_) => key.to_owned(),
    }
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
    cluster: &Replication,
    headers: &HeaderMap,
    write: Routed<'_>,
) -> Result<Option<Response>, ApiError> {
    if headers.contains_key(FORWARDED_BY) {
        return Ok(None);
    }
    let config = cluster.cluster();
    let me = cluster.me().to_owned();
    let value = routing_value(write.home, write.key, write.body);
    let before_me: Vec<String> = order(&config.names(), write.home, &value)
        .into_iter()
        .take_while(|m| *m != me)
        .filter_map(|m| config.node(&m).map(|n| format!("http://{}", n.http)))
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
    let answer = tokio::task::spawn_blocking(move || {
        let mut client = Client::new(before_me)?.with_header(FORWARDED_BY, &me);
        if let Some(token) = &token {
            client = client.with_header(LOCK_TOKEN_HEADER, token);
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
            .find(|n| url == format!("http://{}", n.http))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// The order is the same whatever order the members are listed in, spreads
    /// documents over every member, and puts a named home first.
    #[test]
    fn order_is_deterministic_and_spread() {
        let members = names(&["a", "b", "c"]);
        let reversed = names(&["c", "b", "a"]);
        let mut firsts = std::collections::BTreeMap::new();
        for k in 0..300 {
            let key = format!("k{k}");
            let o = order(&members, &Home::Key, &key);
            assert_eq!(o, order(&reversed, &Home::Key, &key));
            assert_eq!(o.len(), 3);
            *firsts.entry(o[0].clone()).or_insert(0) += 1;
        }
        assert!(firsts.values().all(|n| *n > 60), "{firsts:?}");
        let named = order(&members, &Home::Node("b".into()), "x");
        assert_eq!(named[0], "b");
        let by_field = Home::Field("tenant".into());
        assert_eq!(
            routing_value(&by_field, "k", Some(br#"{"tenant":"acme"}"#)),
            "\"acme\""
        );
        assert_eq!(routing_value(&by_field, "k", Some(br#"{"other":1}"#)), "k");
        assert_eq!(routing_value(&by_field, "k", None), "k");
    }
}
