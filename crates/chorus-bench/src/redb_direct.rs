//! The baseline: the same records straight into redb, with the same durability
//! (`Durability::Immediate`, an fsync per commit) and the same group commit (one
//! writer thread takes every waiting write into one transaction).

use crate::load::{Stats, run_closed_loop};
use crate::{Args, document};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("docs");

type Job = (String, Vec<u8>, mpsc::SyncSender<()>);

pub fn run(path: &Path, args: &Args, duration: Duration) -> anyhow::Result<Stats> {
    let db = redb::Database::create(path)?;
    let (tx, rx) = mpsc::sync_channel::<Job>(4096);
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(1023));
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                for (key, value, _) in &batch {
                    table.insert(key.as_str(), value.as_slice())?;
                }
            }
            txn.commit()?;
            for (_, _, done) in batch {
                let _ = done.send(());
            }
        }
        Ok(())
    });
    let stats = run_closed_loop(args.clients, duration, args.keys, |key, i| {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        tx.send((format!("key-{key}"), document(key, i).into_bytes(), done_tx))?;
        done_rx.recv()?;
        Ok(())
    });
    drop(tx);
    writer.join().expect("writer thread")?;
    Ok(stats)
}
