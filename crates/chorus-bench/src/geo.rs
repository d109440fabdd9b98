//! The multi-datacenter claim, measured: leaders in this process, linked by the real
//! replication runtime over loopback TCP with the transport's link emulation giving
//! them wide-area one-way delays (by default 40 ms between dc1 and dc2, 70 ms dc1 to
//! dc3, 90 ms dc2 to dc3).
//!
//! - client write latency: in multi-leader mode each datacenter's client writes to
//!   its own leader; in single-leader mode every client writes to dc1's leader and
//!   pays the round trip to it (the bench holds each request and its answer for the
//!   one-way delay between the client's datacenter and dc1, as the link would);
//! - visibility: from the moment a client issues a write to the moment every
//!   datacenter's leader has applied it, in both modes;
//! - partition: dc3 is cut off from both others while every datacenter writes, then
//!   the partition heals: the time until all three digests are equal;
//! - a dead ring node: five leaders in a ring, every link 20 ms one way; the time for
//!   a write on r1 to reach r3 through r2, right after r2 dies (the long way round),
//!   and once the ring has healed around it (the link r1–r3), and how long healing
//!   took.

use crate::document;
use crate::load::Stats;
use crate::replication::free_port;
use chorus_node::{Node, NodeConfig};
use chorus_peer::cluster::ClusterConfig;
use chorus_peer::replication::{self, Replication};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct GeoArgs {
    /// Writes per datacenter client in each mode.
    #[arg(long, default_value_t = 50)]
    writes: u64,
    /// One-way delays dc1–dc2, dc1–dc3, dc2–dc3 in ms.
    #[arg(long, value_delimiter = ',', default_value = "40,70,90")]
    delays_ms: Vec<u64>,
    /// Jitter added to every frame, in ms.
    #[arg(long, default_value_t = 2)]
    jitter_ms: u64,
    /// Writes per datacenter while dc3 is partitioned.
    #[arg(long, default_value_t = 1_000)]
    partition_writes: u64,
    /// The clusters' heal_after_ms (how long a node is unreachable before its
    /// neighbours link around it).
    #[arg(long, default_value_t = 1_000)]
    heal_after_ms: u64,
}

/// A local cluster: nodes, their replication, and the file text it came from.
struct Local {
    nodes: Vec<Node>,
    links: Vec<Option<Replication>>,
    /// The cluster file without its `[[emulate]]` entries.
    base: String,
}

