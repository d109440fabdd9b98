//! `chorus device`: a device replica at the command line (`docs/devices.md`).

use crate::client::Target;
use anyhow::Context as _;
use chorus_device::{Device, LocalDocument, Progress, Subscription};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DeviceArgs {
    /// The device's local store (created on first use).
    #[arg(long)]
    local: PathBuf,
    #[command(subcommand)]
    action: DeviceAction,
}

#[derive(clap::Subcommand)]
enum DeviceAction {
    /// Read a document as this device shows it (its own unsynced write, if any).
    Get { collection: String, key: String },
    /// Write a JSON document locally (no network needed); it replaces what this
    /// device shows and goes up at the next sync.
    Put {
        collection: String,
        key: String,
        value: String,
    },
    /// Delete a document locally; the deletion goes up at the next sync.
    Delete { collection: String, key: String },
    /// CRDT operations on a document of a `crdt` collection, e.g.
    /// '[{"op":"counter.add","path":"/views","by":1}]': shown at once, uploaded as
    /// operations at the next sync (they merge with what others did meanwhile).
    Ops {
        collection: String,
        key: String,
        operations: String,
    },
    /// List the keys of a collection held on this device.
    List {
        collection: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// The device's own change feed, a JSON line per document changed here (by this
    /// device's writes or by syncs) after local change `--after`, at its latest change.
    Changes {
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Show the writes not taken by a server yet, and those servers refused.
    Pending,
    /// Sync with a cluster: upload pending writes, download what changed in the
    /// subscription; exits when caught up (`--live` keeps syncing).
    Sync {
        /// Collections this device holds (comma-separated); by default, those it
        /// holds documents of already.
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Keep syncing until interrupted: at once when the node has news (a long poll
        /// of its feed), and at least every `--interval-ms` (what this device wrote).
        #[arg(long)]
        live: bool,
        /// With --live: the longest wait between two syncs (at most a minute is
        /// waited on a node at a time).
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let device = Device::open(&args.local)?;
    match args.action {
        DeviceAction::Get { collection, key } => match device.get(&collection, &key)? {
            Some(doc) => print_json(&document_json(&doc)),
            None => anyhow::bail!("{collection}/{key} is not on this device (absent or deleted)"),
        },
        DeviceAction::Put {
            collection,
            key,
            value,
        } => {
            let value: Value = serde_json::from_str(&value)
                .with_context(|| format!("the document is not JSON: {value}"))?;
            device.put(&collection, &key, &value)?;
            print_json(&json!({"key": key, "pending": device.pending()?}));
        }
        DeviceAction::Delete { collection, key } => {
            device.delete(&collection, &key)?;
            print_json(&json!({"key": key, "deleted": true, "pending": device.pending()?}));
        }
        DeviceAction::Ops {
            collection,
            key,
            operations,
        } => {
            let operations: Vec<Value> = serde_json::from_str(&operations).with_context(|| {
                format!("the operations are not a JSON array of objects: {operations}")
            })?;
            device.update(&collection, &key, &operations)?;
            let shown = device.get(&collection, &key)?.and_then(|d| d.value);
            print_json(&json!({"key": key, "value": shown, "pending": device.pending()?}));
        }
        DeviceAction::List { collection, prefix } => {
            for key in device.list(&collection, &prefix)? {
                println!("{key}");
            }
        }
        DeviceAction::Changes { after } => {
            let mut after = after;
            loop {
                let page = device.changes(after, 1000)?;
                let Some(last) = page.last() else {
                    return Ok(());
                };
                after = last.seq;
                for change in &page {
                    let line = json!({"seq": change.seq, "collection": change.collection, "key": change.key});
                    println!("{line}");
                }
            }
        }
        DeviceAction::Pending => {
            let rejected: Vec<Value> = device
                .rejected()?
                .iter()
                .map(|r| json!({"collection": r.collection, "key": r.key, "error": r.error, "message": r.message}))
                .collect();
            print_json(&json!({"pending": device.pending()?, "rejected": rejected}));
        }
        DeviceAction::Sync {
            collections,
            prefix,
            live,
            interval_ms,
            target,
        } => {
            let collections = match collections.is_empty() {
                true => device.collections()?,
                false => collections,
            };
            if collections.is_empty() {
                anyhow::bail!(
                    "this device holds no collection yet: name the ones to sync with --collections A,B"
                );
            }
            let subscription = Subscription::collections(collections).with_prefix(&prefix);
            let ca = target
                .ca
                .as_ref()
                .map(|path| {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
                })
                .transpose()?;
            let urls = &target.url;
            let (token, ca) = (target.token.as_deref(), ca.as_deref());
            loop {
                let synced = device.sync_with(urls, token, ca, &subscription, &mut show_progress);
                eprintln!();
                let report = match (synced, live) {
                    (Ok(report), _) => report,
                    (Err(e), false) => return Err(e.into()),
                    // Live, a failed round (every node down, a lost answer) is said
                    // and tried again after the interval.
                    (Err(e), true) => {
                        pause_after(&e, interval_ms);
                        continue;
                    }
                };
                print_json(&json!({
                    "node": report.progress.node,
                    "taken": report.taken,
                    "taken_before": report.taken_before,
                    "rejected": report.rejected,
                    "in_doubt": report.in_doubt,
                    "downloaded": report.progress.downloaded,
                    "snapshots": report.snapshots,
                    "removed": report.removed,
                    "requeued": report.requeued,
                    "unconfirmed": device.unconfirmed()?,
                    "bytes_up": report.progress.bytes_up,
                    "bytes_down": report.progress.bytes_down,
                    "pending": device.pending()?,
                }));
                if !live {
                    return Ok(());
                }
                // Until the node has news (a long poll), or the interval passes: then
                // what was written here meanwhile goes up too.
                if let Err(e) = device.wait_for_changes(urls, token, ca, &subscription, interval_ms)
                {
                    pause_after(&e, interval_ms);
                }
            }
        }
    }
    Ok(())
}

/// In live mode: says what failed, and waits `interval_ms` before the next round.
fn pause_after(error: &chorus_device::DeviceError, interval_ms: u64) {
    eprintln!("chorus device: {error}; trying again in {interval_ms} ms");
    std::thread::sleep(std::time::Duration::from_millis(interval_ms));
}

fn show_progress(p: &Progress) {
    eprint!(
        "\r{}: {} up, {} down ({} B up, {} B down)",
        p.node, p.uploaded, p.downloaded, p.bytes_up, p.bytes_down
    );
}

fn document_json(doc: &LocalDocument) -> Value {
    json!({
        "key": doc.key,
        "value": doc.value,
        "versions": doc.versions,
        "conflict": doc.conflict,
        "pending": doc.pending,
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values print")
    );
}
