//! Laws of the sequence CRDT, on random histories: replicas that applied the same
//! operations, in any causal order and with duplicates, show the same text; runs
//! typed concurrently at one place, forwards or backwards, never interleave.

use chorus_text::{Beyond, Op, Text};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

/// One step of a history.
#[derive(Clone, Debug)]
enum Step {
    /// Replica `replica` inserts `text` at a place chosen by `at` (a fraction).
    Insert {
        replica: usize,
        at: f64,
        text: String,
    },
    /// It deletes up to `len` characters from a place chosen by `at`.
    Delete { replica: usize, at: f64, len: u64 },
    /// Replica `to` takes the first `count` operations `from` has seen, in the order
    /// `from` saw them (a causal order), some of them again.
    Sync {
        from: usize,
        to: usize,
        count: usize,
    },
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..replicas, 0.0..=1.0, "[a-cé🎉]{1,3}")
            .prop_map(|(replica, at, text)| Step::Insert { replica, at, text }),
        1 => (0..replicas, 0.0..=1.0, 1..4u64)
            .prop_map(|(replica, at, len)| Step::Delete { replica, at, len }),
        2 => (0..replicas, 0..replicas, 0..40usize)
            .prop_map(|(from, to, count)| Step::Sync { from, to, count }),
    ]
}

/// A replica and the operations it has seen, in the order it saw them.
struct Replica {
    text: Text,
    log: Vec<usize>,
    seen: HashSet<usize>,
}

fn run_texts(replicas: usize, steps: &[Step]) -> Vec<Text> {
    run_from((0..replicas).map(|_| Text::new()).collect(), steps)
}

/// Replicas that hold `start` go through `steps`, then take everything.
fn run_from(start: Vec<Text>, steps: &[Step]) -> Vec<Text> {
    history(start, steps, true, 0).0
}

/// The agent that made an operation.
fn agent_of(op: &Op) -> u64 {
    match op {
        Op::Insert { id, .. } => id.agent,
        Op::Delete { by, .. } => by.agent,
    }
}