impl Local {
    fn start(
        runtime: &tokio::runtime::Runtime,
        dir: &Path,
        header: &str,
        names: &[&str],
        emulate: &str,
    ) -> anyhow::Result<Local> {
        let mut base = format!("cluster = \"geo\"\n{header}\n");
        for name in names {
            base.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nhttp = \"127.0.0.1:0\"\npeer = \"127.0.0.1:{}\"\n",
                free_port()?
            ));
        }
        let config =
            ClusterConfig::from_toml(&format!("{base}{emulate}")).map_err(anyhow::Error::msg)?;
        let mut local = Local {
            nodes: Vec::new(),
            links: Vec::new(),
            base,
        };
        for name in names {
            let node = Node::open(
                &dir.join(format!("{name}.redb")),
                NodeConfig {
                    name: name.to_string(),
                    ..NodeConfig::default()
                },
            )?;
            let link = runtime.block_on(replication::start(
                node.clone(),
                config.clone(),
                name,
                replication::Options::default(),
            ))?;
            local.nodes.push(node);
            local.links.push(Some(link));
        }
        Ok(local)
    }

    /// Hands every running node the cluster file with `emulate` as its conditions.
    fn set_emulation(
        &self,
        runtime: &tokio::runtime::Runtime,
        emulate: &str,
    ) -> anyhow::Result<()> {
        let config = ClusterConfig::from_toml(&format!("{}{emulate}", self.base))
            .map_err(anyhow::Error::msg)?;
        for link in self.links.iter().flatten() {
            runtime
                .block_on(link.reconfigure(config.clone()))
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// Waits until node `i` is linked to every peer in `peers`.
    fn wait_linked(&self, i: usize, peers: &[&str]) -> anyhow::Result<()> {
        wait(Duration::from_secs(60), "links to come up", || {
            let Some(link) = &self.links[i] else {
                return false;
            };
            let status = link.link_status();
            peers
                .iter()
                .all(|p| status.connected.iter().any(|c| c == p))
        })
    }

    /// Whether every node in `at` has applied `origin`'s own writes through `counter`.
    fn applied_everywhere(&self, at: &[usize], origin: usize, counter: u64) -> bool {
        let id = self.nodes[origin].node_id();
        at.iter().all(|&i| {
            self.nodes[i]
                .replica()
                .position()
                .is_ok_and(|p| p.applied.get(id) >= counter)
        })
    }
}

fn wait(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        anyhow::ensure!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

/// `[[emulate]]` entries giving each pair of `names` its one-way delay.
fn emulate(pairs: &[(&str, &str, u64)], jitter_ms: u64) -> String {
    pairs
        .iter()
        .map(|(a, b, delay)| {
            format!("[[emulate]]\nlink = [\"{a}\", \"{b}\"]\ndelay_ms = {delay}\njitter_ms = {jitter_ms}\n")
        })
        .collect()
}

/// One row of the latency table: per client, p50/p99 of write latency and of
/// visibility everywhere.
struct ModeResult {
    latency: Stats,
    visible: Stats,
}

pub fn run(args: &GeoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.delays_ms.len() == 3, "--delays-ms takes three numbers");
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let (d12, d13, d23) = (args.delays_ms[0], args.delays_ms[1], args.delays_ms[2]);
    println!(
        "three datacenters, one-way delays dc1–dc2 {d12} ms, dc1–dc3 {d13} ms, dc2–dc3 {d23} ms (jitter {} ms)",
        args.jitter_ms
    );
    let dcs = ["dc1", "dc2", "dc3"];
    let wan = emulate(
        &[
            ("dc1", "dc2", d12),
            ("dc1", "dc3", d13),
            ("dc2", "dc3", d23),
        ],
        args.jitter_ms,
    );
    let geo = Local::start(&runtime, dir.path(), "topology = \"mesh\"", &dcs, &wan)?;
    geo.wait_linked(0, &["dc2", "dc3"])?;
    geo.wait_linked(1, &["dc3"])?;
    // One-way delay from each datacenter's client to dc1 (the single leader).
    let to_dc1 = [0, d12, d13];

    println!(
        "\n| mode | client in | write p50 ms | write p99 ms | visible everywhere p50 ms | p99 ms |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for single_leader in [false, true] {
        let mode = if single_leader {
            "single leader (dc1)"
        } else {
            "multi-leader (nearest)"
        };
        let results: Vec<ModeResult> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|dc| {
                    let geo = &geo;
                    s.spawn(move || {
                        let (leader, client_delay) = if single_leader {
                            (0, Duration::from_millis(to_dc1[dc]))
                        } else {
                            (dc, Duration::ZERO)
                        };
                        client_writes(geo, dc, leader, client_delay, args.writes, mode)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect::<anyhow::Result<_>>()
        })?;
        for (dc, r) in results.iter().enumerate() {
            println!(
                "| {mode} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                dcs[dc], r.latency.p50_ms, r.latency.p99_ms, r.visible.p50_ms, r.visible.p99_ms
            );
        }
        let mean = |f: fn(&ModeResult) -> f64| results.iter().map(f).sum::<f64>() / 3.0;
        summary.push((mean(|r| r.latency.p50_ms), mean(|r| r.visible.p50_ms)));
    }
    println!(
        "\nsingle leader ÷ multi-leader, write p50 averaged over the clients: {:.1}x; visibility p50: {:.2}x",
        summary[1].0 / summary[0].0,
        summary[1].1 / summary[0].1
    );

    partition(&runtime, &geo, &wan, args.partition_writes)?;
    drop(geo);
    dead_ring_node(&runtime, dir.path(), args)?;
    Ok(())
}

/// `writes` writes by the client of datacenter `dc` to leader `leader`, one at a
/// time; each request and its answer are held for `client_delay` (the client's
/// one-way delay to that leader). Waits for each write to be visible everywhere
/// before the next.
fn client_writes(
    geo: &Local,
    dc: usize,
    leader: usize,
    client_delay: Duration,
    writes: u64,
    mode: &str,
) -> anyhow::Result<ModeResult> {
    let (mut latencies, mut visible) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let node = &geo.nodes[leader];
    for i in 0..writes {
        let issued = Instant::now();
        std::thread::sleep(client_delay);
        let key = format!("{mode}-{dc}-{i}");
        node.put("geo", &key, document(i, i).as_bytes(), None)?;
        let counter = node.replica().position()?.applied.get(node.node_id());
        std::thread::sleep(client_delay);
        latencies.push(issued.elapsed().as_micros() as u64);
        wait(
            Duration::from_secs(30),
            "a write to be visible everywhere",
            || geo.applied_everywhere(&[0, 1, 2], leader, counter),
        )?;
        visible.push(issued.elapsed().as_micros() as u64);
    }
    Ok(ModeResult {
        latency: Stats::from_latencies_us(latencies, started.elapsed()),
        visible: Stats::from_latencies_us(visible, started.elapsed()),
    })
}

/// Cuts dc3 off, writes on every side, heals, and times convergence.
fn partition(
    runtime: &tokio::runtime::Runtime,
    geo: &Local,
    wan: &str,
    writes: u64,
) -> anyhow::Result<()> {
    let cut = format!(
        "{wan}[[emulate]]\nlink = [\"dc1\", \"dc3\"]\npartitioned = true\n\
         [[emulate]]\nlink = [\"dc2\", \"dc3\"]\npartitioned = true\n"
    );
    geo.set_emulation(runtime, &cut)?;
    for (dc, node) in geo.nodes.iter().enumerate() {
        for i in 0..writes {
            node.put(
                "partition",
                &format!("dc{dc}-{i}"),
                document(i, i).as_bytes(),
                None,
            )?;
        }
    }
    let healed = Instant::now();
    geo.set_emulation(runtime, wan)?;
    wait(
        Duration::from_secs(120),
        "convergence after the partition",
        || {
            let digests: Vec<_> = geo.nodes.iter().filter_map(|n| n.digest().ok()).collect();
            digests.len() == 3 && digests.iter().all(|d| *d == digests[0])
        },
    )?;
    println!(
        "\npartition: dc3 cut off while each datacenter wrote {writes} documents; converged {:.2} s after the partition healed",
        healed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A ring of five with 20 ms links: how a write from r1 reaches r3 before r2 dies,
/// right after, and once the ring healed around it; then the same when r4 dies at
/// the same moment, so no path is left until the ring heals.
fn dead_ring_node(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    args: &GeoArgs,
) -> anyhow::Result<()> {
    println!(
        "\nring of five, 20 ms links, heal_after_ms {}: a write on r1 reaching r3\n\
         | situation | p50 ms | p99 ms |\n|---|---:|---:|",
        args.heal_after_ms
    );
    let row = |label: &str, stats: &Stats| {
        println!("| {label} | {:.1} | {:.1} |", stats.p50_ms, stats.p99_ms)
    };
    for (round, dead) in [(0, &[2][..]), (1, &[2, 4][..])] {
        let ring_dir = dir.join(format!("ring{round}"));
        std::fs::create_dir_all(&ring_dir)?;
        let (before, first, healed, heal_time) = ring_losing(runtime, &ring_dir, args, dead)?;
        if round == 0 {
            row("all alive (r1 → r2 → r3)", &before);
            row(
                "first write after r2 died (the long way: r1 → r0 → r4 → r3)",
                &first,
            );
        } else {
            row(
                "first write after r2 and r4 died at once (no path until healed)",
                &first,
            );
        }
        row("healed (link r1 – r3 around r2)", &healed);
        println!(
            "| time from the death to r1 linked with r3 | {:.0} | |",
            heal_time.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Starts a ring, samples r1 → r3 before, kills `dead`, samples the first write
/// and, once r1 links with r3, 20 more. Returns the samples and the healing time.
fn ring_losing(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    args: &GeoArgs,
    dead: &[usize],
) -> anyhow::Result<(Stats, Stats, Stats, Duration)> {
    let names = ["r0", "r1", "r2", "r3", "r4"];
    let mut pairs = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            pairs.push((*a, *b, 20));
        }
    }
    let header = format!(
        "topology = \"ring\"\nheal_after_ms = {}",
        args.heal_after_ms
    );
    let mut ring = Local::start(runtime, dir, &header, &names, &emulate(&pairs, 0))?;
    for i in 0..5 {
        ring.wait_linked(i, &[names[(i + 1) % 5], names[(i + 4) % 5]])?;
    }
    let sample = |ring: &Local, label: &str, count: u64| -> anyhow::Result<Stats> {
        let node = &ring.nodes[1];
        let mut times = Vec::new();
        let started = Instant::now();
        for i in 0..count {
            let issued = Instant::now();
            node.put("ring", &format!("{label}-{i}"), b"{}", None)?;
            let counter = node.replica().position()?.applied.get(node.node_id());
            wait(Duration::from_secs(60), "a write to reach r3", || {
                ring.applied_everywhere(&[3], 1, counter)
            })?;
            times.push(issued.elapsed().as_micros() as u64);
        }
        Ok(Stats::from_latencies_us(times, started.elapsed()))
    };
    let before = sample(&ring, "before", 20)?;
    // The nodes die: their replication stops at once (sockets closed, listener gone).
    let died = Instant::now();
    for &i in dead {
        ring.links[i] = None;
    }
    let first = sample(&ring, "first", 1)?;
    ring.wait_linked(1, &["r3"])?;
    let heal_time = died.elapsed();
    let healed = sample(&ring, "healed", 20)?;
    Ok((before, first, healed, heal_time))
}
