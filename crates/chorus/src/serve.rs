//! `chorus serve`: open the store, serve the API, stop cleanly on Ctrl-C or SIGTERM.

use anyhow::{Context as _, bail};
use chorus_node::{Node, NodeConfig};
use chorus_peer::cluster::ClusterConfig;
use chorus_peer::emulation::LinkEmulation;
use chorus_peer::replication::{self, EngineLimits, Replication};
use chorus_peer::tls::NodeCertificate;
use chorus_server::ServerConfig;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Folder of the node's store; created if missing.
    #[arg(long, default_value = "chorus-data")]
    data: PathBuf,
    /// Address of the HTTP API (port 0 picks a free port, printed at start). Default:
    /// the node's `http` in the cluster file, else 127.0.0.1:7070.
    #[arg(long)]
    http: Option<String>,
    /// This node's name, shown as the origin of its writes (kept from the first start).
    #[arg(long, default_value = "local", conflicts_with = "node")]
    name: String,
    /// The cluster file (TOML) naming the nodes, their addresses and links.
    #[arg(long, requires = "node")]
    cluster: Option<PathBuf>,
    /// This node's name in the cluster file.
    #[arg(long, requires = "cluster")]
    node: Option<String>,
    /// The folder of the cluster's certificates (`chorus cluster certs`): peers speak
    /// mutual TLS with `DIR/ca.pem`, `DIR/NODE.pem` and `DIR/NODE.key`, and a peer must
    /// hold a certificate of the cluster's CA for the name it claims.
    #[arg(long, requires = "cluster")]
    certs: Option<PathBuf>,
    /// TLS on the HTTP API: the server's certificate chain (PEM), e.g. `DIR/NODE.pem`
    /// from `chorus cluster certs` (it names the node's addresses; clients then trust
    /// `ca.pem`), or one from your own CA.
    #[arg(long, requires = "http_key")]
    http_cert: Option<PathBuf>,
    /// The key of `--http-cert` (PEM).
    #[arg(long, requires = "http_cert")]
    http_key: Option<PathBuf>,
    /// Require an access token with the right for every request (`chorus token
    /// create`; while no token exists, the first may be created from this machine).
    #[arg(long)]
    auth: bool,
    /// With --auth: requests a second each token may make on average (bursts of as
    /// many); beyond it, 429 with Retry-After. Unlimited when not given.
    #[arg(long, requires = "auth", value_parser = positive_rate)]
    token_requests_per_s: Option<f64>,
    /// An origin (`https://app.example.com`, or `*` for any) whose browser pages may
    /// call the API (CORS); repeatable.
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// Run with plain, unauthenticated peer links or HTTP API on addresses reachable
    /// beyond this machine (refused without it). Anyone who can reach the ports can
    /// then read, write and replicate as a member.
    #[arg(long)]
    insecure: bool,
    /// Op-log entries kept for a peer that has not acknowledged them (a peer that is
    /// down); past this the oldest are collected and that peer gets a state transfer
    /// when it returns.
    #[arg(long, default_value_t = EngineLimits::default().retention_entries_max)]
    log_retention_entries: u64,
    /// The same bound in bytes of op log.
    #[arg(long, default_value_t = EngineLimits::default().retention_bytes_max)]
    log_retention_bytes: u64,
    /// The same bound in age: entries older than this many seconds are collected.
    #[arg(long, default_value_t = EngineLimits::default().retention_age_ms_max / 1000)]
    log_retention_age_s: u64,
    /// How often deleted documents every cluster member has applied are collected
    /// (each collection scans the store).
    #[arg(long, default_value_t = EngineLimits::default().tombstone_collection_ms)]
    tombstone_collection_ms: u64,
    /// Silence after which a peer link is considered dead (keepalives go every
    /// third of it); its neighbours link around it after the cluster's heal_after_ms.
    #[arg(long, default_value_t = EngineLimits::default().peer_timeout_ms)]
    peer_timeout_ms: u64,
    /// Emulate wide-area conditions on this node's frames to one peer, e.g.
    /// `b:delay=40,jitter=5,loss=0.01` or `b:partitioned` (repeatable; overrides the
    /// cluster file's [[emulate]] for that peer).
    #[arg(long, value_name = "PEER:CONDITIONS", value_parser = parse_emulate)]
    emulate: Vec<(String, LinkEmulation)>,
    /// How long conflict records are kept, in seconds after the newest version they
    /// involve (by its HLC); the values of lww losers can be restored until then.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    conflict_retention_s: u64,
    /// How long this node keeps its record of a device that received every answer
    /// and uploaded nothing since, in seconds (a record still needed is kept).
    #[arg(long, default_value_t = 90 * 24 * 3600)]
    device_record_retention_s: u64,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = chorus_node::limits::DOCUMENT_BYTES_MAX)]
    body_bytes_max: usize,
    /// Open HTTP connections at most; more are closed as soon as they are accepted
    /// (keep it below the process's file-descriptor limit).
    #[arg(long, default_value_t = chorus_server::CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// How long a client may take to send a request head, or stay idle between
    /// requests, before its connection is closed (milliseconds).
    #[arg(long, default_value_t = chorus_server::HEADER_READ_TIMEOUT_DEFAULT.as_millis() as u64)]
    header_timeout_ms: u64,
    /// How long a client may take to send a request body before it gets 408
    /// (milliseconds).
    #[arg(long, default_value_t = chorus_server::BODY_READ_TIMEOUT_DEFAULT.as_millis() as u64)]
    body_timeout_ms: u64,
}

