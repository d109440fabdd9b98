//! `devices`: device replicas against a node in this process.
//!
//! - *Initial sync*: `--docs` documents bulk-loaded on the node, then a fresh device
//!   syncs them all; *catch-up*: `--changes` documents changed on the node, then the
//!   device syncs again. Figures: documents per second, and the bytes the device
//!   downloaded against the bytes of the documents themselves (the ratio is the
//!   protocol's overhead: versions, dots, contexts, JSON framing).
//! - *Metadata per document*: `--devices` distinct devices each write once to one of
//!   `--shared` documents (each write replacing what the device read), against the
//!   same writes made by one device, in the same run. Figures: a read's context token
//!   bytes and versions per document in both cases, and the node's upload records
//!   (one per device, node and collection).
//! - *Against PouchDB*, in the same run, when `bench/pouchdb` has its packages
//!   (`npm ci --prefix bench/pouchdb`) and `node` is on the PATH: the same documents,
//!   initial sync and catch-up, PouchDB replicating from express-pouchdb, both on
//!   leveldb (`bench/pouchdb/sync.mjs`).

use crate::{InProcessServer, agent, document};
use anyhow::Context as _;
use chorus_device::{Device, Subscription};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A loopback proxy to `target` counting the bytes it passes back to clients; its
/// URL and the counter.
fn counting_proxy(target: &str) -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let target = target.trim_start_matches("http://").to_owned();
    let counted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&counted);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            let (mut up_from, mut up_to) = (
                client.try_clone().expect("a socket"),
                server.try_clone().expect("a socket"),
            );
            std::thread::spawn(move || std::io::copy(&mut up_from, &mut up_to));
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                let (mut from, mut to) = (server, client);
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = std::io::Read::read(&mut from, &mut buffer) {
                    if n == 0 || std::io::Write::write_all(&mut to, &buffer[..n]).is_err() {
                        break;
                    }
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    Ok((url, counted))
}

#[derive(clap::Args)]
pub struct DevicesArgs {
    /// Documents of the initial sync.
    #[arg(long, default_value_t = 100_000)]
    docs: u64,
    /// Documents changed before the catch-up.
    #[arg(long, default_value_t = 10_000)]
    changes: u64,
    /// Distinct devices writing the shared documents.
    #[arg(long, default_value_t = 10_000)]
    devices: u64,
    /// Documents they write.
    #[arg(long, default_value_t = 1_000)]
    shared: u64,
}

pub fn run(args: &DevicesArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = InProcessServer::start(chorus_node::open(dir.path().join("node.redb"))?)?;
    let http = agent(1);
    // The device talks through a proxy that counts the bytes on the wire (answers
    // are gzipped for it).
    let (proxy, wire) = counting_proxy(&server.url)?;
    let urls = [proxy];
    let load = |first: u64, count: u64, round: u64| -> anyhow::Result<u64> {
        let mut bytes = 0;
        for start in (first..first + count).step_by(1000) {
            let end = (start + 1000).min(first + count);
            let docs: Vec<String> = (start..end)
                .map(|k| document(k, round))
                .inspect(|d| bytes += d.len() as u64)
                .enumerate()
                .map(|(i, d)| format!("{{\"key\":\"key-{}\",\"value\":{d}}}", start + i as u64))
                .collect();
            let body = format!("{{\"docs\":[{}]}}", docs.join(","));
            let response = http
                .post(&format!("{}/v1/bulk/bench", server.url))
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .context("POST /v1/bulk")?;
            anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
        }
        Ok(bytes)
    };

    println!(
        "initial sync of {} documents of ~{} B to a fresh device",
        args.docs,
        document(0, 0).len()
    );
    let docs_bytes = load(0, args.docs, 0)?;
    let device = Device::open(dir.path().join("device.redb"))?;
    let subscription = Subscription::collections(["bench"]);
    let initial = timed_sync(
        &device,
        &urls,
        &subscription,
        &wire,
        docs_bytes,
        "documents",
    )?;

    println!("catch-up after {} changed documents", args.changes);
    let changed_bytes = load(0, args.changes, 1)?;
    let catchup = timed_sync(
        &device,
        &urls,
        &subscription,
        &wire,
        changed_bytes,
        "changes",
    )?;

    compare_with_pouchdb(args, (initial, catchup))?;

    println!(
        "metadata per document: {} writes to {} documents by {} devices, against one device",
        args.devices, args.shared, args.devices
    );
    // Straight to the node: thousands of devices' connections need no counting.
    let direct = [server.url.clone()];
    let many = shared_writes(&dir, &direct, "many", args, args.devices)?;
    let one = shared_writes(&dir, &direct, "one", args, 1)?;
    println!(
        "  {} devices: {:.1} B of context and {:.2} versions per document; one device: {:.1} B and {:.2} (ratio {:.2})",
        args.devices,
        many.0,
        many.1,
        one.0,
        one.1,
        many.0 / one.0
    );
    let status: serde_json::Value = http
        .get(&format!("{}/v1/status", server.url))
        .call()?
        .body_mut()
        .read_json()?;
    println!(
        "  the node's records of devices: {} devices seen (one small document each per collection)",
        status["devices"]["seen"]
    );
    server.stop()
}

