//! `chorus serve`: open the store, serve the API, stop cleanly on Ctrl-C or SIGTERM.

use anyhow::{Context as _, bail};
use chorus_node::cluster::ClusterConfig;
use chorus_node::replication;
use chorus_node::replication::EngineLimits;
use chorus_node::{Node, NodeConfig};
use chorus_server::ServerConfig;
use std::io::Write as _;
use std::path::PathBuf;

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
    /// Op-log entries kept for a peer that has not acknowledged them (a peer that is
    /// down); past this the oldest are collected and that peer gets a state transfer
    /// when it returns.
    #[arg(long, default_value_t = EngineLimits::default().retention_entries)]
    log_retention_entries: u64,
    /// The same bound in bytes of op log.
    #[arg(long, default_value_t = EngineLimits::default().retention_bytes)]
    log_retention_bytes: u64,
    /// The same bound in age: entries older than this many seconds are collected.
    #[arg(long, default_value_t = EngineLimits::default().retention_age_ms / 1000)]
    log_retention_age_s: u64,
    /// How often deleted documents every cluster member has applied are collected
    /// (each collection scans the store).
    #[arg(long, default_value_t = EngineLimits::default().tombstone_collection_ms)]
    tombstone_collection_ms: u64,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = chorus_node::limits::DOCUMENT_BYTES_MAX)]
    body_bytes_max: usize,
}

/// File name of the store inside the data folder.
const STORE_FILE: &str = "chorus.redb";

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cluster = match (&args.cluster, &args.node) {
        (Some(path), Some(name)) => {
            let cluster = ClusterConfig::load(path).map_err(anyhow::Error::msg)?;
            if cluster.node(name).is_none() {
                bail!(
                    "node {name:?} is not in the cluster file {}",
                    path.display()
                );
            }
            Some((cluster, name.clone()))
        }
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
        let listener = tokio::net::TcpListener::bind(&http)
            .await
            .with_context(|| {
                format!("cannot listen on {http}; is another node using it? (use --http)")
            })?;
        let limits = EngineLimits {
            retention_entries: args.log_retention_entries,
            retention_bytes: args.log_retention_bytes,
            retention_age_ms: args.log_retention_age_s.saturating_mul(1000),
            tombstone_collection_ms: args.tombstone_collection_ms,
            ..EngineLimits::default()
        };
        // Replication runs beside the API for as long as the server does.
        let _replication = match cluster {
            Some((cluster, me)) => {
                Some(replication::start(node.clone(), cluster, &me, limits).await?)
            }
            None => None,
        };
        let address = listener.local_addr()?;
        println!(
            "chorus: node {} serving http://{address} (data in {})",
            node.name(),
            args.data.display()
        );
        std::io::stdout().flush()?;
        let config = ServerConfig {
            body_bytes_max: args.body_bytes_max,
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
