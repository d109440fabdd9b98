//! Replication figures: two leaders in this process, linked over loopback TCP by the
//! real replication runtime, each applying durably.
//!
//! - catch-up throughput: `entries` writes made on `a` while `b` is unlinked, then
//!   the time for `b` to apply them all once the link comes up;
//! - lag under a steady load: writes at a fixed rate on `a`; for each, the time from
//!   its acknowledgement on `a` to its durable visibility on `b`;
//! - beside them, in the same run: the closed-loop write rate of a lone node, and of
//!   `a` while it replicates to `b`.

use crate::document;
use crate::load::{Stats, embedded_writes};
use chorus_node::{Node, NodeConfig};
use chorus_peer::cluster::ClusterConfig;
use chorus_peer::replication;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ReplicationArgs {
    /// Entries written on `a` before `b` links up.
    #[arg(long, default_value_t = 50_000)]
    entries: u64,
    /// Writes per second of the steady load.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of steady load, and of each closed-loop run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of the closed-loop runs.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

/// Key space of the closed-loop runs (large: nearly every write creates a document).
const KEYS: u64 = 10_000_000;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn cluster() -> anyhow::Result<ClusterConfig> {
    let mut text = String::from("cluster = \"bench\"\ntopology = \"mesh\"\n");
    for name in ["a", "b"] {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\nhttp = \"127.0.0.1:0\"\npeer = \"127.0.0.1:{}\"\n",
            free_port()?
        ));
    }
    ClusterConfig::from_toml(&text).map_err(anyhow::Error::msg)
}

pub fn open(dir: &Path, name: &str) -> anyhow::Result<Node> {
    Ok(Node::open(
        &dir.join(format!("{name}.redb")),
        NodeConfig {
            name: name.into(),
            ..NodeConfig::default()
        },
    )?)
}

/// Blocks until `node` has applied every entry `a` has made (its own dot counter).
pub fn wait_caught_up(node: &Node, a: &Node) -> anyhow::Result<()> {
    let target = a.replica().position()?.applied.get(a.node_id());
    while node.replica().position()?.applied.get(a.node_id()) < target {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

pub fn run(args: &ReplicationArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let duration = Duration::from_secs(args.seconds);
    println!("replication between two leaders on loopback, durable apply on both");

    let lone = open(dir.path(), "lone")?;
    let lone_stats = embedded_writes(&lone, args.clients, duration, KEYS);
    print_closed("lone node writes", &lone_stats);

    let cluster = cluster()?;
    let (a, b) = (open(dir.path(), "a")?, open(dir.path(), "b")?);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let writers: Vec<_> = (0..args.clients as u64)
            .map(|t| {
                let a = &a;
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (t..args.entries).step_by(args.clients) {
                        a.put(
                            "bench",
                            &format!("pre-{i}"),
                            document(i, i).as_bytes(),
                            None,
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|w| w.join().expect("writer thread"))
    })?;
    // b has written something of its own: a node that arrives empty gets a state
    // transfer instead, and this measures replaying the log.
    b.put("bench", "b-was-here", b"{}", None)?;
    let a_link = runtime.block_on(replication::start(
        a.clone(),
        cluster.clone(),
        "a",
        replication::Options::default(),
    ))?;
    let started = Instant::now();
    let b_link = runtime.block_on(replication::start(
        b.clone(),
        cluster.clone(),
        "b",
        replication::Options::default(),
    ))?;
    wait_caught_up(&b, &a)?;
    let catch_up = started.elapsed();
    let applied = b.replica().position()?.applied.get(a.node_id());
    println!(
        "{:>28}: {:>8.0} entries/s  ({applied} entries in {:.2} s)",
        "catch-up a → b",
        applied as f64 / catch_up.as_secs_f64(),
        catch_up.as_secs_f64()
    );

    // Steady load: writes at a fixed rate on a; b's change feed tells when each is
    // durably visible there.
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let lags_us: Arc<Mutex<Vec<u64>>> = Arc::default();
    let watcher = {
        let (b, acked, lags_us) = (b.clone(), Arc::clone(&acked), Arc::clone(&lags_us));
        let mut cursor = b.feed()?.last_seq;
        runtime.spawn(async move {
            loop {
                b.wait_for_changes(cursor).await;
                let Ok(page) = b.changes(cursor, 1000, None, "") else {
                    return;
                };
                let now = Instant::now();
                for change in &page.changes {
                    if let Some(at) = acked.lock().unwrap().remove(&change.doc.key) {
                        lags_us
                            .lock()
                            .unwrap()
                            .push(now.duration_since(at).as_micros() as u64);
                    }
                }
                cursor = page.next;
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let load_started = Instant::now();
    let mut next = load_started;
    let mut i = 0u64;
    while load_started.elapsed() < duration {
        let key = format!("steady-{i}");
        a.put("bench", &key, document(i, i).as_bytes(), None)?;
        acked.lock().unwrap().insert(key, Instant::now());
        i += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    wait_caught_up(&b, &a)?;
    // The watcher sees the last entries a moment after they are applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !acked.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    watcher.abort();
    let lag = Stats::from_latencies_us(
        std::mem::take(&mut *lags_us.lock().unwrap()),
        load_started.elapsed(),
    );
    println!(
        "{:>28}: p50 {:.2} ms  p99 {:.2} ms  ({} writes at {}/s)",
        "lag a → b (ack → visible)", lag.p50_ms, lag.p99_ms, lag.ops, args.rate
    );

    let replicated = embedded_writes(&a, args.clients, duration, KEYS);
    print_closed("a writes while replicating", &replicated);
    println!(
        "\nreplicating leader ÷ lone node (write throughput): {:.2}",
        replicated.ops_per_s() / lone_stats.ops_per_s()
    );
    println!(
        "catch-up apply rate ÷ lone node write rate: {:.2}",
        applied as f64 / catch_up.as_secs_f64() / lone_stats.ops_per_s()
    );
    drop((a_link, b_link));
    Ok(())
}

fn print_closed(name: &str, stats: &Stats) {
    println!(
        "{name:>28}: {:>8.0} writes/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        stats.ops_per_s(),
        stats.p50_ms,
        stats.p99_ms
    );
}
