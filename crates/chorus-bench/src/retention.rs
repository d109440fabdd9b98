//! Disk use of a leader while its peer is down, with and without the op-log
//! retention bound, in the same run; then the peer's return.
//!
//! Two leaders `a` and `b` replicate; `b` goes away; `a` takes `writes` overwrites of
//! `keys` documents (an `lww` collection, so each key holds one version) and deletes a
//! tenth of them. Every fifth of the way the op-log entries `a` retains and its store
//! file size are printed. `b` then returns: with the bound it is brought back by a
//! state transfer, without it by replaying the log.

use crate::document;
use crate::replication::{cluster, open, wait_caught_up};
use chorus_node::{CollectionConfig, Node, Policy};
use chorus_peer::replication::{self, EngineLimits};
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args)]
pub struct RetentionArgs {
    /// Writes while the peer is down.
    #[arg(long, default_value_t = 100_000)]
    writes: u64,
    /// Documents written to.
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// The retention bound of the bounded run, in op-log entries.
    #[arg(long, default_value_t = 10_000)]
    retention_entries_max: u64,
}

pub fn run(args: &RetentionArgs) -> anyhow::Result<()> {
    println!(
        "leader a takes {} writes to {} documents (lww) and deletes a tenth while peer b is down",
        args.writes, args.keys
    );
    println!("| retention | writes so far | op-log entries kept | store file MiB |");
    println!("|---|---:|---:|---:|");
    for bound in [Some(args.retention_entries_max), None] {
        run_one(args, bound)?;
    }
    Ok(())
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

fn run_one(args: &RetentionArgs, bound: Option<u64>) -> anyhow::Result<()> {
    let label = bound.map_or("unbounded".to_string(), |b| format!("{b} entries"));
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let options = replication::Options {
        limits: EngineLimits {
            retention_entries_max: bound.unwrap_or(u64::MAX),
            ..EngineLimits::default()
        },
        ..replication::Options::default()
    };
    let cluster = cluster()?;
    let (a, b) = (open(dir.path(), "a")?, open(dir.path(), "b")?);
    let a_link = runtime.block_on(replication::start(
        a.clone(),
        cluster.clone(),
        "a",
        options.clone(),
    ))?;
    let b_link = runtime.block_on(replication::start(
        b.clone(),
        cluster.clone(),
        "b",
        options.clone(),
    ))?;
    a.set_collection(
        "bench",
        &CollectionConfig {
            policy: Policy::Lww,
            ..CollectionConfig::default()
        },
    )?;
    write(&a, 0, args.keys, args.keys)?;
    wait_caught_up(&b, &a)?;
    drop(b_link); // b goes away (its store stays as it was).

    let path = dir.path().join("a.redb");
    let step = args.writes / 5;
    for done in (step..=args.writes).step_by(step.max(1) as usize) {
        write(&a, done - step, done, args.keys)?;
        // a's engine collects what the bound allows on its timer: wait for it.
        let kept = || a.replica().position().map(|p| p.last_seq + 1 - p.log_start);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while bound.is_some_and(|b| kept().unwrap_or(0) > b) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let kept = kept()?;
        println!("| {label} | {done} | {kept} | {:.1} |", file_mib(&path));
    }
    let started = Instant::now();
    let b_link = runtime.block_on(replication::start(b.clone(), cluster, "b", options))?;
    wait_caught_up(&b, &a)?;
    println!(
        "| {label}: b returns | caught up in {:.2} s | b's file {:.1} MiB | digests equal: {} |",
        started.elapsed().as_secs_f64(),
        file_mib(&dir.path().join("b.redb")),
        a.digest()? == b.digest()?
    );
    drop((a_link, b_link));
    Ok(())
}

/// Writes `from..to` (the write number picks the key; every tenth key is deleted).
fn write(node: &Node, from: u64, to: u64, keys: u64) -> anyhow::Result<()> {
    for i in from..to {
        let key = format!("key-{}", i % keys);
        if i >= keys && (i % keys).is_multiple_of(10) {
            node.delete("bench", &key, None)?;
        } else {
            node.put("bench", &key, document(i, i).as_bytes(), None)?;
        }
    }
    Ok(())
}
