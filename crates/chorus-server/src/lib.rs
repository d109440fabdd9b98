//! The HTTP/JSON API of one Chorus node (`docs/api.md` is the user's reference).
//!
//! ```text
//!  request ─▶ axum router ─▶ handler ─▶ chorus_node::Node ─▶ render (JSON) ─▶ response
//! ```
//!
//! **API Boundary:** this crate is where JSON meets the node. Context tokens become
//! base64url strings here, HLCs become `{"wall_ms", "logical"}`, and every error
//! becomes `{"error": CODE, "message": TEXT}` with a 4xx/5xx status ([`error`]).
//!
//! **Architecture Invariant:** a request that is refused (bad path, malformed JSON,
//! bad token, oversize body) is refused before anything is written.

mod auth;
mod bulk;
mod changes;
mod connections;
mod cors;
mod devices;
mod error;
mod extract;
pub mod home;
mod live;
mod metrics;
mod render;
mod routes;
mod ui;

pub use connections::{
    BODY_READ_TIMEOUT_DEFAULT, CONNECTIONS_MAX_DEFAULT, HEADER_READ_TIMEOUT_DEFAULT,
};
pub use cors::CorsOrigins;
pub use error::ApiError;
pub use routes::router;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Re-reads the cluster file and reconfigures replication; answers the member
/// names, or why the file was refused (nothing changes then).
pub type ReloadCluster = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send>> + Send + Sync,
>;

/// Settings of the HTTP server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request body accepted; larger ones get 413.
    pub body_bytes_max: usize,
    /// Open HTTP connections at most; more are closed as soon as they are accepted.
    pub connections_max: usize,
    /// How long a client may take to send a request head, or stay idle between
    /// requests, before its connection is closed.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body (then 408).
    pub body_read_timeout: Duration,
    /// `POST /v1/cluster/reload`, for a node of a cluster.
    pub reload_cluster: Option<ReloadCluster>,
    /// The node's cluster, for routing writes to home leaders.
    pub cluster: Option<Arc<chorus_peer::replication::Replication>>,
    /// Every request needs a token with the right for it (`auth`).
    pub auth: bool,
    /// TLS on the API: the server's certificate chain and key.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With TLS on (every node's API): the CA (PEM) the nodes' certificates chain
    /// to, trusted when forwarding writes to home leaders (else the public roots).
    pub https_ca: Option<Vec<u8>>,
    /// Peers speak mutual TLS (shown in the status).
    pub peer_tls: bool,
    /// The node was started with `--insecure` (shown in the status).
    pub insecure: bool,
    /// Requests a second each token may make on average (with tokens required).
    pub token_requests_per_s: Option<f64>,
    /// Origins whose browser pages may call the API (CORS).
    pub cors_origins: CorsOrigins,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            body_bytes_max: chorus_node::limits::DOCUMENT_BYTES_MAX,
            connections_max: connections::CONNECTIONS_MAX_DEFAULT,
            header_read_timeout: connections::HEADER_READ_TIMEOUT_DEFAULT,
            body_read_timeout: connections::BODY_READ_TIMEOUT_DEFAULT,
            reload_cluster: None,
            cluster: None,
            auth: false,
            tls: None,
            https_ca: None,
            peer_tls: false,
            insecure: false,
            token_requests_per_s: None,
            cors_origins: CorsOrigins::default(),
        }
    }
}

/// Installs this process's Prometheus recorder, if it is not yet. Call it before the
/// node or replication starts: what is recorded before it is lost.
pub fn install_metrics() {
    metrics::handle();
}

/// How long open connections (live change streams, long polls) may take to finish
/// once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves the API on `listener` until `shutdown` completes, then lets open requests
/// finish for at most [`SHUTDOWN_GRACE`] (live streams never end by themselves).
/// Connections, request heads and bodies are bounded as [`connections`] says.
pub async fn serve(
    listener: TcpListener,
    node: chorus_node::Node,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (connections_max, header_read_timeout) =
        (config.connections_max, config.header_read_timeout);
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    connections::serve(
        listener,
        router(node, config),
        tls,
        connections_max,
        header_read_timeout,
        SHUTDOWN_GRACE,
        shutdown,
    )
    .await
}
