//! Connections and request bodies: what an outsider can hold of a node, bounded.
//!
//! ```text
//!  accept ─▶ connection cap ─▶ hyper http1 (header time-out) ─▶ body guard ─▶ router
//!            (over: closed)     (idle or slow headers: closed)   (413 / 408 / 503)
//! ```
//!
//! **Invariant:** a connection that has not sent a whole request head within the
//! header time-out is closed, whether it is new, half-sent or idle between requests;
//! at most `connections_max` are open at once; a request body is read whole within
//! the body time-out, only when its announced length is within the
//! limit, and only while the bodies in flight on the node hold less than
//! [`BODIES_IN_FLIGHT_BYTES_MAX`] (which bounds their memory, not just each one's).
//! Live change streams and long polls are responses, not requests: none of this
//! cuts them.

use crate::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client may take by default to send a request head (on a new
/// connection, or on an idle kept-alive one) before the node closes the connection.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long a client may take by default to send a whole request body.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Bytes of request bodies the node holds at once, over every connection: four
/// largest documents. A request whose body does not fit waits for room, at most
/// [`BODY_ROOM_WAIT`], then gets 503 with `Retry-After`.
pub const BODIES_IN_FLIGHT_BYTES_MAX: usize = 4 * chorus_node::limits::DOCUMENT_BYTES_MAX;

/// How long a request waits for room among the bodies in flight.
pub const BODY_ROOM_WAIT: Duration = Duration::from_secs(10);

/// Open connections by default; more are closed as soon as they are accepted.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;

/// The room bodies take, counted in KiB so that the whole budget fits a semaphore.
const ROOM_UNIT_BYTES: usize = 1024;

/// What the body guard needs: the per-request limit and the shared room.
#[derive(Clone)]
pub(crate) struct BodyGuard {
    body_bytes_max: usize,
    body_read_timeout: Duration,
    room: Arc<Semaphore>,
}

impl BodyGuard {
    pub(crate) fn new(body_bytes_max: usize, body_read_timeout: Duration) -> BodyGuard {
        BodyGuard {
            body_bytes_max,
            body_read_timeout,
            room: Arc::new(Semaphore::new(
                BODIES_IN_FLIGHT_BYTES_MAX.div_ceil(ROOM_UNIT_BYTES),
            )),
        }
    }

    fn too_large(&self, bytes: Option<u64>) -> ApiError {
        let size = bytes.map_or_else(
            || "more than".to_owned(),
            |b| format!("{b} bytes, more than"),
        );
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is {size} the limit of {} bytes (set by `chorus serve --body-bytes-max`)",
                self.body_bytes_max
            ),
        )
    }
}

/// Reads a request's body whole before the handler runs, within the limits above,
/// and holds its room among the bodies in flight until the handler has answered.
pub(crate) async fn guard_body(
    axum::extract::State(guard): axum::extract::State<BodyGuard>,
    request: Request,
    next: Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|bytes| bytes > guard.body_bytes_max as u64) {
        return guard.too_large(announced).into_response();
    }
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if announced.unwrap_or(0) == 0 && !chunked {
        // No body (reads, long polls, streams): nothing to hold.
        return next.run(request).await;
    }
    // Room for what the body announces, or for the largest body it may be.
    let expected = announced.map_or(guard.body_bytes_max, |b| b as usize);
    let units = expected
        .div_ceil(ROOM_UNIT_BYTES)
        .clamp(1, BODIES_IN_FLIGHT_BYTES_MAX / ROOM_UNIT_BYTES) as u32;
    let room =
        match tokio::time::timeout(BODY_ROOM_WAIT, guard.room.clone().acquire_many_owned(units))
            .await
        {
            Ok(Ok(room)) => room,
            _ => {
                let mut busy = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the node holds as many request bodies as it may; retry shortly",
                )
                .into_response();
                busy.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return busy;
            }
        };
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, guard.body_bytes_max);
    let bytes = match tokio::time::timeout(guard.body_read_timeout, limited.collect()).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    guard.body_read_timeout.as_millis()
                ),
            )
            .into_response();
        }
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return guard.too_large(None).into_response();
        }
        Ok(Err(error)) => {
            return ApiError::bad_request(format!("cannot read the request body: {error}"))
                .into_response();
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(room);
    response
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests
/// finish for at most `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    connections_max: usize,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(connections_max));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("chorus_http_connections_refused_total").increment(1);
            tracing::warn!(%from, connections_max, "too many HTTP connections; closed a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%from, %error, "HTTP connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    Ok(())
}