/// Replicas that hold `start` go through `steps`; with `settle`, they then take
/// everything. Each step is a write of its agent, numbered from `first_write` (its
/// dot's counter): the operations of one delete are one write. Replicas note a
/// write when they apply its operations ([`Text::stamp`]). Answers the replicas,
/// and how many writes were made.
fn history(start: Vec<Text>, steps: &[Step], settle: bool, first_write: u64) -> (Vec<Text>, u64) {
    let replicas = start.len();
    let mut all: Vec<Op> = Vec::new();
    // The number of the write each operation of `all` belongs to.
    let mut write_of: Vec<u64> = Vec::new();
    let mut writes = 0;
    let mut rs: Vec<Replica> = start
        .into_iter()
        .map(|text| Replica {
            text,
            log: Vec::new(),
            seen: HashSet::new(),
        })
        .collect();
    let deliver = |rs: &mut Vec<Replica>,
                   all: &[Op],
                   write_of: &[u64],
                   from: usize,
                   to: usize,
                   count: usize| {
        let ops: Vec<usize> = rs[from].log.iter().take(count).copied().collect();
        for id in ops {
            rs[to].text.apply(&all[id]).expect("causal delivery");
            rs[to]
                .text
                .stamp(agent_of(&all[id]), first_write + write_of[id]);
            if rs[to].seen.insert(id) {
                rs[to].log.push(id);
            }
        }
    };
    for step in steps {
        match step {
            Step::Insert { replica, at, text } => {
                let r = &mut rs[*replica];
                let pos = (r.text.len() as f64 * at) as u64;
                let op = r.text.insert(*replica as u64 + 1, pos, text);
                all.push(op);
                write_of.push(writes);
                r.text.stamp(*replica as u64 + 1, first_write + writes);
                writes += 1;
                r.seen.insert(all.len() - 1);
                r.log.push(all.len() - 1);
            }
            Step::Delete { replica, at, len } => {
                let r = &mut rs[*replica];
                let shown = r.text.len();
                if shown == 0 {
                    continue;
                }
                let pos = ((shown as f64 * at) as u64).min(shown - 1);
                for op in r
                    .text
                    .delete(*replica as u64 + 1, pos, (*len).min(shown - pos))
                {
                    all.push(op);
                    write_of.push(writes);
                    r.seen.insert(all.len() - 1);
                    r.log.push(all.len() - 1);
                }
                r.text.stamp(*replica as u64 + 1, first_write + writes);
                writes += 1;
            }
            Step::Sync { from, to, count } => deliver(&mut rs, &all, &write_of, *from, *to, *count),
        }
    }
    // Everyone takes everything, each from the others in its own order.
    for to in (0..replicas).filter(|_| settle) {
        for k in 1..=replicas {
            let from = (to + k) % replicas;
            deliver(&mut rs, &all, &write_of, from, to, usize::MAX);
        }
    }
    (rs.into_iter().map(|r| r.text).collect(), writes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Replicas that saw the same operations, in their own orders, show the same
    /// text and encode it alike.
    #[test]
    fn replicas_that_saw_the_same_operations_show_the_same_text(
        (replicas, steps) in (3..=5usize).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..80)))
    ) {
        let texts = run_texts(replicas, &steps);
        for text in &texts[1..] {
            prop_assert_eq!(text.to_string(), texts[0].to_string());
            // Encoded alike too (digests compare replicas by their bytes).
            prop_assert_eq!(text.encode(), texts[0].encode());
        }
    }

    #[test]
    fn a_text_decodes_to_itself_and_goes_on_alike(
        steps in prop::collection::vec(step(3), 1..60),
        more in "[a-z]{1,4}",
    ) {
        for mut text in run_texts(3, &steps) {
            let bytes = text.encode();
            let mut decoded = Text::decode(&bytes).unwrap();
            prop_assert_eq!(decoded.to_string(), text.to_string());
            prop_assert_eq!(decoded.encode(), bytes);
            prop_assert_eq!(decoded.version(), text.version());
            // Edited alike from there, both stay alike.
            let pos = text.len() / 2;
            let op = text.insert(9, pos, &more);
            decoded.apply(&op).unwrap();
            prop_assert_eq!(decoded.to_string(), text.to_string());
        }
    }

    /// A fifth author edits the text as one replica held it at some version; the
    /// replica, which went on meanwhile, makes the same edit against that version:
    /// the same operations, the same text as taking the author's.
    #[test]
    fn an_edit_made_against_an_old_version_lands_where_it_was_meant(
        before in prop::collection::vec(step(3), 1..40),
        after in prop::collection::vec(step(3), 1..40),
        at in 0.0..=1.0f64,
        len in 0..4u64,
        text in "[x-z]{1,3}",
    ) {
        let texts = run_texts(3, &before);
        let old = texts[0].clone();
        let version = old.version();
        let now = run_from(texts, &after).swap_remove(0);
        let pos = (old.len() as f64 * at) as u64;
        let (mut author, mut theirs, mut ours) = (old.clone(), now.clone(), now.clone());
        let made = author.insert(99, pos, &text);
        theirs.apply(&made).unwrap();
        let past = old.len() + 1;
        prop_assert_eq!(ours.insert_at(99, &version, past, "x"), Err(Beyond { len: old.len() }));
        prop_assert_eq!(ours.delete_at(99, &version, pos, past), Err(Beyond { len: old.len() }));
        prop_assert_eq!(ours.insert_at(99, &version, pos, &text), Ok(made));
        prop_assert_eq!(ours.to_string(), theirs.to_string());
        // Then the author deletes, from the text as it holds it now.
        let version = author.version();
        let len = len.min(author.len() - pos);
        let made = author.delete(99, pos, len);
        for op in &made {
            theirs.apply(op).unwrap();
        }
        prop_assert_eq!(ours.delete_at(99, &version, pos, len), Ok(made));
        prop_assert_eq!(ours.to_string(), theirs.to_string());
    }

    /// Replicas merged by their states (as a state transfer would), in any order and
    /// again, hold what taking every operation gives.
    #[test]
    fn merging_states_gives_what_the_operations_give(
        steps in prop::collection::vec(step(3), 1..60),
    ) {
        let apart = history((0..3).map(|_| Text::new()).collect(), &steps, false, 0).0;
        let together = run_texts(3, &steps)[0].to_string();
        let mut forwards = apart[0].clone();
        forwards.merge(&apart[1]).unwrap();
        forwards.merge(&apart[2]).unwrap();
        let mut backwards = apart[2].clone();
        backwards.merge(&apart[1]).unwrap();
        backwards.merge(&apart[0]).unwrap();
        prop_assert_eq!(forwards.to_string(), together.clone());
        prop_assert_eq!(backwards.to_string(), together);
        prop_assert_eq!(forwards.version(), backwards.version());
        let again = forwards.clone();
        forwards.merge(&again).unwrap();
        forwards.merge(&apart[1]).unwrap();
        prop_assert_eq!(forwards.to_string(), again.to_string());
        prop_assert_eq!(forwards.encode(), again.encode());
    }

    /// A context names a version through the writes noted: the version a replica
    /// was at is the one its context then names, however far it went since (and in
    /// a copy made by merging, or decoded).
    #[test]
    fn a_context_names_the_version_it_was_read_at(
        before in prop::collection::vec(step(3), 1..40),
        after in prop::collection::vec(step(3), 1..40),
    ) {
        // Writes are numbered from 1, as dots' counters are.
        let (texts, writes) = history((0..3).map(|_| Text::new()).collect(), &before, true, 1);
        let old = texts[0].version();
        let now = history(texts, &after, true, writes + 1).0.swap_remove(0);
        // Read after the last write of `before`, numbered `writes`.
        let read_at = |_agent: u64| writes;
        prop_assert_eq!(now.version_at(read_at, None), old.clone());
        let mut merged = Text::new();
        merged.merge(&now).unwrap();
        prop_assert_eq!(merged.version_at(read_at, None), old.clone());
        prop_assert_eq!(Text::decode(&now.encode()).unwrap().version_at(read_at, None), old);
    }

    /// A replica saved in pages, then saved again after more edits and a merge
    /// (each save writing only what changed), loads back as it is.
    #[test]
    fn a_text_saved_in_pages_as_it_changes_loads_back(
        before in prop::collection::vec(step(3), 1..40),
        after in prop::collection::vec(step(3), 1..40),
    ) {
        let mut pages: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut header = Vec::new();
        let mut save = |text: &mut Text| {
            let saved = text.save();
            if saved.fresh {
                pages.clear();
            }
            pages.extend(saved.pages);
            header = saved.header;
            Text::load(&header, |id| pages.get(&id).cloned()).unwrap()
        };
        let (mut texts, writes) = history((0..3).map(|_| Text::new()).collect(), &before, true, 1);
        let loaded = save(&mut texts[0]);
        prop_assert_eq!(loaded.encode(), texts[0].encode());
        // Apart: replica 1 holds what replica 0 lacks, merged in below.
        let mut now = history(texts, &after, false, writes + 1).0;
        let loaded = save(&mut now[0]);
        prop_assert_eq!(loaded.encode(), now[0].encode());
        let mut merged = loaded;
        merged.merge(&now[1]).unwrap();
        let reloaded = save(&mut merged);
        prop_assert_eq!(reloaded.encode(), merged.encode());
    }

    #[test]
    fn any_bytes_decode_or_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Text::decode(&bytes);
        let mut framed = vec![1u8];
        framed.extend(&bytes);
        let _ = Text::decode(&framed);
    }

    #[test]
    fn concurrent_runs_at_one_place_never_interleave(
        base in "[a-z]{0,6}",
        at in 0.0..=1.0f64,
        runs in prop::collection::vec(("[A-Z]{1,6}", any::<bool>()), 2..=4),
    ) {
        // Every replica holds the base; each types its run at one place, forwards
        // (each character after the one before) or backwards (each at the place).
        let mut origin = Text::new();
        let base_op = (!base.is_empty()).then(|| origin.insert(100, 0, &base));
        let pos = (base.chars().count() as f64 * at) as u64;
        let mut replicas: Vec<Text> = Vec::new();
        let mut ops: Vec<Vec<Op>> = Vec::new();
        for (r, (run, forwards)) in runs.iter().enumerate() {
            let mut text = Text::new();
            if let Some(op) = &base_op {
                text.apply(op).unwrap();
            }
            let chars: Vec<char> = run.chars().collect();
            let mut made = Vec::new();
            for i in 0..chars.len() {
                made.push(if *forwards {
                    text.insert(r as u64 + 1, pos + i as u64, chars[i].to_string())
                } else {
                    text.insert(r as u64 + 1, pos, chars[chars.len() - 1 - i].to_string())
                });
            }
            replicas.push(text);
            ops.push(made);
        }
        for (r, text) in replicas.iter_mut().enumerate() {
            for (o, made) in ops.iter().enumerate() {
                if o != r {
                    for op in made {
                        text.apply(op).unwrap();
                    }
                }
            }
        }
        let merged = replicas[0].to_string();
        for text in &replicas[1..] {
            prop_assert_eq!(&text.to_string(), &merged);
        }
        for (run, _) in &runs {
            prop_assert!(merged.contains(run.as_str()), "{run} interleaved in {merged}");
        }
    }
}
