//! `crdt`: CRDT operations per second, and what CRDT documents cost in metadata.
//!
//! Throughput: the same closed loop (`clients` threads, random keys of `keys`
//! documents) for each contender, through the library API and through HTTP on
//! loopback: `counter.add` of 1 to `/n`, and `set.add` of a new element to `/s`,
//! against the baseline of a plain durable write (a small JSON document to a new
//! key) through the same interface, in the same run.
//!
//! Metadata: `leaders` replicas of `docs` CRDT documents (the real key states and
//! deltas of `chorus-core`, in memory) make `ops` operations in all: half `set.add`
//! of one of 400 elements per document (re-adding a present element is common),
//! a quarter `set.remove` of a present element, a quarter `counter.add`. After each
//! round of 1,000 operations every replica receives the others' in causal order,
//! so rounds are concurrent. At the end: bytes of each stored document (state, plus
//! the key's causal context) less the bytes of what a plain JSON document would hold
//! (element and field text, 8 bytes per number), per live element.

use crate::load::{Stats, run_closed_loop};
use crate::{InProcessServer, agent};
use anyhow::Context as _;
use chorus_node::crdt::{self, Field, Kind, Operation, Update};
use chorus_node::{CollectionConfig, Dot, Hlc, KeyState, Node, NodeId, Op, Policy};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct CrdtArgs {
    /// Seconds each throughput contender runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Documents the throughput clients write to.
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// Operations of the metadata run, over all leaders.
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    /// Leaders of the metadata run.
    #[arg(long, default_value_t = 5)]
    leaders: u64,
    /// Documents of the metadata run.
    #[arg(long, default_value_t = 1_000)]
    docs: u64,
}

pub fn run(args: &CrdtArgs) -> anyhow::Result<()> {
    throughput(args)?;
    metadata(args);
    Ok(())
}

#[derive(Clone, Copy)]
enum Contender {
    Put,
    CounterAdd,
    SetAdd,
}

impl Contender {
    const ALL: [Contender; 3] = [Contender::Put, Contender::CounterAdd, Contender::SetAdd];

    fn name(self) -> &'static str {
        match self {
            Contender::Put => "plain put (baseline)",
            Contender::CounterAdd => "counter.add",
            Contender::SetAdd => "set.add",
        }
    }
}

/// A unique element for `set.add`, per run.
fn element(next: &AtomicU64) -> String {
    format!("e{}", next.fetch_add(1, Ordering::Relaxed))
}

fn throughput(args: &CrdtArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    println!(
        "CRDT operations: {} clients, {} s each, {} documents; baseline: a plain put of a new small document",
        args.clients, args.seconds, args.keys
    );
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for interface in ["library", "http"] {
        let mut baseline = None;
        for (i, contender) in Contender::ALL.into_iter().enumerate() {
            let path = dir.path().join(format!("{interface}-{i}.redb"));
            let node = crdt_node(&path)?;
            let stats = match interface {
                "library" => library(&node, contender, args, duration),
                _ => http(node, contender, args, duration)?,
            };
            let base = *baseline.get_or_insert(stats.ops_per_s());
            println!(
                "{interface:>8} {:>22}: {:>8.0} ops/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({:.2}x the plain put)",
                contender.name(),
                stats.ops_per_s(),
                stats.p50_ms,
                stats.p99_ms,
                stats.ops_per_s() / base
            );
            rows.push((interface, contender, stats, base));
        }
    }
    println!("\n| interface | operation | ops/s | p50 ms | p99 ms | ÷ plain put |");
    println!("|---|---|---:|---:|---:|---:|");
    for (interface, contender, stats, base) in &rows {
        println!(
            "| {interface} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            contender.name(),
            stats.ops_per_s(),
            stats.p50_ms,
            stats.p99_ms,
            stats.ops_per_s() / base
        );
    }
    Ok(())
}

fn crdt_node(path: &std::path::Path) -> anyhow::Result<Node> {
    let node = chorus_node::open(path)?;
    let config = CollectionConfig {
        policy: Policy::Crdt,
        ..CollectionConfig::default()
    };
    node.set_collection("c", &config)?;
    Ok(node)
}

fn library(node: &Node, contender: Contender, args: &CrdtArgs, duration: Duration) -> Stats {
    let next = AtomicU64::new(0);
    let keys = if matches!(contender, Contender::Put) {
        u64::MAX
    } else {
        args.keys
    };
    run_closed_loop(args.clients, duration, keys, |key, i| {
        let key = format!("key-{key}");
        let update = match contender {
            Contender::Put => {
                node.put("plain", &key, format!("{{\"n\":{i}}}").as_bytes(), None)?;
                return Ok(());
            }
            Contender::CounterAdd => Update::CounterAdd(1),
            Contender::SetAdd => Update::SetAdd(format!("\"{}\"", element(&next)).into_bytes()),
        };
        let path = vec![
            if matches!(contender, Contender::SetAdd) {
                "s"
            } else {
                "n"
            }
            .to_owned(),
        ];
        node.update("c", &key, vec![Operation { path, update }])?;
        Ok(())
    })
}

