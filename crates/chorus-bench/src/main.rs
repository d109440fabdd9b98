//! `chorus-bench`: durable single-document writes, measured against baselines in the
//! same run (this machine is noisy, so only ratios within one run mean much).
//!
//! ```text
//! cargo run --release -p chorus-bench -- writes [--seconds 10] [--clients 64]
//! cargo run --release -p chorus-bench -- replication [--entries 50000] [--rate 1000]
//! cargo run --release -p chorus-bench -- retention [--writes 100000]
//! cargo run --release -p chorus-bench -- geo [--delays-ms 40,70,90]
//! cargo run --release -p chorus-bench -- crdt [--seconds 5] [--ops 1000000]
//! cargo run --release -p chorus-bench -- bulk [--docs 100000] [--batch 1000]
//! cargo run --release -p chorus-bench -- devices [--docs 100000] [--devices 10000]
//! cargo run --release -p chorus-bench -- text [--sizes 10000,100000,1000000]
//! cargo run --release -p chorus-bench -- pages [--keystrokes 300] [--wan-ms 40]
//! ```
//!
//! `writes`:
//!
//! every contender does the same closed loop: `clients` threads, each writing a
//! ~256-byte JSON document to a random key out of `keys`, waiting for the durable
//! acknowledgement, and writing again.
//! - `chorus http`: PUT /v1/docs over loopback HTTP to a node in this process.
//! - `chorus embedded`: the same node through its library API, no HTTP.
//! - `redb direct`: the same records into a bare redb table with the same durability
//!   (fsync per commit) and the same group commit (one writer thread batching).
//! - `postgres`: upserts into a jsonb table with `synchronous_commit = on`, driven by
//!   pgbench with the same client count, over loopback TCP (skipped with a note when
//!   PostgreSQL is not installed).
//!
//! `replication`, `retention`, `geo`, `crdt`, `bulk`, `devices`, `text`, `pages`: see
//! their modules.

mod bulk;
mod crdt;
mod devices;
mod geo;
mod load;
mod pages;
mod postgres;
mod redb_direct;
mod replication;
mod retention;
mod text;

use anyhow::Context as _;
use clap::Parser;
use load::{Stats, embedded_writes, run_closed_loop};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Benchmarks of Chorus against baselines measured in the same run")]
enum Bench {
    /// Durable single-document writes: Chorus (HTTP, embedded) against redb and PostgreSQL.
    Writes(Args),
    /// Replication between two leaders: catch-up throughput, lag under steady load.
    Replication(replication::ReplicationArgs),
    /// Disk use while a peer is down, with and without the retention bound.
    Retention(retention::RetentionArgs),
    /// Three emulated datacenters: multi- against single-leader latency, visibility,
    /// convergence after a partition, a dead ring node.
    Geo(geo::GeoArgs),
    /// CRDT operations per second (library and HTTP) against plain writes, and the
    /// metadata per set element after a million operations on five leaders.
    Crdt(crdt::CrdtArgs),
    /// Loading documents: the bulk API against single PUTs.
    Bulk(bulk::BulkArgs),
    /// Device replicas: initial sync, catch-up, metadata with many devices.
    Devices(devices::DevicesArgs),
    /// A keystroke into a long text against rewriting the document.
    Text(text::TextArgs),
    /// The pages in chromium: keystroke to visible on another leader's page, memory,
    /// assets; takes the screenshots in docs/screenshots again.
    Pages(pages::PagesArgs),
}

#[derive(clap::Args)]
struct Args {
    /// Seconds each contender runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Distinct keys written (uniformly at random). Large by default so that nearly
    /// every write creates a document: a blind write to an existing key in Chorus is
    /// concurrent with it (a sibling and a conflict record), which is more work than
    /// the overwrite an upsert does, and not the same operation.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// Skip the PostgreSQL comparison.
    #[arg(long)]
    skip_postgres: bool,
}