/// File name of the store inside the data folder.
const STORE_FILE: &str = "chorus.redb";

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// Whether every address `address` resolves to is on this machine.
fn loopback_only(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
}

/// Refuses to expose a node beyond this machine without protection: the peer port
/// needs `--certs` (mutual TLS), the HTTP API `--auth` and `--http-cert` (tokens over
/// TLS). `--insecure` allows it, and is then logged loudly.
fn check_exposure(
    http: &str,
    peer: Option<&str>,
    certs: bool,
    protected_http: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    let exposed_peer = peer.filter(|p| !certs && !loopback_only(p));
    let exposed_http = (!protected_http && !loopback_only(http)).then_some(http);
    if insecure {
        if exposed_peer.is_some() || exposed_http.is_some() {
            tracing::warn!(
                http,
                peer,
                "--insecure: this node is reachable beyond this machine without authentication; \
                 anyone who can reach it can read, write and replicate as a member"
            );
        }
        return Ok(());
    }
    if let Some(peer) = exposed_peer {
        bail!(
            "the peer address {peer} is reachable beyond this machine: give --certs DIR \
             (made by `chorus cluster certs`) for mutual TLS, or --insecure to run unprotected"
        );
    }
    if let Some(http) = exposed_http {
        bail!(
            "the HTTP address {http} is reachable beyond this machine: give --auth and \
             --http-cert/--http-key (tokens over TLS), bind it to 127.0.0.1 (--http), or \
             give --insecure to run unprotected"
        );
    }
    Ok(())
}

/// `chorus restore`: a backup into an empty data folder, as a new replica.
pub fn restore(data: &Path, backup: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data folder {}", data.display()))?;
    let meta = chorus_node::restore_backup(backup, &data.join(STORE_FILE))?;
    println!(
        "restored node {:?} into {} as a new replica (node id {:016x}); start it with \
         chorus serve --data {} (and its --cluster/--node)",
        meta.name,
        data.display(),
        meta.node_id,
        data.display()
    );
    Ok(())
}

