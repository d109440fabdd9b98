//! Syncing a device with a node: upload what is pending, then download what changed.
//!
//! ```text
//!  GET /                         ─▶ the node's name, feed id and position, stability
//!  POST /v1/devices/upload/{c}   (per collection, pending writes in seq order)
//!  POST /v1/bulk/{c}/get         (the uploaded documents as the node now reads them)
//!  GET /v1/docs/{c}?prefix=P&include_docs=true   (a snapshot, when there is no cursor)
//!  GET /v1/changes?since=CURSOR&collection=C&prefix=P&include_docs=true  (pages)
//! ```
//!
//! Cursors are kept per node feed and per subscription entry, so a device that moves
//! between nodes resumes each node's feed where it left it. With no cursor for a
//! node's feed (first contact; a node restored or wiped: its feed id changed), the
//! device reads a snapshot of the entry by key range (its cost is the entry's size,
//! not the node's history: it never reads a log), drops the documents of the entry
//! the node does not show unless it wrote them, and follows the feed from where it
//! stood before the snapshot.
//!
//! **Invariant:** the device adds a node to a pending write's `in_doubt_at` (durably)
//! before sending it there, and removes it only on an answer that says the node did
//! not take it (the node refused before writing, or could not be reached).

use crate::DeviceError;
use crate::local::{Local, Pending, Taken};
use chorus_client::{Client, Error as ClientError, segment};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Writes per upload request, and documents per feed page.
const PAGE_ITEMS: usize = 1000;

/// What a device holds: whole collections, or the keys of a collection with a prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// `(collection, key prefix)`; an empty prefix is the whole collection.
    pub entries: Vec<(String, String)>,
}

impl Subscription {
    /// Whole collections.
    pub fn collections<I, S>(names: I) -> Subscription
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription {
            entries: names
                .into_iter()
                .map(|n| (n.into(), String::new()))
                .collect(),
        }
    }

    /// The same collections, only keys starting with `prefix`.
    pub fn with_prefix(mut self, prefix: &str) -> Subscription {
        for (_, p) in &mut self.entries {
            *p = prefix.to_owned();
        }
        self
    }
}

/// Credentials for the nodes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Access {
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
}

impl Access {
    pub(crate) fn new(token: Option<&str>, ca_pem: Option<&[u8]>) -> Access {
        Access {
            token: token.map(str::to_owned),
            ca_pem: ca_pem.map(<[u8]>::to_vec),
        }
    }

    /// A client of the one node at `url`, with these credentials, naming `device`
    /// (nodes count what devices download apart).
    fn client(&self, url: &str, device: &str) -> Result<Client, DeviceError> {
        let mut client = Client::new([url])?.with_header("Chorus-Device", device);
        if let Some(pem) = &self.ca_pem {
            client = client.with_ca(pem)?;
        }
        if let Some(token) = &self.token {
            client = client.with_header("Authorization", &format!("Bearer {token}"));
        }
        Ok(client)
    }
}

