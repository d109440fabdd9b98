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
//!
//! A request hyper cannot parse (a malformed request line or header, a path or head
//! too long) never reaches the router; hyper answers it with an empty 400, 414 or
//! 431 and closes the connection. [`ParseErrorsAsJson`] gives those answers the
//! API's error body, so every error a client sees has one shape.

use crate::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How long a client may take by default to send a request head (on a new
/// connection, or on an idle kept-alive one) before the node closes the connection.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long a client may take by default to send a whole request body.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Bytes of request bodies the node holds at once, over every connection: four
/// largest documents. A request whose body does not fit waits for room, at most
/// [`BODY_ROOM_WAIT`], then gets 503 with `Retry-After`.
pub const BODIES_IN_FLIGHT_BYTES_MAX: usize = 4 * chorus_node::limits::DOCUMENT_BYTES_MAX;

/// How long a request waits for room among the bodies in flight. Waiting costs no
/// memory (its body stays unread) and the connection cap bounds the waiters; a 503
/// before the body is read ends the connection mid-upload, which clients see as a
/// broken pipe rather than the answer, so it comes late.
pub const BODY_ROOM_WAIT: Duration = Duration::from_secs(60);

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
            room: Arc::new(Semaphore::new(ROOM_UNITS)),
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
    let units = expected.div_ceil(ROOM_UNIT_BYTES).clamp(1, ROOM_UNITS) as u32;
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
    if expected >= LARGE_BODY_BYTES && guard.room.available_permits() == ROOM_UNITS {
        give_back_memory();
    }
    response
}

/// File descriptors kept for everything but client connections: the store, peer
/// links, listeners, logs.
const FDS_RESERVED: u64 = 256;

/// How many connections the process can really hold: it raises its soft limit on
/// open files to the hard one, and caps `requested` below it, so that the cap, not
/// the kernel, is what refuses a connection (past the file limit, `accept` fails and
/// no client at all is served).
fn usable_connections(requested: usize) -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return requested;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
            limit.rlim_cur
        };
        let usable = soft.saturating_sub(FDS_RESERVED).max(1);
        if (requested as u64) > usable {
            tracing::warn!(
                requested,
                usable,
                "the open-file limit allows fewer HTTP connections than asked; raise it (ulimit -n) to allow more"
            );
            return usable as usize;
        }
    }
    requested
}

/// Bodies from this size on are large: once none is in flight any more, the memory
/// they took is given back to the system.
const LARGE_BODY_BYTES: usize = 1 << 20;
const ROOM_UNITS: usize = BODIES_IN_FLIGHT_BYTES_MAX / ROOM_UNIT_BYTES;

