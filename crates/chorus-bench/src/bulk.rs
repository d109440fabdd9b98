//! `bulk`: loading documents with the bulk API against single PUTs, in one run.
//!
//! Both load the same ~256-byte documents over loopback HTTP into fresh nodes in this
//! process: `bulk` with `POST /v1/bulk/{c}` requests of `--batch` documents from
//! `--clients` threads; `single` with one PUT per document from the same number of
//! threads (the closed loop of `writes`). The figure is documents per second, and
//! their ratio. Then the bulk-loaded node is read back whole, with documents, by the
//! change feed from cursor 0 and by a range read, for the feed's cost against a plain
//! scan.

use crate::{InProcessServer, agent, document};
use anyhow::Context as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BulkArgs {
    /// Documents loaded by each method.
    #[arg(long, default_value_t = 100_000)]
    docs: u64,
    /// Documents per bulk request.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Concurrent clients, for both methods.
    #[arg(long, default_value_t = 4)]
    clients: u64,
}

/// Loads `docs` documents with `clients` threads, each taking the next `step`
/// documents and sending them with `send(first, count)`; returns documents/s.
fn load(
    docs: u64,
    step: u64,
    clients: u64,
    send: impl Fn(u64, u64) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let first = next.fetch_add(step, Ordering::Relaxed);
                        if first >= docs {
                            return anyhow::Ok(());
                        }
                        send(first, step.min(docs - first))?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a loader thread panicked"))
    })?;
    Ok(docs as f64 / started.elapsed().as_secs_f64())
}

/// Reads every page of `url` (pages of 1,000 items under `field`; `next` gives the
/// query of the following page, `None` at the end) on one client; returns items/s.
fn read_all(
    http: &ureq::Agent,
    url: &str,
    field: &str,
    next: impl Fn(&serde_json::Value) -> Option<String>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut items, mut query) = (0usize, None);
    loop {
        let page_url = match &query {
            Some(q) => format!("{url}&limit=1000&{q}"),
            None => format!("{url}&limit=1000"),
        };
        let page: serde_json::Value = http.get(&page_url).call()?.body_mut().read_json()?;
        let count = page[field].as_array().map_or(0, Vec::len);
        items += count;
        query = next(&page);
        if count == 0 || query.is_none() {
            break;
        }
    }
    Ok(items as f64 / started.elapsed().as_secs_f64())
}

pub fn run(args: &BulkArgs) -> anyhow::Result<()> {
    println!(
        "loading {} documents of ~{} B over HTTP, {} clients: bulk requests of {} against single PUTs",
        args.docs,
        document(0, 0).len(),
        args.clients,
        args.batch
    );
    let dir = tempfile::tempdir()?;
    let http = agent(args.clients as usize);

    let server = InProcessServer::start(chorus_node::open(dir.path().join("bulk.redb"))?)?;
    let bulk = load(args.docs, args.batch, args.clients, |first, count| {
        let docs: Vec<String> = (first..first + count)
            .map(|k| format!("{{\"key\":\"key-{k}\",\"value\":{}}}", document(k, 0)))
            .collect();
        let body = format!("{{\"docs\":[{}]}}", docs.join(","));
        let mut response = http
            .post(&format!("{}/v1/bulk/bench", server.url))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .context("POST /v1/bulk")?;
        anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
        let answer = response.body_mut().read_to_string()?;
        anyhow::ensure!(
            !answer.contains("\"error\""),
            "an item was refused: {answer}"
        );
        Ok(())
    })?;
    println!("{:>8}: {bulk:>9.0} documents/s", "bulk");
    let feed = read_all(
        &http,
        &format!("{}/v1/changes?include_docs=true", server.url),
        "changes",
        |page| page["next"].as_str().map(|next| format!("since={next}")),
    )?;
    let range = read_all(
        &http,
        &format!("{}/v1/docs/bench?include_docs=true", server.url),
        "docs",
        |page| page["next"].as_str().map(|next| format!("after={next}")),
    )?;
    server.stop()?;
    println!(
        "reading them back with their documents, pages of 1,000: the change feed from 0 {feed:.0}/s, \
         a range read {range:.0}/s (feed ÷ range {:.2})",
        feed / range
    );

    let server = InProcessServer::start(chorus_node::open(dir.path().join("single.redb"))?)?;
    let single = load(args.docs, 1, args.clients, |k, _| {
        let response = http
            .put(&format!("{}/v1/docs/bench/key-{k}", server.url))
            .header("Content-Type", "application/json")
            .send(document(k, 0).as_bytes())
            .context("PUT")?;
        anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
        Ok(())
    })?;
    server.stop()?;
    println!("{:>8}: {single:>9.0} documents/s", "single");
    println!("bulk ÷ single (documents/s): {:.1}", bulk / single);
    Ok(())
}