/// Waits (at most `timeout_ms`, at most a minute) until the first node of `urls`
/// that answers has a change after the device's cursor in the subscription's first
/// entry (a long poll of its feed); answers at once when the device has no cursor
/// for that node, so a sync reads it.
pub(crate) fn wait_for_changes(
    local: &Local,
    urls: &[String],
    access: &Access,
    subscription: &Subscription,
    timeout_ms: u64,
) -> Result<(), DeviceError> {
    let Some((collection, prefix)) = subscription.entries.first() else {
        return Ok(());
    };
    let mut tried = Vec::new();
    for url in urls {
        let client = access.client(url, &local.id())?;
        let about = match client.call("GET", "/", None, None) {
            Ok(about) => about,
            Err(e) => {
                tried.push(format!("{url}: {e}"));
                continue;
            }
        };
        let feed = about["feed"].as_str().unwrap_or_default();
        let cursors = local.meta("cursors")?.unwrap_or_else(|| json!({}));
        let Some(since) = cursors[format!("{feed}/{collection}/{prefix}")].as_str() else {
            return Ok(());
        };
        let path = format!(
            "/v1/changes?since={}&limit=1&feed=longpoll&timeout_ms={}&collection={}&prefix={}",
            segment(since),
            timeout_ms.min(60_000),
            segment(collection),
            segment(prefix)
        );
        return match client.call("GET", &path, None, None) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    Err(DeviceError::Protocol(format!(
        "no node could be reached: {}",
        tried.join("; ")
    )))
}

/// How far a sync has come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The node being synced with.
    pub node: String,
    /// Writes the node answered for (taken, taken before, or refused).
    pub uploaded: usize,
    /// Documents downloaded.
    pub downloaded: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub progress: Progress,
    /// Writes taken now.
    pub taken: usize,
    /// Writes a node had taken before (an upload whose answer was lost, retried).
    pub taken_before: usize,
    /// Writes refused (see `Device::rejected`).
    pub rejected: usize,
    /// Writes left pending because a node that may hold them could not confirm.
    pub in_doubt: usize,
    /// Subscription entries read from the start of the node's feed.
    pub snapshots: usize,
    /// Documents dropped because the node no longer holds them.
    pub removed: usize,
    /// Taken writes queued again because the node that took them lost them (it was
    /// restored from an older backup, or replaced, before any other member had them).
    pub requeued: usize,
}