/// Returns the allocator's free memory to the system. glibc keeps what large
/// bodies took (in per-thread arenas) for reuse, so a burst of large writes once left
/// a node gigabytes larger for good; `malloc_trim` hands it back. Called only when
/// the last large body in flight is done, so it costs nothing in the common case.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only releases free memory of the allocator; it takes
        // no pointer and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) };
    });
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests
/// finish for at most `grace`. With `tls`, every connection first completes a TLS
/// handshake, within the header time-out.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections_max: usize,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections_max = usable_connections(connections_max);
    let connections = Arc::new(Semaphore::new(connections_max));
    // Raised when the node starts closing: each connection finishes the request in
    // flight and closes (upgraded ones, live subscriptions, end with the process).
    let (closing, _) = watch::channel(false);
    let mut http = http1::Builder::new();
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
        // Handlers may ask who is calling (the localhost exception of `auth`).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                let from = axum::extract::connect_info::ConnectInfo(from);
                request.extensions_mut().insert(from);
                request
            },
        ));
        let (http, closed, tls) = (http.clone(), closing.subscribe(), tls.clone());
        tokio::spawn(async move {
            let ended = match tls {
                None => {
                    let stream = TokioIo::new(ParseErrorsAsJson::new(stream));
                    serve_until_closed(http.serve_connection(stream, service), closed).await
                }
                Some(tls) => {
                    match tokio::time::timeout(header_read_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let stream = TokioIo::new(ParseErrorsAsJson::new(stream));
                            serve_until_closed(http.serve_connection(stream, service), closed).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%from, %error, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%from, "no TLS handshake within the time-out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%from, %error, "HTTP connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.send_replace(true);
    // Every connection holds a permit until it ends.
    let every = u32::try_from(connections_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, connections.acquire_many(every)).await;
    Ok(())
}

/// Serves one connection (which may be upgraded, to a WebSocket) until it ends or
/// `closed` is raised; then lets it finish the request in flight and close.
async fn serve_until_closed<I, S, B>(
    connection: http1::Connection<I, S>,
    mut closed: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = connection.with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return ended,
        _ = closed.wait_for(|closing| *closing) => connection.as_mut().graceful_shutdown(),
    }
    connection.await
}

/// A connection whose canned parse-error answers (hyper's empty `4xx` with
/// `connection: close`) are rewritten with a JSON error body. The API itself never
/// answers a 4xx without a body, so nothing else matches.
struct ParseErrorsAsJson<S> {
    inner: S,
    /// A rewritten answer being written: its bytes, how many are written, and the
    /// length of the original it stands for.
    rewritten: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ParseErrorsAsJson<S> {
    fn new(inner: S) -> Self {
        ParseErrorsAsJson {
            inner,
            rewritten: None,
        }
    }
}

/// hyper's answer to a request it could not parse, with a JSON body in its place;
/// `None` for anything else.
fn with_json_body(answer: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(answer).ok()?;
    let status_line = head.strip_prefix("HTTP/1.1 4")?.split("\r\n").next()?;
    if !head.ends_with("\r\n\r\n") || !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let (code, message) = match &status_line[..2] {
        "00" => (
            "bad_request",
            "the request is not valid HTTP/1.1 (request line or headers)",
        ),
        "14" => ("uri_too_long", "the request's path and query are too long"),
        "31" => ("headers_too_large", "the request's headers are too large"),
        _ => return None,
    };
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    let fields: String = head
        .split("\r\n")
        .skip(1)
        .filter(|line| !line.is_empty() && !line.starts_with("content-length:"))
        .map(|line| format!("{line}\r\n"))
        .collect();
    Some(
        format!(
            "HTTP/1.1 4{status_line}\r\n{fields}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ParseErrorsAsJson<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ParseErrorsAsJson<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.rewritten.is_none() {
            match with_json_body(buf) {
                Some(bytes) => this.rewritten = Some((bytes, 0, buf.len())),
                None => return std::pin::Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let (bytes, written, original) = this.rewritten.as_mut().expect("set above");
        while *written < bytes.len() {
            match std::pin::Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        let original = *original;
        this.rewritten = None;
        Poll::Ready(Ok(original))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection cap stays below the open-file limit, which is raised to its
    /// hard value first; a cap within it is kept.
    #[cfg(unix)]
    #[test]
    fn connection_cap_fits_the_file_limit() {
        let usable = usable_connections(usize::MAX);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max, "raised to the hard limit");
        assert_eq!(
            usable as u64,
            limit.rlim_cur.saturating_sub(FDS_RESERVED).max(1)
        );
        assert_eq!(usable_connections(8), 8);
    }

    /// hyper's canned parse-error answers get the API's JSON error body; the API's
    /// own answers and successes pass unchanged.
    #[test]
    fn parse_errors_get_a_json_body() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 17:47:27 GMT\r\n\r\n";
        let rewritten = String::from_utf8(with_json_body(canned).unwrap()).unwrap();
        let (head, body) = rewritten.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("connection: close") && head.contains("date: Mon"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "headers_too_large");
        let api = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n";
        assert_eq!(with_json_body(api), None);
        assert_eq!(
            with_json_body(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
    }
}
