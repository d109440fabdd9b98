//! Cross-origin requests from browser applications (`serve --cors-origin`).
//!
//! A request whose `Origin` is allowed gets `Access-Control-Allow-Origin` with that
//! origin (and `Vary: Origin`); a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) from an allowed origin is answered here, before
//! tokens are checked (browsers send no credentials with it). Origins not allowed get
//! no CORS headers, so browsers keep their same-origin rule.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The origins allowed (`*`: any).
#[derive(Clone, Debug, Default)]
pub struct CorsOrigins(pub Arc<Vec<String>>);

impl CorsOrigins {
    fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == "*" || o == origin)
    }
}

const ALLOWED_HEADERS: &str =
    "authorization, content-type, chorus-context, chorus-lock-token, chorus-device, last-event-id";
const EXPOSED_HEADERS: &str = "chorus-home, retry-after";

pub(crate) async fn cors(
    State(origins): State<CorsOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| origins.allows(o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, PUT, POST, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}