/// Syncs with the first of `urls` that answers.
pub(crate) fn sync(
    local: &Local,
    urls: &[String],
    access: &Access,
    subscription: &Subscription,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SyncReport, DeviceError> {
    let mut tried = Vec::new();
    for url in urls {
        let client = access.client(url, &local.id())?;
        match sync_with(local, &client, subscription, progress) {
            Ok(report) => return Ok(report),
            // Down, or cut off mid-way: what was sent is remembered; try the next.
            Err(DeviceError::Sync(
                e @ (ClientError::Unreachable { .. } | ClientError::Uncertain { .. }),
            )) => tried.push(format!("{url}: {e}")),
            Err(e) => return Err(e),
        }
    }
    Err(DeviceError::Protocol(format!(
        "no node could be synced with: {}",
        tried.join("; ")
    )))
}

fn sync_with(
    local: &Local,
    client: &Client,
    subscription: &Subscription,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SyncReport, DeviceError> {
    let about = client.call("GET", "/", None, None)?;
    let (Some(node), Some(feed)) = (about["node"].as_str(), about["feed"].as_str()) else {
        return Err(DeviceError::Protocol(format!(
            "{} is not a Chorus node of this version (GET / answered {about})",
            client.url()
        )));
    };
    let mut report = SyncReport {
        progress: Progress {
            node: node.to_owned(),
            ..Progress::default()
        },
        ..SyncReport::default()
    };
    check_taken(local, node, feed, &about, &mut report)?;
    // Writes that waited beside a sent one become uploadable once it is answered:
    // a few rounds take them in the same sync.
    for _ in 0..3 {
        if !upload(local, client, (node, feed), &mut report, progress)? {
            break;
        }
    }
    acknowledge(local, client, node)?;
    for (collection, prefix) in &subscription.entries {
        download(
            local,
            client,
            &about,
            collection,
            prefix,
            &mut report,
            progress,
        )?;
    }
    Ok(report)
}

/// Uploads every pending write (per collection, in seq order); answers whether any
/// was answered.
fn upload(
    local: &Local,
    client: &Client,
    (node, feed): (&str, &str),
    report: &mut SyncReport,
    progress: &mut dyn FnMut(&Progress),
) -> Result<bool, DeviceError> {
    let mut by_collection: BTreeMap<String, Vec<(String, Pending)>> = BTreeMap::new();
    for (collection, key, record) in local.pending_records()? {
        if let Some(write) = record.pending {
            by_collection
                .entry(collection)
                .or_default()
                .push((key, write));
        }
    }
    let device = local.id();
    let mut answered = false;
    for (collection, mut writes) in by_collection {
        writes.sort_by_key(|(_, w)| w.seq);
        for batch in writes.chunks(PAGE_ITEMS) {
            let batch = mark_sent(local, &collection, batch, node, true)?;
            if batch.is_empty() {
                continue;
            }
            let batch = batch.as_slice();
            // This node too: restored from a backup since, it answers from the record
            // its former self kept, once that has come back to it.
            let in_doubt_at: BTreeSet<&str> = batch
                .iter()
                .flat_map(|(_, w)| w.in_doubt_at.iter().map(String::as_str))
                .collect();
            let items: Vec<Value> = batch.iter().map(|(key, w)| upload_item(key, w)).collect();
            let acked = answers(local, node, &collection)?.1;
            let body = json!({"device": device, "writes": items, "in_doubt_at": in_doubt_at,
                              "acked": acked})
            .to_string();
            let path = format!("/v1/devices/upload/{}", segment(&collection));
            let answer = match client.call("POST", &path, Some(body.as_bytes()), None) {
                Ok(answer) => answer,
                // Sent, and no answer from the node: it may have taken them.
                Err(e @ (ClientError::Uncertain { .. } | ClientError::NotJson { .. })) => {
                    return Err(e.into());
                }
                Err(e) => {
                    // Never sent, or refused before writing (an error answer; 503 when
                    // they are in doubt elsewhere): this node did not take them.
                    mark_sent(local, &collection, batch, node, false)?;
                    if matches!(e, ClientError::Unreachable { .. }) {
                        report.in_doubt += batch.len();
                    }
                    return Err(e.into());
                }
            };
            report.progress.bytes_up += body.len() as u64;
            answered = true;
            let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
            let reads = client
                .call(
                    "POST",
                    &format!("/v1/bulk/{}/get", segment(&collection)),
                    Some(json!({ "keys": keys }).to_string().as_bytes()),
                    None,
                )
                .ok();
            let taker = (node, feed);
            settle(
                local,
                &collection,
                batch,
                taker,
                &answer,
                reads.as_ref(),
                report,
            )?;
            progress(&report.progress);
        }
    }
    Ok(answered)
}

/// Where the device keeps what `node` answered in `collection` (meta `answers`).
fn answers_key(node: &str, collection: &str) -> String {
    format!("{node}/{collection}")
}

/// The greatest seq `node` answered in `collection` (0: none), and the greatest it
/// was told the device received.
fn answers(local: &Local, node: &str, collection: &str) -> Result<(u64, u64), DeviceError> {
    let answers = local.meta("answers")?.unwrap_or_else(|| json!({}));
    let entry = &answers[answers_key(node, collection)];
    Ok((
        entry["answered"].as_u64().unwrap_or(0),
        entry["acked"].as_u64().unwrap_or(0),
    ))
}

/// Tells `node` which of its answers the device received, where it does not know yet
/// (an upload carries it too): its record of the device can then expire (see
/// `chorus_node::devices`, "Expiry").
fn acknowledge(local: &Local, client: &Client, node: &str) -> Result<(), DeviceError> {
    let answers = local.meta("answers")?.unwrap_or_else(|| json!({}));
    let device = local.id();
    for (name, entry) in answers.as_object().into_iter().flatten() {
        let Some(collection) = name
            .strip_prefix(node)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        let answered = entry["answered"].as_u64().unwrap_or(0);
        if answered <= entry["acked"].as_u64().unwrap_or(0) {
            continue;
        }
        let body = json!({"device": device, "writes": [], "acked": answered}).to_string();
        let path = format!("/v1/devices/upload/{}", segment(collection));
        client.call("POST", &path, Some(body.as_bytes()), None)?;
        let txn = local.begin()?;
        let mut answers = txn.meta("answers")?.unwrap_or_else(|| json!({}));
        answers[name]["acked"] = json!(answered);
        txn.set_meta("answers", &answers)?;
        txn.commit()?;
    }
    Ok(())
}

fn upload_item(key: &str, write: &Pending) -> Value {
    let mut item = json!({"seq": write.seq, "key": key});
    match &write.value {
        _ if !write.ops.is_empty() => item["ops"] = json!(write.ops),
        Some(value) => item["value"] = value.clone(),
        None => item["deleted"] = json!(true),
    }
    if let Some(context) = &write.context {
        item["context"] = json!(context);
    }
    if !write.covers.is_empty() {
        item["covers"] = json!(write.covers);
    }
    item
}

/// Adds `node` to (or, `sent == false`, removes it from) the `in_doubt_at` of the
/// batch's writes that are still pending, durably; answers those writes as they now
/// stand (the app may have replaced one in place since the batch was read: that one
/// is not sent).
fn mark_sent(
    local: &Local,
    collection: &str,
    batch: &[(String, Pending)],
    node: &str,
    sent: bool,
) -> Result<Vec<(String, Pending)>, DeviceError> {
    let txn = local.begin()?;
    let mut marked = Vec::with_capacity(batch.len());
    for (key, write) in batch {
        let Some(mut record) = txn.record(collection, key)? else {
            continue;
        };
        let Some(pending) = record.pending.as_mut().filter(|p| p.seq == write.seq) else {
            continue;
        };
        let listed = pending.in_doubt_at.iter().any(|n| n == node);
        let changed = match (sent, listed) {
            (true, false) => {
                pending.in_doubt_at.push(node.to_owned());
                true
            }
            (false, true) => {
                pending.in_doubt_at.retain(|n| n != node);
                true
            }
            _ => false,
        };
        marked.push((key.clone(), pending.clone()));
        if changed {
            txn.put_record(collection, key, &mut record)?;
        }
    }
    txn.commit()?;
    Ok(marked)
}

/// Records the node's answer for a batch, with the documents as it now reads them
/// (`reads`, when the read succeeded), in one transaction.
fn settle(
    local: &Local,
    collection: &str,
    batch: &[(String, Pending)],
    (node, feed): (&str, &str),
    answer: &Value,
    reads: Option<&Value>,
    report: &mut SyncReport,
) -> Result<(), DeviceError> {
    let results: BTreeMap<u64, &Value> = answer["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["seq"].as_u64()?, r)))
        .collect();
    let fresh: BTreeMap<&str, &Value> = reads
        .and_then(|r| r["docs"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["key"].as_str()?, d)))
        .collect();
    let txn = local.begin()?;
    if let Some(&last) = results.keys().next_back() {
        let mut answers = txn.meta("answers")?.unwrap_or_else(|| json!({}));
        let entry = &mut answers[answers_key(node, collection)];
        if entry["answered"].as_u64().unwrap_or(0) < last {
            entry["answered"] = json!(last);
            txn.set_meta("answers", &answers)?;
        }
    }
    for (key, write) in batch {
        let Some(result) = results.get(&write.seq) else {
            continue;
        };
        let Some(mut record) = txn.record(collection, key)? else {
            continue;
        };
        if record.pending.as_ref().map(|p| p.seq) != Some(write.seq) {
            continue;
        }
        report.progress.uploaded += 1;
        let dot = result["dot"].as_str().map(str::to_owned);
        if let Some(error) = result["error"].as_str() {
            let message = result["message"].as_str().unwrap_or_default();
            txn.reject(collection, key, write, error, message)?;
            report.rejected += 1;
        } else {
            if result["taken"] == "before" {
                report.taken_before += 1;
            } else {
                report.taken += 1;
            }
            if let Some(dot) = &dot {
                txn.remember_taken(&Taken {
                    collection: collection.to_owned(),
                    key: key.clone(),
                    node: node.to_owned(),
                    feed: feed.to_owned(),
                    dot: dot.clone(),
                    write: write.clone(),
                })?;
            }
        }
        // The write beside it saw it: it replaces it too.
        record.pending = record.next.take().map(|mut next| {
            if result["error"].is_null() {
                next.covers.extend(dot);
            }
            next
        });
        if let Some(read) = fresh.get(key.as_str()) {
            record.server = Some(server_copy(read));
        }
        txn.put_record(collection, key, &mut record)?;
    }
    txn.commit()
}

/// Forgets the taken writes every member has (the node's `stable` covers them), and
/// queues again those their node lost: this node took them and its feed is not the
/// one it had then (restored from an older backup, or replaced), or the node that
/// took them is no longer a member; no member this node heard from has them (beyond
/// `seen`), and the members agree on that (`stable` equals `seen` for the write's
/// origin, and the node has heard from every member), so no member can still bring
/// them.
fn check_taken(
    local: &Local,
    node: &str,
    feed: &str,
    about: &Value,
    report: &mut SyncReport,
) -> Result<(), DeviceError> {
    let counter = |vector: &str, origin: &str| about[vector][origin].as_u64().unwrap_or(0);
    // Until the node has heard what every member holds, it cannot tell a lost write.
    let heard = about["heard_from_all"] == true;
    let taken = local.taken()?;
    if taken.is_empty() {
        return Ok(());
    }
    let txn = local.begin()?;
    for t in taken {
        let Some((origin, n)) = t.dot.split_once(':') else {
            txn.forget_taken(t.write.seq)?;
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        let (stable, seen) = (counter("stable", origin), counter("seen", origin));
        // The node that took it lost it: restored or replaced (its feed changed), or
        // gone from the cluster (perhaps after a restore).
        let taker_lost = (t.node == node && t.feed != feed)
            || about["members"]
                .as_array()
                .is_some_and(|m| !m.iter().any(|name| name == t.node.as_str()));
        if n <= stable {
            txn.forget_taken(t.write.seq)?;
        } else if taker_lost && heard && n > seen && stable == seen {
            if txn.requeue(&t.collection, &t.key, &t.write)? {
                report.requeued += 1;
            }
            txn.forget_taken(t.write.seq)?;
        }
    }
    txn.commit()
}

/// The server's read as the device keeps it: a READ, or `{"deleted": true, "context"}`.
fn server_copy(read: &Value) -> Value {
    if read["error"] == "not_found" || read["deleted"] == true {
        json!({"deleted": true, "context": read["context"]})
    } else {
        let mut copy = read.clone();
        if let Some(object) = copy.as_object_mut() {
            object.remove("key");
        }
        copy
    }
}

/// Brings one subscription entry up to date from the node: from the device's cursor
/// on the node's feed, or, without one, by a snapshot first (see [`snapshot`]), each
/// page stored with the cursor after it.
fn download(
    local: &Local,
    client: &Client,
    about: &Value,
    collection: &str,
    prefix: &str,
    report: &mut SyncReport,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), DeviceError> {
    let feed = about["feed"].as_str().unwrap_or_default();
    let cursor_name = format!("{feed}/{collection}/{prefix}");
    let mut cursors = local.meta("cursors")?.unwrap_or_else(|| json!({}));
    let mut since = match cursors[&cursor_name].as_str() {
        Some(cursor) => cursor.to_owned(),
        None => {
            report.snapshots += 1;
            snapshot(local, client, collection, prefix, report, progress)?;
            // Taken before the snapshot: what changed while it was read follows.
            about["feed_last"].as_str().unwrap_or("0").to_owned()
        }
    };
    loop {
        let path = format!(
            "/v1/changes?since={}&limit={PAGE_ITEMS}&include_docs=true&collection={}&prefix={}",
            segment(&since),
            segment(collection),
            segment(prefix)
        );
        let page = client.call("GET", &path, None, None)?;
        report.progress.bytes_down += page.to_string().len() as u64;
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        let next = page["next"].as_str().unwrap_or(&since).to_owned();
        let txn = local.begin()?;
        for change in &changes {
            let Some(key) = change["key"].as_str() else {
                continue;
            };
            let copy = match change["deleted"] == true {
                true => json!({"deleted": true, "context": change["context"]}),
                false => server_copy(&change["doc"]),
            };
            store_copy(&txn, collection, key, copy)?;
        }
        cursors[&cursor_name] = json!(next);
        txn.set_meta("cursors", &cursors)?;
        txn.commit()?;
        report.progress.downloaded += changes.len();
        progress(&report.progress);
        if changes.is_empty() && next == since {
            return Ok(());
        }
        since = next;
    }
}

/// Stores the server's copy of a document, unless it holds that already.
fn store_copy(
    txn: &crate::local::Txn,
    collection: &str,
    key: &str,
    copy: Value,
) -> Result<(), DeviceError> {
    let mut record = txn.record(collection, key)?.unwrap_or_default();
    if record.server.as_ref() != Some(&copy) {
        record.server = Some(copy);
        txn.put_record(collection, key, &mut record)?;
    }
    Ok(())
}

/// Reads every present document of the entry by key range (`GET /v1/docs/{c}?prefix=
/// &include_docs=true`, pages from one snapshot each): a cost in the entry's size,
/// however large the rest of the database or however long the node's history. Then
/// the documents the device holds that the node does not show are dropped (see
/// [`sweep`]).
fn snapshot(
    local: &Local,
    client: &Client,
    collection: &str,
    prefix: &str,
    report: &mut SyncReport,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), DeviceError> {
    let mut seen = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/v1/docs/{}?prefix={}&limit={PAGE_ITEMS}&include_docs=true",
            segment(collection),
            segment(prefix)
        );
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", segment(after)));
        }
        let page = client.call("GET", &path, None, None)?;
        report.progress.bytes_down += page.to_string().len() as u64;
        let docs = page["docs"].as_array().cloned().unwrap_or_default();
        let txn = local.begin()?;
        for doc in &docs {
            let Some(key) = doc["key"].as_str() else {
                continue;
            };
            seen.insert(key.to_owned());
            store_copy(&txn, collection, key, server_copy(doc))?;
        }
        txn.commit()?;
        report.progress.downloaded += docs.len();
        progress(&report.progress);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return sweep(local, collection, prefix, &seen, report),
        }
    }
}