/// A document of about 256 bytes, the same for every contender.
pub fn document(key: u64, i: u64) -> String {
    format!(
        "{{\"id\":\"key-{key}\",\"name\":\"benchmark document\",\"n\":{i},\"tags\":[\"a\",\"b\"],\"pad\":\"{}\"}}",
        "x".repeat(160)
    )
}

fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Writes(args) => writes(&args),
        Bench::Replication(args) => replication::run(&args),
        Bench::Retention(args) => retention::run(&args),
        Bench::Geo(args) => geo::run(&args),
        Bench::Crdt(args) => crdt::run(&args),
        Bench::Bulk(args) => bulk::run(&args),
        Bench::Devices(args) => devices::run(&args),
        Bench::Text(args) => text::run(&args),
        Bench::Pages(args) => pages::run(&args),
    }
}

fn writes(args: &Args) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    println!(
        "durable single-document writes: {} clients, {} s each, {} keys, ~{} B documents",
        args.clients,
        args.seconds,
        args.keys,
        document(0, 0).len()
    );
    let mut results: Vec<(&str, Stats)> = Vec::new();

    let dir = tempfile::tempdir()?;
    let node = chorus_node::open(dir.path().join("http.redb"))?;
    results.push(("chorus http", chorus_http(node, args, duration)?));
    print_row(results.last().unwrap());

    let node = chorus_node::open(dir.path().join("embedded.redb"))?;
    let stats = embedded_writes(&node, args.clients, duration, args.keys);
    results.push(("chorus embedded", stats));
    print_row(results.last().unwrap());

    results.push((
        "redb direct",
        redb_direct::run(&dir.path().join("direct.redb"), args, duration)?,
    ));
    print_row(results.last().unwrap());

    if args.skip_postgres {
        println!("postgres: skipped (--skip-postgres)");
    } else {
        match postgres::run(args, duration) {
            Ok(stats) => {
                results.push(("postgres", stats));
                print_row(results.last().unwrap());
            }
            Err(e) => println!("postgres: not measured: {e:#}"),
        }
    }

    let http = results[0].1.clone();
    println!("\n| contender | writes/s | p50 ms | p99 ms | chorus http ÷ this (throughput) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, stats) in &results {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} |",
            stats.ops_per_s(),
            stats.p50_ms,
            stats.p99_ms,
            http.ops_per_s() / stats.ops_per_s()
        );
    }
    Ok(())
}

fn print_row((name, stats): &(&str, Stats)) {
    println!(
        "{name:>16}: {:>8.0} writes/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} writes)",
        stats.ops_per_s(),
        stats.p50_ms,
        stats.p99_ms,
        stats.ops
    );
}

fn chorus_http(node: chorus_node::Node, args: &Args, duration: Duration) -> anyhow::Result<Stats> {
    let server = InProcessServer::start(node)?;
    let agent = agent(args.clients);
    let stats = run_closed_loop(args.clients, duration, args.keys, |key, i| {
        let body = document(key, i);
        let response = agent
            .put(&format!("{}/v1/docs/bench/key-{key}", server.url))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .context("PUT")?;
        anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
        Ok(())
    });
    server.stop()?;
    Ok(stats)
}

/// An HTTP agent keeping a connection per client.
pub fn agent(clients: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_idle_connections_per_host(clients)
        .build()
        .into()
}

/// A node's HTTP API served over loopback from this process.
pub struct InProcessServer {
    pub url: String,
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcessServer {
    pub fn start(node: chorus_node::Node) -> anyhow::Result<InProcessServer> {
        let runtime = tokio::runtime::Runtime::new()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(chorus_server::serve(
            listener,
            node,
            Default::default(),
            async {
                let _ = stop_rx.await;
            },
        ));
        Ok(InProcessServer {
            url,
            runtime,
            stop,
            server,
        })
    }

    pub fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.runtime.block_on(self.server)??;
        Ok(())
    }
}