/// Syncs `device` once and prints the time, documents per second, and the bytes
/// downloaded (as JSON, and on the wire) against `source_bytes`, the bytes of what
/// changed; returns documents per second.
fn timed_sync(
    device: &Device,
    urls: &[String],
    subscription: &Subscription,
    wire: &AtomicU64,
    source_bytes: u64,
    what: &str,
) -> anyhow::Result<f64> {
    wire.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let report = device.sync(urls, subscription, &mut |_| {})?;
    let seconds = started.elapsed().as_secs_f64();
    let on_wire = wire.swap(0, Ordering::Relaxed);
    let per_s = report.progress.downloaded as f64 / seconds;
    let json = report.progress.bytes_down;
    println!(
        "  {seconds:.2} s, {} documents, {per_s:.0} documents/s; {json} B of JSON for {source_bytes} B of {what} ({:.2}×), {on_wire} B on the wire ({:.2}×)",
        report.progress.downloaded,
        json as f64 / source_bytes as f64,
        on_wire as f64 / source_bytes as f64
    );
    Ok(per_s)
}

/// `args.devices` writes to `args.shared` documents of `collection`, made in turn by
/// `devices` devices (each holding only the document it writes: a prefix
/// subscription), each write replacing what its device read; returns the mean
/// context-token bytes and versions per document as the node then reads them.
fn shared_writes(
    dir: &tempfile::TempDir,
    urls: &[String],
    collection: &str,
    args: &DevicesArgs,
    devices: u64,
) -> anyhow::Result<(f64, f64)> {
    let open = |d: u64| Device::open(dir.path().join(format!("{collection}-{d}.redb")));
    let mut reused = None;
    for w in 0..args.devices {
        let key = format!("shared-{:06}", w % args.shared);
        let subscription = Subscription::collections([collection]).with_prefix(&key);
        let own;
        let device = match devices {
            1 => {
                if reused.is_none() {
                    reused = Some(open(0)?);
                }
                reused.as_ref().expect("just opened")
            }
            _ => {
                own = open(w % devices)?;
                &own
            }
        };
        device.sync(urls, &subscription, &mut |_| {})?;
        device.put(collection, &key, &serde_json::json!({"by": w}))?;
        device.sync(urls, &subscription, &mut |_| {})?;
    }
    let client = chorus_client::Client::new(urls.iter().cloned())?;
    let (mut context_bytes, mut versions) = (0usize, 0usize);
    for s in 0..args.shared {
        let read = client
            .get(collection, &format!("shared-{s:06}"))?
            .context("a shared document")?;
        context_bytes += read["context"].as_str().map_or(0, str::len);
        versions += read["versions"].as_array().map_or(0, Vec::len);
    }
    let n = args.shared as f64;
    Ok((context_bytes as f64 / n, versions as f64 / n))
}

/// Runs the PouchDB side (`bench/pouchdb/sync.mjs`) when it is installed, and prints
/// Chorus's documents per second against it (`chorus`: initial, catch-up).
fn compare_with_pouchdb(args: &DevicesArgs, chorus: (f64, f64)) -> anyhow::Result<()> {
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/pouchdb");
    if !bench.join("node_modules").exists() {
        println!(
            "PouchDB: skipped (install it with `npm ci --prefix bench/pouchdb`; needs Node.js)"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let output = std::process::Command::new("node")
        .arg(bench.join("sync.mjs"))
        .args(["--docs", &args.docs.to_string()])
        .args(["--changes", &args.changes.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .context("running node bench/pouchdb/sync.mjs")?;
    anyhow::ensure!(
        output.status.success(),
        "the PouchDB run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "PouchDB printed {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let rate = |docs: &str, seconds: &str| {
        figures[docs].as_f64().unwrap_or(0.0) / figures[seconds].as_f64().unwrap_or(f64::NAN)
    };
    let (initial, catchup) = (
        rate("initial_docs", "initial_seconds"),
        rate("catchup_docs", "catchup_seconds"),
    );
    println!(
        "PouchDB (leveldb, from express-pouchdb): initial sync {initial:.0} documents/s \
         ({} B, gzip on the wire), catch-up {catchup:.0} documents/s ({} B)",
        figures["initial_bytes"], figures["catchup_bytes"]
    );
    println!(
        "Chorus ÷ PouchDB (documents/s): initial sync {:.2}, catch-up {:.2}",
        chorus.0 / initial,
        chorus.1 / catchup
    );
    Ok(())
}