/// After a snapshot: documents the node does not show (deleted, whether or not the
/// deletion was collected) leave the device, unless the device wrote them (the write
/// then goes up against the context it had: beside the deletion, or, once that was
/// collected, recorded as a conflict with it).
fn sweep(
    local: &Local,
    collection: &str,
    prefix: &str,
    seen: &BTreeSet<String>,
    report: &mut SyncReport,
) -> Result<(), DeviceError> {
    let txn = local.begin()?;
    for (key, _) in local.records(collection, prefix)? {
        // Read again within the transaction: the app may have written meanwhile.
        let Some(mut record) = txn
            .record(collection, &key)?
            .filter(|_| !seen.contains(&key))
        else {
            continue;
        };
        if record.pending.is_none() && record.next.is_none() {
            txn.remove_record(collection, &key)?;
            report.removed += 1;
        } else if record.server.is_some() {
            record.server = None;
            txn.put_record(collection, &key, &mut record)?;
        }
    }
    txn.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the app replaced in place after an upload batch was read is not sent
    /// (the value it replaced would go up, and the new one stand beside it); the
    /// write still pending is marked as sent to the node before it goes.
    #[test]
    fn only_writes_still_pending_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(&dir.path().join("d.device")).unwrap();
        local.write("c", "a", Some(&json!(1))).unwrap();
        local.write("c", "b", Some(&json!(1))).unwrap();
        let batch: Vec<(String, Pending)> = local
            .pending_records()
            .unwrap()
            .into_iter()
            .map(|(_, key, record)| (key, record.pending.unwrap()))
            .collect();
        local.write("c", "a", Some(&json!(2))).unwrap();
        let sent = mark_sent(&local, "c", &batch, "n0", true).unwrap();
        let keys: Vec<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b"]);
        assert_eq!(sent[0].1.in_doubt_at, ["n0"]);
        let unsent = mark_sent(&local, "c", &sent, "n0", false).unwrap();
        assert!(unsent[0].1.in_doubt_at.is_empty());
    }
}
