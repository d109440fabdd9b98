//! Prometheus exposition of the `metrics` facade the node records into.
//!
//! One recorder per process: the first server installs it, later ones share it. It
//! describes every metric of `docs/api.md` (`# HELP`), and the ones without labels
//! exist from the start, at zero; labelled ones appear with their first label
//! (a peer, a collection, a route). Process metrics are read at each scrape.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use. `None`
/// when another recorder was installed first (an embedding application's).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("chorus_commit_batch_writes".into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                        ],
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|()| handle);
            if installed.is_some() {
                describe();
            }
            installed
        })
        .as_ref()
}

/// What kind of metric one is.
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric Chorus records, with its help text; those without labels are
/// registered at zero.
const METRICS: &[(&str, Kind, bool, &str)] = &[
    (
        "chorus_writes_total",
        Kind::Counter,
        false,
        "Local writes acknowledged.",
    ),
    (
        "chorus_reads_total",
        Kind::Counter,
        false,
        "Documents read.",
    ),
    (
        "chorus_bulk_documents_total",
        Kind::Counter,
        false,
        "Documents in bulk writes.",
    ),
    (
        "chorus_device_uploads_total",
        Kind::Counter,
        false,
        "Uploads of device replicas answered.",
    ),
    (
        "chorus_device_upload_writes_total",
        Kind::Counter,
        false,
        "Writes of device uploads this node took or answered as taken before.",
    ),
    (
        "chorus_device_requests_total",
        Kind::Counter,
        true,
        "Requests of device replicas (Chorus-Device header), by route: uploads, feed pages, range and bulk reads.",
    ),
    (
        "chorus_device_bytes_total",
        Kind::Counter,
        true,
        "Body bytes device replicas sent (up) and were answered (down, before compression).",
    ),
    (
        "chorus_device_records_expired_total",
        Kind::Counter,
        false,
        "Records of devices this node deleted once their answers were received and old.",
    ),
    (
        "chorus_devices_seen",
        Kind::Gauge,
        false,
        "Devices some node of the cluster took writes from (by their records here).",
    ),
    (
        "chorus_conflicts_total",
        Kind::Counter,
        true,
        "Conflicts recorded, by collection and policy.",
    ),
    (
        "chorus_conflicts_pruned_total",
        Kind::Counter,
        false,
        "Conflict records pruned by retention.",
    ),
    (
        "chorus_fsyncs_total",
        Kind::Counter,
        false,
        "Durable commits (each ends in an fsync).",
    ),
    (
        "chorus_commit_latency_seconds",
        Kind::Histogram,
        false,
        "Time to commit one batch durably.",
    ),
    (
        "chorus_commit_batch_writes",
        Kind::Histogram,
        false,
        "Writes per commit.",
    ),
    (
        "chorus_sibling_warnings_total",
        Kind::Counter,
        false,
        "Writes that left a key with many versions.",
    ),
    (
        "chorus_merge_handler_failures_total",
        Kind::Counter,
        true,
        "Reads whose merge handler failed, by collection.",
    ),
    (
        "chorus_peer_connected",
        Kind::Gauge,
        true,
        "1 while the link to a peer is up.",
    ),
    (
        "chorus_peer_lag_ops",
        Kind::Gauge,
        true,
        "Entries a peer has not acknowledged.",
    ),
    (
        "chorus_peer_lag_ms",
        Kind::Gauge,
        true,
        "Age of the oldest entry a peer has not acknowledged.",
    ),
    (
        "chorus_replication_entries_sent_total",
        Kind::Counter,
        true,
        "Entries sent to a peer.",
    ),
    (
        "chorus_replication_entries_received_total",
        Kind::Counter,
        true,
        "Entries received from a peer.",
    ),
    (
        "chorus_replication_entries_applied_total",
        Kind::Counter,
        false,
        "Remote entries applied.",
    ),
    (
        "chorus_replication_bytes_sent_total",
        Kind::Counter,
        true,
        "Frame bytes sent to a peer.",
    ),
    (
        "chorus_replication_bytes_received_total",
        Kind::Counter,
        false,
        "Frame bytes received from peers.",
    ),
    (
        "chorus_hlc_drift_refused_total",
        Kind::Counter,
        false,
        "Remote entries refused for a clock too far ahead.",
    ),
    (
        "chorus_state_transfers_total",
        Kind::Counter,
        false,
        "State transfers adopted.",
    ),
    (
        "chorus_tombstones_collected_total",
        Kind::Counter,
        false,
        "Key states changed by tombstone collection.",
    ),
    (
        "chorus_crdt_operations_total",
        Kind::Counter,
        true,
        "CRDT operations of accepted writes, by collection.",
    ),
    (
        "chorus_crdt_refused_total",
        Kind::Counter,
        true,
        "CRDT operations refused, by reason.",
    ),
    (
        "chorus_http_connections_refused_total",
        Kind::Counter,
        false,
        "HTTP connections closed at the connection cap.",
    ),
    (
        "chorus_http_requests_total",
        Kind::Counter,
        true,
        "HTTP requests, by route, method and status.",
    ),
    (
        "chorus_http_request_duration_seconds",
        Kind::Histogram,
        true,
        "Time to answer an HTTP request (to its headers), by route and method.",
    ),
    (
        "process_resident_memory_bytes",
        Kind::Gauge,
        false,
        "Resident memory.",
    ),
    (
        "process_cpu_seconds_total",
        Kind::Gauge,
        false,
        "CPU time used, user and system.",
    ),
    (
        "process_open_fds",
        Kind::Gauge,
        false,
        "Open file descriptors.",
    ),
    (
        "process_start_time_seconds",
        Kind::Gauge,
        false,
        "Start time, seconds since the Unix epoch.",
    ),
];

fn describe() {
    for (name, kind, labelled, help) in METRICS {
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(*name, *help);
                if !labelled {
                    metrics::counter!(*name).increment(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(*name, *help);
                if !labelled {
                    metrics::gauge!(*name).increment(0.0);
                }
            }
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("process_start_time_seconds").set(started);
}

/// Reads this process's memory, CPU time and open files (Linux `/proc`).
pub fn record_process() {
    // SAFETY: sysconf only reads a system constant.
    let (page_bytes, clock_ticks_per_s) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
        )
    };
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(resident) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
    {
        metrics::gauge!("process_resident_memory_bytes").set(resident * page_bytes);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces), from its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat, 11 and 12 after the ')'.
        metrics::gauge!("process_cpu_seconds_total")
            .set((ticks(11) + ticks(12)) / clock_ticks_per_s);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// Counts a request and its time, by the route it matched.
/// The header a device replica sends with every request (its id).
pub const DEVICE_HEADER: &str = "chorus-device";

fn body_bytes(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) async fn track(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    // Device replicas name themselves: their downloads and bytes are counted apart.
    let device_bytes_up = request
        .headers()
        .contains_key(DEVICE_HEADER)
        .then(|| body_bytes(request.headers()));
    let response = next.run(request).await;
    if let Some(up) = device_bytes_up {
        let down = axum::body::HttpBody::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        metrics::counter!("chorus_device_requests_total", "route" => route.clone()).increment(1);
        metrics::counter!("chorus_device_bytes_total", "direction" => "up").increment(up);
        metrics::counter!("chorus_device_bytes_total", "direction" => "down").increment(down);
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("chorus_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("chorus_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