fn http(
    node: Node,
    contender: Contender,
    args: &CrdtArgs,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let server = InProcessServer::start(node)?;
    let agent = agent(args.clients);
    let next = AtomicU64::new(0);
    let keys = if matches!(contender, Contender::Put) {
        u64::MAX
    } else {
        args.keys
    };
    let stats = run_closed_loop(args.clients, duration, keys, |key, i| {
        let response = match contender {
            Contender::Put => agent
                .put(&format!("{}/v1/docs/plain/key-{key}", server.url))
                .send(format!("{{\"n\":{i}}}").as_bytes()),
            Contender::CounterAdd | Contender::SetAdd => {
                let body = match contender {
                    Contender::CounterAdd => {
                        r#"[{"op":"counter.add","path":"/n","by":1}]"#.to_owned()
                    }
                    _ => format!(
                        r#"[{{"op":"set.add","path":"/s","value":"{}"}}]"#,
                        element(&next)
                    ),
                };
                agent
                    .post(&format!("{}/v1/docs/c/key-{key}/ops", server.url))
                    .send(body.as_bytes())
            }
        }
        .context("request")?;
        anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
        Ok(())
    });
    server.stop()?;
    Ok(stats)
}

/// One replica of the metadata run: its documents and its vector.
struct Replica {
    id: NodeId,
    docs: Vec<KeyState>,
    counter: u64,
}

fn metadata(args: &CrdtArgs) {
    let started = Instant::now();
    let mut replicas: Vec<Replica> = (0..args.leaders)
        .map(|i| Replica {
            id: NodeId(0x5EED_0000 + i),
            docs: vec![KeyState::new(); args.docs as usize],
            counter: 0,
        })
        .collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let round_ops = 1_000;
    let mut made = 0;
    while made < args.ops {
        let mut round: Vec<(usize, Op)> = Vec::new();
        for _ in 0..round_ops.min(args.ops - made) {
            let r = (next() % args.leaders) as usize;
            let d = (next() % args.docs) as usize;
            let replica = &mut replicas[r];
            let state = &mut replica.docs[d];
            let mut doc = state.crdt_document().cloned().unwrap_or_default();
            let roll = next() % 4;
            let update = match roll {
                0 | 1 => Update::SetAdd(format!("\"e{}\"", next() % 400).into_bytes()),
                2 => match doc.get(&["s".to_owned()], Kind::Set) {
                    Some(Field::Set(elements)) if !elements.is_empty() => {
                        let at = (next() % elements.len() as u64) as usize;
                        Update::SetRemove(elements.keys().nth(at).expect("in range").clone())
                    }
                    _ => Update::CounterAdd(1),
                },
                _ => Update::CounterAdd(1),
            };
            let path = vec![
                if matches!(update, Update::CounterAdd(_)) {
                    "n"
                } else {
                    "s"
                }
                .to_owned(),
            ];
            replica.counter += 1;
            let dot = Dot::new(replica.id, replica.counter);
            let hlc = Hlc(made + 1);
            let delta = crdt::prepare(
                &mut doc,
                state.context(),
                dot,
                hlc,
                &[Operation { path, update }],
            )
            .expect("valid operations");
            let op = Op {
                dot,
                hlc,
                collection: "c".into(),
                key: format!("doc-{d}"),
                context: state.context().clone(),
                value: Some(crdt::encode_delta(&delta)),
            };
            state.apply(&op).expect("valid delta");
            round.push((r, op));
            made += 1;
        }
        // Everyone receives the others' operations of the round, each origin's in order.
        for (r, replica) in replicas.iter_mut().enumerate() {
            for (origin, op) in &round {
                if *origin != r {
                    let d: usize = op.key["doc-".len()..].parse().expect("doc key");
                    replica.docs[d].apply(op).expect("valid delta");
                }
            }
        }
    }
    let first = &replicas[0];
    assert!(
        replicas.iter().all(|r| r
            .docs
            .iter()
            .zip(&first.docs)
            .all(|(a, b)| a.crdt_document() == b.crdt_document())),
        "replicas converge"
    );
    let (mut stored, mut payload, mut elements, mut dots) = (0usize, 0usize, 0usize, 0usize);
    for state in &first.docs {
        let Some(doc) = state.crdt_document() else {
            continue;
        };
        // The key's causal context as the store writes it: one (node, counter) each.
        stored += crdt::encode_state(doc).len() + state.context().len() * 16;
        for (name, _, field) in doc.fields() {
            payload += name.len();
            match field {
                Field::Set(set) => {
                    elements += set.len();
                    dots += set.values().map(|d| d.len()).sum::<usize>();
                    payload += set.keys().map(Vec::len).sum::<usize>();
                }
                _ => payload += 8,
            }
        }
    }
    println!(
        "\nmetadata after {} operations on {} leaders ({} documents, {:.1} s): {} live set elements",
        args.ops,
        args.leaders,
        args.docs,
        started.elapsed().as_secs_f64(),
        elements
    );
    println!(
        "stored {} B, of which plain JSON content {} B: metadata {:.1} B per element ({:.2}x the content); {:.2} dots per element",
        stored,
        payload,
        (stored - payload) as f64 / elements.max(1) as f64,
        stored as f64 / payload.max(1) as f64,
        dots as f64 / elements.max(1) as f64
    );
}