/// `chorus cluster certs`: the cluster's CA and a certificate per node.
pub fn cluster_certs(cluster: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let config = ClusterConfig::load(cluster)?;
    let host = |address: &str| {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    };
    let nodes: Vec<NodeCertificate> = config
        .nodes
        .iter()
        .map(|n| NodeCertificate {
            name: n.name.clone(),
            hosts: vec![host(&n.http), host(&n.peer)],
        })
        .collect();
    let made = chorus_peer::tls::generate(&nodes, out)?;
    if made.new_ca {
        println!(
            "wrote {} and {}",
            out.join("ca.pem").display(),
            out.join("ca.key").display()
        );
    }
    for name in &made.nodes {
        println!("wrote {0}.pem and {0}.key", out.join(name).display());
    }
    let kept = config.names().len() - made.nodes.len();
    if kept > 0 {
        println!("kept the files of {kept} node(s) already there");
    }
    println!(
        "copy ca.pem and NODE.pem, NODE.key to each node and start it with --certs DIR; \
         keep ca.key off the nodes"
    );
    Ok(())
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs written to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cluster = match (&args.cluster, &args.node) {
        (Some(path), Some(name)) => {
            let cluster = ClusterConfig::load(path)?;
            if cluster.node(name).is_none() {
                bail!(
                    "node {name:?} is not in the cluster file {}",
                    path.display()
                );
            }
            for (peer, _) in &args.emulate {
                if cluster.node(peer).is_none() {
                    bail!("--emulate names {peer:?}, not a node of the cluster file");
                }
            }
            Some((cluster, name.clone()))
        }
        _ if !args.emulate.is_empty() => bail!("--emulate needs --cluster and --node"),
        _ => None,
    };
    let name = cluster
        .as_ref()
        .map_or(args.name.clone(), |(_, me)| me.clone());
    let http = match (&args.http, &cluster) {
        (Some(http), _) => http.clone(),
        (None, Some((cluster, me))) => cluster.node(me).expect("checked").http.clone(),
        (None, None) => "127.0.0.1:7070".into(),
    };
    let peer = cluster
        .as_ref()
        .map(|(cluster, me)| cluster.node(me).expect("checked").peer.clone());
    let protected_http = args.auth && args.http_cert.is_some();
    check_exposure(
        &http,
        peer.as_deref(),
        args.certs.is_some(),
        protected_http,
        args.insecure,
    )?;
    let http_tls = match (&args.http_cert, &args.http_key) {
        (Some(cert), Some(key)) => Some(Arc::new(chorus_peer::tls::server_config(cert, key)?)),
        _ => None,
    };
    // Forwarded writes trust the cluster's CA, when the node has one.
    let https_ca = match (&http_tls, &args.certs) {
        (Some(_), Some(certs)) => {
            let ca = certs.join("ca.pem");
            Some(std::fs::read(&ca).with_context(|| format!("cannot read {}", ca.display()))?)
        }
        _ => None,
    };
    // The HTTP port first: a node that cannot listen leaves no data folder behind.
    let listener = std::net::TcpListener::bind(&http).with_context(|| {
        format!("cannot listen on {http}; is another node using it? (use --http)")
    })?;
    listener.set_nonblocking(true)?;
    // Before anything records a metric (opening the store, replication).
    chorus_server::install_metrics();
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data folder {}", args.data.display()))?;
    let node = Node::open(
        &args.data.join(STORE_FILE),
        NodeConfig {
            name: name.clone(),
            ..NodeConfig::default()
        },
    )?;
    if node.name() != name {
        bail!(
            "the data folder {} belongs to node {:?}, not {name:?}; use its own folder",
            args.data.display(),
            node.name()
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let limits = EngineLimits {
            retention_entries_max: args.log_retention_entries,
            retention_bytes_max: args.log_retention_bytes,
            retention_age_ms_max: args.log_retention_age_s.saturating_mul(1000),
            tombstone_collection_ms: args.tombstone_collection_ms,
            peer_timeout_ms: args.peer_timeout_ms,
            keepalive_ms: (args.peer_timeout_ms / 3).clamp(1, 1_000),
            ..EngineLimits::default()
        };
        let options = replication::Options {
            limits,
            emulate: args.emulate.iter().cloned().collect(),
            certs: args.certs.clone(),
        };
        // Replication runs beside the API for as long as the server does.
        let mut reload_cluster = None;
        let replication = match (cluster, &args.cluster) {
            (Some((cluster, me)), Some(path)) => {
                let replication =
                    Arc::new(replication::start(node.clone(), cluster, &me, options).await?);
                let reload = reload_from(path.clone(), replication.clone());
                tokio::spawn(reload_on_hangup(reload.clone()));
                reload_cluster = Some(reload);
                Some(replication)
            }
            _ => None,
        };
        tokio::spawn(apply_retention(
            node.clone(),
            Duration::from_secs(args.conflict_retention_s),
            Duration::from_secs(args.device_record_retention_s),
        ));
        let address = listener.local_addr()?;
        println!(
            "chorus: node {} serving {}://{address} (data in {})",
            node.name(),
            if args.http_cert.is_some() {
                "https"
            } else {
                "http"
            },
            args.data.display()
        );
        std::io::stdout().flush()?;
        let config = ServerConfig {
            body_bytes_max: args.body_bytes_max,
            connections_max: args.connections_max,
            header_read_timeout: Duration::from_millis(args.header_timeout_ms),
            body_read_timeout: Duration::from_millis(args.body_timeout_ms),
            reload_cluster,
            cluster: replication.clone(),
            auth: args.auth,
            tls: http_tls,
            https_ca,
            peer_tls: args.certs.is_some(),
            insecure: args.insecure,
            token_requests_per_s: args.token_requests_per_s,
            cors_origins: chorus_server::CorsOrigins(Arc::new(args.cors_origin.clone())),
        };
        chorus_server::serve(listener, node, config, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn parse_emulate(spec: &str) -> Result<(String, LinkEmulation), String> {
    let (peer, conditions) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?} is not PEER:CONDITIONS, e.g. b:delay=40,jitter=5"))?;
    Ok((peer.to_owned(), LinkEmulation::parse(conditions)?))
}

/// Re-reads the cluster file at `path` and hands it to the running replication.
fn reload_from(path: PathBuf, replication: Arc<Replication>) -> chorus_server::ReloadCluster {
    Arc::new(move || {
        let (path, replication) = (path.clone(), replication.clone());
        Box::pin(async move { reload(&path, &replication).await })
    })
}

async fn reload(path: &Path, replication: &Replication) -> Result<Vec<String>, String> {
    let cluster = ClusterConfig::load(path).map_err(|e| e.to_string())?;
    let names = cluster.names();
    replication
        .reconfigure(cluster)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(file = %path.display(), nodes = ?names, "cluster file reloaded");
    Ok(names)
}

/// Reloads the cluster file on every SIGHUP, as daemons do.
async fn reload_on_hangup(reload: chorus_server::ReloadCluster) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return tracing::warn!("cannot install the SIGHUP handler; use POST /v1/cluster/reload");
    };
    while hangup.recv().await.is_some() {
        if let Err(error) = reload().await {
            tracing::error!(error, "cluster file not reloaded; nothing changed");
        }
    }
}

/// Applies the conflict log's retention and the retention of device records: every
/// tenth of each (between 1 s and 10 min), removes what is older.
async fn apply_retention(node: Node, conflicts: Duration, device_records: Duration) {
    let period = (conflicts.min(device_records) / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut interval = tokio::time::interval(period);
    loop {
        interval.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let before = |retention: Duration| now_ms.saturating_sub(retention.as_millis() as u64);
        if let Err(error) = node.prune_conflicts(before(conflicts)).await {
            tracing::warn!(%error, "cannot prune the conflict log");
        }
        let (expiring, before_ms) = (node.clone(), before(device_records));
        match tokio::task::spawn_blocking(move || expiring.expire_device_records(before_ms)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(count)) => tracing::info!(count, "expired records of devices"),
            Ok(Err(error)) => tracing::warn!(%error, "cannot expire records of devices"),
            Err(error) => tracing::warn!(%error, "the expiry of device records stopped"),
        }
    }
}
