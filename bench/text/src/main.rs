//! Chorus's text CRDT against diamond-types, yrs, automerge and loro, in one run on
//! one machine, on the editing traces of `crates/chorus-text/tests/traces/`:
//!
//! - *replay*: a sequential trace applied as local edits, one call per patch;
//! - *merge*: the concurrent trace `friendsforever` played by its two agents, then
//!   every agent's operations merged into an empty document (Chorus: applying the
//!   operations; diamond-types: `checkout_tip` of the op log; yrs: applying each
//!   transaction's update); automerge and loro are not measured there;
//! - *peak*: the most heap held during the replay (a counting allocator); *size*:
//!   the encoded document; *load*: decoding it to its text.
//!
//! `cargo run --release --manifest-path bench/text/Cargo.toml [LIBRARY [TRACE]]`: with
//! names, only those (so that `valgrind --tool=callgrind` counts one library's
//! instructions). Times are medians of 5 runs (3 for a run above a second).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The allocator of the process, counting the bytes held and their peak.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

type Patch = (usize, usize, String);

struct Trace {
    end: String,
    patches: Vec<Patch>,
    /// For the concurrent trace: per transaction, its agent, parents and patches.
    txns: Vec<(usize, Vec<usize>, Vec<Patch>)>,
}

fn load(name: &str) -> Trace {
    let path = format!(
        "{}/../../crates/chorus-text/tests/traces/{name}.json.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("the trace opens"))
        .read_to_string(&mut json)
        .expect("gzipped text");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let patches_of = |t: &serde_json::Value| -> Vec<Patch> {
        t["patches"]
            .as_array()
            .expect("patches")
            .iter()
            .map(|p| {
                let n = |i: usize| p[i].as_u64().expect("a number") as usize;
                (n(0), n(1), p[2].as_str().expect("text").to_owned())
            })
            .collect()
    };
    let txns_json = v["txns"].as_array().expect("txns");
    Trace {
        end: v["endContent"].as_str().expect("endContent").to_owned(),
        patches: txns_json.iter().flat_map(patches_of).collect(),
        txns: txns_json
            .iter()
            .map(|t| {
                let parents = t["parents"]
                    .as_array()
                    .map(|ps| ps.iter().map(|p| p.as_u64().unwrap() as usize).collect())
                    .unwrap_or_default();
                (
                    t["agent"].as_u64().unwrap_or(0) as usize,
                    parents,
                    patches_of(t),
                )
            })
            .collect(),
    }
}

/// The median time of `work`, with the heap it held at its peak (above what was held
/// before) on its last run, and its result.
fn measure<T>(mut work: impl FnMut() -> T) -> (Duration, usize, T) {
    let mut times = Vec::new();
    let mut result = None;
    let mut peak = 0;
    let mut runs = 5;
    let mut i = 0;
    while i < runs {
        drop(result.take());
        let before = HELD.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let started = Instant::now();
        result = Some(work());
        let took = started.elapsed();
        peak = PEAK.load(Ordering::Relaxed) - before;
        times.push(took);
        if took > Duration::from_secs(1) {
            runs = 3;
        }
        i += 1;
    }
    times.sort();
    (times[times.len() / 2], peak, result.expect("ran"))
}

/// What one library did with one trace.
struct Figures {
    took: Duration,
    peak: usize,
    size: usize,
    load: Duration,
}

fn replay(library: &str, trace: &Trace) -> Figures {
    let ps = &trace.patches;
    match library {
        "chorus" => {
            let (took, peak, text) = measure(|| {
                let mut text = chorus_text::Text::new();
                for (pos, del, ins) in ps {
                    if *del > 0 {
                        text.delete(1, *pos as u64, *del as u64);
                    }
                    if !ins.is_empty() {
                        text.insert(1, *pos as u64, ins);
                    }
                }
                text
            });
            finish(trace, took, peak, &text.encode(), |bytes| {
                chorus_text::Text::decode(bytes).unwrap().to_string()
            })
        }
        "diamond-types" => {
            let (took, peak, doc) = measure(|| {
                let mut doc = diamond_types::list::ListCRDT::new();
                let agent = doc.get_or_create_agent_id("a");
                for (pos, del, ins) in ps {
                    if *del > 0 {
                        doc.delete_without_content(agent, *pos..*pos + *del);
                    }
                    if !ins.is_empty() {
                        doc.insert(agent, *pos, ins);
                    }
                }
                doc
            });
            let bytes = doc.oplog.encode(diamond_types::list::encoding::ENCODE_FULL);
            finish(trace, took, peak, &bytes, |bytes| {
                diamond_types::list::ListCRDT::load_from(bytes)
                    .unwrap()
                    .branch
                    .content()
                    .to_string()
            })
        }
        "yrs" => {
            use yrs::updates::decoder::Decode;
            use yrs::{GetString, ReadTxn, Text, Transact};
            let options = || yrs::Options {
                offset_kind: yrs::OffsetKind::Utf16,
                ..yrs::Options::default()
            };
            let (took, peak, doc) = measure(|| {
                let doc = yrs::Doc::with_options(options());
                let text = doc.get_or_insert_text("t");
                for (pos, del, ins) in ps {
                    let mut txn = doc.transact_mut();
                    if *del > 0 {
                        text.remove_range(&mut txn, *pos as u32, *del as u32);
                    }
                    if !ins.is_empty() {
                        text.insert(&mut txn, *pos as u32, ins);
                    }
                }
                doc
            });
            let bytes = doc
                .transact()
                .encode_state_as_update_v2(&yrs::StateVector::default());
            finish(trace, took, peak, &bytes, |bytes| {
                let doc = yrs::Doc::with_options(options());
                let text = doc.get_or_insert_text("t");
                doc.transact_mut()
                    .apply_update(yrs::Update::decode_v2(bytes).unwrap())
                    .unwrap();
                text.get_string(&doc.transact())
            })
        }
        "automerge" => {
            use automerge::ReadDoc;
            use automerge::transaction::Transactable;
            let (took, peak, (doc, text)) = measure(|| {
                let mut doc = automerge::AutoCommit::new();
                let text = doc
                    .put_object(automerge::ROOT, "t", automerge::ObjType::Text)
                    .unwrap();
                for (pos, del, ins) in ps {
                    doc.splice_text(&text, *pos, *del as isize, ins).unwrap();
                }
                (doc, text)
            });
            let mut doc = doc;
            let bytes = doc.save();
            finish(trace, took, peak, &bytes, |bytes| {
                automerge::AutoCommit::load(bytes)
                    .unwrap()
                    .text(&text)
                    .unwrap()
            })
        }
        "loro" => {
            let (took, peak, doc) = measure(|| {
                let doc = loro::LoroDoc::new();
                let text = doc.get_text("t");
                for (pos, del, ins) in ps {
                    if *del > 0 {
                        text.delete(*pos, *del).unwrap();
                    }
                    if !ins.is_empty() {
                        text.insert(*pos, ins).unwrap();
                    }
                }
                doc.commit();
                doc
            });
            let bytes = doc.export(loro::ExportMode::Snapshot).unwrap();
            finish(trace, took, peak, &bytes, |bytes| {
                loro::LoroDoc::from_snapshot(bytes)
                    .unwrap()
                    .get_text("t")
                    .to_string()
            })
        }
        other => panic!("no library {other}"),
    }
}

/// The figures of a replay that gave `bytes`: with the median time of loading them
/// back to the text (checked against the trace's).
fn finish(
    trace: &Trace,
    took: Duration,
    peak: usize,
    bytes: &[u8],
    load: impl Fn(&[u8]) -> String,
) -> Figures {
    let (load_took, _, loaded) = measure(|| load(bytes));
    assert_eq!(loaded, trace.end);
    Figures {
        took,
        peak,
        size: bytes.len(),
        load: load_took,
    }
}

/// Merging the concurrent trace: `None` where the library is not measured.
fn merge(library: &str, trace: &Trace) -> Option<(Duration, usize)> {
    match library {
        "chorus" => {
            let ops = chorus_ops(trace);
            let (took, peak, text) = measure(|| {
                let mut text = chorus_text::Text::new();
                for op in &ops {
                    text.apply(op).unwrap();
                }
                text
            });
            assert_eq!(text.to_string(), trace.end);
            Some((took, peak))
        }
        "diamond-types" => {
            let mut oplog = diamond_types::list::OpLog::new();
            let agents: Vec<_> = (0..2)
                .map(|a| oplog.get_or_create_agent_id(&format!("agent{a}")))
                .collect();
            // Each transaction's version: its last operation (or its parents').
            let mut versions: Vec<Vec<usize>> = Vec::new();
            for (agent, parents, patches) in &trace.txns {
                let mut version: Vec<usize> =
                    parents.iter().flat_map(|p| versions[*p].clone()).collect();
                version.sort_unstable();
                version.dedup();
                for (pos, del, ins) in patches {
                    if *del > 0 {
                        let t = oplog.add_delete_at(agents[*agent], &version, *pos..*pos + *del);
                        version = vec![t];
                    }
                    if !ins.is_empty() {
                        let t = oplog.add_insert_at(agents[*agent], &version, *pos, ins);
                        version = vec![t];
                    }
                }
                versions.push(version);
            }
            let (took, peak, branch) = measure(|| oplog.checkout_tip());
            assert_eq!(branch.content().to_string(), trace.end);
            Some((took, peak))
        }
        "yrs" => {
            use yrs::updates::decoder::Decode;
            use yrs::{GetString, Text, Transact};
            let options = || yrs::Options {
                offset_kind: yrs::OffsetKind::Utf16,
                ..yrs::Options::default()
            };
            // Each agent on its own document, taking its parents' updates first.
            let docs: Vec<yrs::Doc> = (0..2)
                .map(|a| {
                    yrs::Doc::with_options(yrs::Options {
                        client_id: a + 1,
                        ..options()
                    })
                })
                .collect();
            let mut applied = vec![vec![false; trace.txns.len()]; 2];
            let mut updates: Vec<Vec<u8>> = Vec::new();
            for (i, (agent, parents, patches)) in trace.txns.iter().enumerate() {
                let doc = &docs[*agent];
                let text = doc.get_or_insert_text("t");
                for p in missing(trace, &mut applied[*agent], parents) {
                    doc.transact_mut()
                        .apply_update(yrs::Update::decode_v1(&updates[p]).unwrap())
                        .unwrap();
                }
                let mut txn = doc.transact_mut();
                for (pos, del, ins) in patches {
                    if *del > 0 {
                        text.remove_range(&mut txn, *pos as u32, *del as u32);
                    }
                    if !ins.is_empty() {
                        text.insert(&mut txn, *pos as u32, ins);
                    }
                }
                updates.push(txn.encode_update_v1());
                drop(txn);
                applied[*agent][i] = true;
            }
            let (took, peak, merged) = measure(|| {
                let doc = yrs::Doc::with_options(options());
                let text = doc.get_or_insert_text("t");
                for update in &updates {
                    doc.transact_mut()
                        .apply_update(yrs::Update::decode_v1(update).unwrap())
                        .unwrap();
                }
                text.get_string(&doc.transact())
            });
            assert_eq!(merged, trace.end);
            Some((took, peak))
        }
        _ => None,
    }
}

/// The ancestors of a transaction (by its `parents`) that an agent has not applied,
/// in trace order (a causal order), marked applied. A replica that applied a
/// transaction applied its ancestors first, so the search stops at applied ones.
fn missing(trace: &Trace, applied: &mut [bool], parents: &[usize]) -> Vec<usize> {
    let mut missing = Vec::new();
    let mut stack = parents.to_vec();
    while let Some(p) = stack.pop() {
        if !applied[p] {
            applied[p] = true;
            missing.push(p);
            stack.extend(trace.txns[p].1.iter().copied());
        }
    }
    missing.sort_unstable();
    missing
}

/// The concurrent trace played by its agents with Chorus: every operation, in trace
/// order (a causal order).
fn chorus_ops(trace: &Trace) -> Vec<chorus_text::Op> {
    let mut replicas = [chorus_text::Text::new(), chorus_text::Text::new()];
    let mut applied = vec![vec![false; trace.txns.len()]; 2];
    let mut ops: Vec<Vec<chorus_text::Op>> = Vec::new();
    for (i, (agent, parents, patches)) in trace.txns.iter().enumerate() {
        for p in missing(trace, &mut applied[*agent], parents) {
            for op in &ops[p] {
                replicas[*agent].apply(op).unwrap();
            }
        }
        let text = &mut replicas[*agent];
        let mut made = Vec::new();
        for (pos, del, ins) in patches {
            if *del > 0 {
                made.extend(text.delete(*agent as u64 + 1, *pos as u64, *del as u64));
            }
            if !ins.is_empty() {
                made.push(text.insert(*agent as u64 + 1, *pos as u64, ins));
            }
        }
        applied[*agent][i] = true;
        ops.push(made);
    }
    ops.into_iter().flatten().collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let libraries = ["chorus", "diamond-types", "yrs", "automerge", "loro"];
    let wanted = |name: &str, i: usize| args.get(i).is_none_or(|a| a == name);
    for name in ["automerge-paper", "seph-blog1"] {
        if !wanted(name, 1) {
            continue;
        }
        let trace = load(name);
        println!(
            "{name}: replay of {} patches as local edits",
            trace.patches.len()
        );
        println!("  library         replay ms   peak heap   encoded B   load ms");
        for library in libraries.iter().filter(|l| wanted(l, 0)) {
            let f = replay(library, &trace);
            println!(
                "  {library:<14} {:>9.1} {:>11} {:>11} {:>9.2}",
                f.took.as_secs_f64() * 1e3,
                f.peak,
                f.size,
                f.load.as_secs_f64() * 1e3
            );
        }
    }
    if wanted("friendsforever", 1) {
        let trace = load("friendsforever");
        println!(
            "friendsforever: {} transactions of two agents merged",
            trace.txns.len()
        );
        println!("  library          merge ms   peak heap");
        for library in libraries.iter().filter(|l| wanted(l, 0)) {
            match merge(library, &trace) {
                Some((took, peak)) => println!(
                    "  {library:<14} {:>9.1} {:>11}",
                    took.as_secs_f64() * 1e3,
                    peak
                ),
                None => println!("  {library:<14}  (not measured)"),
            }
        }
    }
}
