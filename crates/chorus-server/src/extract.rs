//! Turning a request's parts into checked values: paths, queries, bodies, context
//! tokens, page limits, names. Every route uses these, so every route refuses bad
//! input the same way, with the API's error shape, before anything is written.

use crate::error::ApiError;
use crate::render;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_node::Context;

/// The header carrying a context token with a write.
pub const CONTEXT_HEADER: &str = "chorus-context";

type ApiResult<T> = Result<T, ApiError>;

/// Refuses a path with malformed percent-encoding (`%` not followed by two hex
/// digits): decoders would otherwise take it as literal key bytes, and a name
/// would mean something else to every tool that decodes it properly.
pub(crate) async fn refuse_malformed_paths(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().as_bytes();
    let malformed = path.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(path.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && path.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return ApiError::bad_request(
            "the path has a '%' not followed by two hex digits; percent-encode '%' as %25",
        )
        .into_response();
    }
    next.run(request).await
}

pub(crate) fn path<T>(extracted: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    extracted
        .map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

pub(crate) fn query<T>(extracted: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    extracted
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

/// A request about one collection, with a body: the collection checked, the body
/// read.
pub(crate) fn collection_and_body(
    collection: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<(String, Bytes)> {
    let collection = path(collection)?;
    check_collection(&collection)?;
    Ok((collection, body(bytes)?))
}

pub(crate) fn body(extracted: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    extracted.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(
            status,
            code,
            format!("cannot read the request body: {}", e.body_text()),
        )
    })
}

/// Items a page holds when a request does not say.
const PAGE_ITEMS_DEFAULT: usize = 100;

/// A paginated route's `limit`: 1 to `PAGE_ITEMS_MAX`, 100 when absent; anything
/// else is refused rather than silently changed.
pub(crate) fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    use chorus_node::limits::PAGE_ITEMS_MAX;
    match limit {
        None => Ok(PAGE_ITEMS_DEFAULT),
        Some(n) if (1..=PAGE_ITEMS_MAX).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be 1 to {PAGE_ITEMS_MAX} (default {PAGE_ITEMS_DEFAULT}), not {n}"
        ))),
    }
}

pub(crate) fn check_collection(collection: &str) -> ApiResult<()> {
    chorus_node::check_collection_name(collection).map_err(ApiError::bad_request)
}

pub(crate) fn context(
    headers: &HeaderMap,
    collection: &str,
    key: &str,
) -> ApiResult<Option<Context>> {
    let Some(value) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Chorus-Context header is not ASCII"))?;
    render::parse_token(text, collection, key).map(Some)
}

pub(crate) fn json_document(bytes: &[u8]) -> ApiResult<Vec<u8>> {
    chorus_node::json::check_document(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body: {e}"),
        )
    })?;
    Ok(bytes.to_vec())
}
