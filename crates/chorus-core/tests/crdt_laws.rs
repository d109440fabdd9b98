//! Property tests of the CRDT types, on histories made by a model of replicas that
//! make random operations on one document and exchange them in random causal
//! orders, with duplicates. Checked: every replica ends with the same document
//! (convergence, whatever the order: concurrent deltas commute), re-applying changes
//! nothing, state joins are commutative, associative and idempotent and agree with
//! delivery, and the document means what a boring reference model of each type says:
//! counters sum every increment, sets and flags are add-wins (an add survives unless
//! a remove saw it), registers keep the writes no later write saw, a bounded
//! counter is never below zero anywhere, at any time, and a text or list holds
//! every item inserted that no delete took and no remove of the field saw.

use chorus_core::crdt::{self, Field, Kind, OpError, Operation, Update};
use chorus_core::{Dot, Hlc, KeyState, NodeId, Op};
use proptest::prelude::*;
use std::collections::BTreeSet;

const REPLICAS: usize = 3;

#[derive(Clone, Debug)]
enum Act {
    Count(i64),
    Bound(i64),
    Transfer(usize, u64),
    Add(u8),
    Remove(u8),
    Mv(u8),
    Lww(u8),
    Enable,
    Disable,
    RemoveMap,
    /// A plain delete of the whole document, with the replica's context.
    Delete,
    /// `counter.add` on the set's path: a type mismatch once the set exists.
    Mistyped,
    /// Inserts characters (each unique in the history) into the text `/t`, at this
    /// fraction (of 255) of its length.
    TextInsert(u8, usize),
    /// Deletes up to this many characters of `/t` from this fraction.
    TextDelete(u8, u64),
    /// `map.remove` of `/t`.
    RemoveText,
    /// Inserts this element into the list `/m/q` (in the map `RemoveMap` removes).
    ListInsert(u8, u8),
    ListDelete(u8, u64),
}

#[derive(Clone, Debug)]
enum Step {
    Write {
        at: usize,
        act: Act,
    },
    Deliver {
        from: usize,
        at: usize,
        order: Vec<usize>,
        duplicate: bool,
    },
}

fn act(deletes: bool) -> impl Strategy<Value = Act> {
    prop_oneof![
        (-3i64..6).prop_map(Act::Count),
        (-4i64..5).prop_map(Act::Bound),
        (0..REPLICAS, 0u64..4).prop_map(|(to, by)| Act::Transfer(to, by)),
        (0u8..4).prop_map(Act::Add),
        (0u8..4).prop_map(Act::Remove),
        (0u8..4).prop_map(Act::Mv),
        (0u8..4).prop_map(Act::Lww),
        Just(Act::Enable),
        Just(Act::Disable),
        Just(Act::RemoveMap),
        Just(Act::Mistyped),
        (any::<u8>(), 1usize..4).prop_map(|(at, n)| Act::TextInsert(at, n)),
        (any::<u8>(), 1u64..4).prop_map(|(at, n)| Act::TextDelete(at, n)),
        Just(Act::RemoveText),
        (any::<u8>(), any::<u8>()).prop_map(|(at, x)| Act::ListInsert(at, x)),
        (any::<u8>(), 1u64..3).prop_map(|(at, n)| Act::ListDelete(at, n)),
        (0u8..if deletes { 4 } else { 1 }).prop_map(move |n| if deletes && n == 0 {
            Act::Delete
        } else {
            Act::Enable
        }),
    ]
}

fn steps(deletes: bool) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0..REPLICAS, act(deletes)).prop_map(|(at, act)| Step::Write { at, act }),
            1 => (0..REPLICAS, 0..REPLICAS, prop::collection::vec(any::<usize>(), 8), any::<bool>())
                .prop_map(|(from, at, order, duplicate)| Step::Deliver { from, at, order, duplicate }),
        ],
        1..60,
    )
}

fn path(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn node(r: usize) -> NodeId {
    NodeId(100 + r as u64)
}

/// A write that was accepted, and what its origin had applied when making it.
struct Written {
    op: Op,
    act: Act,
    deps: BTreeSet<usize>,
    /// The characters it inserted into `/t`, and those it deleted there.
    inserted: String,
    deleted: BTreeSet<char>,
}

struct Replica {
    state: KeyState,
    applied: BTreeSet<usize>,
    counter: u64,
}

impl Replica {
    fn apply(&mut self, i: usize, op: &Op) {
        assert_eq!(self.state.apply(op), Ok(true));
        self.applied.insert(i);
        assert_bounded_nonnegative(&self.state);
    }
}

fn doc(state: &KeyState) -> crdt::Map {
    state.crdt_document().cloned().unwrap_or_default()
}

fn assert_bounded_nonnegative(state: &KeyState) {
    if let Some(Field::Bounded(b)) = doc(state).get(&path(&["b"]), Kind::Bounded) {
        let added: u64 = b.entries().values().map(|r| r.added).sum();
        let spent: u64 = b.entries().values().map(|r| r.spent).sum();
        assert!(added >= spent, "bounded counter below zero: {b:?}");
    }
}

/// The text `/t` as `doc` shows it (empty when absent or removed).
fn text(doc: &crdt::Map) -> String {
    match doc.get(&path(&["t"]), Kind::Text) {
        Some(Field::Text(t)) if t.is_shown() => t.items().content(),
        _ => String::new(),
    }
}

/// The list `/m/q`'s elements as `doc` shows them.
fn list(doc: &crdt::Map) -> Vec<String> {
    match doc.get(&path(&["m", "q"]), Kind::List) {
        Some(Field::List(l)) if l.is_shown() => l.items().content(),
        _ => Vec::new(),
    }
}

/// The place `at` (a fraction of 255) of `len` items, with up to `most` after it.
fn span(at: u8, most: u64, len: usize) -> (u64, u64) {
    let pos = len as u64 * u64::from(at) / 255;
    (pos, most.min(len as u64 - pos))
}

/// The operation of `act` by a writer that shows `doc`; `unique` makes the
/// characters of an insert unique in the history.
fn operation(act: &Act, doc: &crdt::Map, unique: usize) -> Operation {
    let (p, update) = match act {
        Act::TextInsert(at, n) => (
            path(&["t"]),
            Update::TextInsert {
                pos: span(*at, 0, text(doc).chars().count()).0,
                text: (0..*n)
                    .map(|k| char::from_u32(0x4E00 + (unique * 4 + k) as u32).unwrap())
                    .collect(),
            },
        ),
        Act::TextDelete(at, most) => {
            let (pos, len) = span(*at, *most, text(doc).chars().count());
            (path(&["t"]), Update::TextDelete { pos, len })
        }
        Act::RemoveText => (path(&["t"]), Update::Remove),
        Act::ListInsert(at, x) => (
            path(&["m", "q"]),
            Update::ListInsert {
                pos: span(*at, 0, list(doc).len()).0,
                value: x.to_string().into_bytes(),
            },
        ),
        Act::ListDelete(at, most) => {
            let (pos, len) = span(*at, *most, list(doc).len());
            (path(&["m", "q"]), Update::ListDelete { pos, len })
        }
        Act::Count(by) => (path(&["n"]), Update::CounterAdd(*by)),
        Act::Bound(by) => (path(&["b"]), Update::BoundedAdd(*by)),
        Act::Transfer(to, by) => (
            path(&["b"]),
            Update::BoundedTransfer {
                to: node(*to),
                by: *by,
            },
        ),
        Act::Add(x) => (path(&["s"]), Update::SetAdd(vec![*x])),
        Act::Remove(x) => (path(&["s"]), Update::SetRemove(vec![*x])),
        Act::Mv(x) => (path(&["m", "r"]), Update::MvSet(vec![*x])),
        Act::Lww(x) => (path(&["m", "l"]), Update::LwwSet(vec![*x])),
        Act::Enable => (path(&["f"]), Update::FlagEnable),
        Act::Disable => (path(&["f"]), Update::FlagDisable),
        Act::RemoveMap => (path(&["m"]), Update::Remove),
        Act::Mistyped => (path(&["s"]), Update::CounterAdd(1)),
        Act::Delete => unreachable!("a delete is a plain op"),
    };
    Operation { path: p, update }
}

/// Runs the steps; returns the accepted writes and the replicas.
fn run(steps: &[Step]) -> (Vec<Written>, Vec<Replica>) {
    let mut ops: Vec<Written> = Vec::new();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| Replica {
            state: KeyState::new(),
            applied: BTreeSet::new(),
            counter: 0,
        })
        .collect();
    for (tick, step) in steps.iter().enumerate() {
        match step {
            Step::Write { at, act } => {
                let r = &mut replicas[*at];
                let dot = Dot::new(node(*at), r.counter + 1);
                // Skewed clocks: the HLC need not follow causality for LWW.
                let hlc = Hlc::from_parts(((tick * 7919) % 101) as u64, *at as u16);
                let context = r.state.context().clone();
                let before = doc(&r.state);
                let value = match act {
                    Act::Delete => None,
                    act => {
                        let set_exists = before.get(&path(&["s"]), Kind::Set).is_some();
                        let operation = operation(act, &before, ops.len());
                        match crdt::prepare(&mut before.clone(), &context, dot, hlc, &[operation]) {
                            Ok(_) if matches!(act, Act::Mistyped) => {
                                // Accepted only where no set exists yet; not applied,
                                // so the set stays a set.
                                assert!(!set_exists);
                                continue;
                            }
                            Ok(delta) => Some(crdt::encode_delta(&delta)),
                            Err(OpError::TypeMismatch { .. }) => {
                                assert!(matches!(act, Act::Mistyped) && set_exists);
                                continue;
                            }
                            Err(
                                OpError::InsufficientRights { .. } | OpError::SelfTransfer { .. },
                            ) => {
                                assert!(matches!(act, Act::Bound(_) | Act::Transfer(..)));
                                continue;
                            }
                            Err(e) => panic!("unexpected refusal {e}"),
                        }
                    }
                };
                let op = Op {
                    dot,
                    hlc,
                    collection: "c".into(),
                    key: "k".into(),
                    context,
                    value,
                };
                r.counter += 1;
                let deps = r.applied.clone();
                let i = ops.len();
                r.apply(i, &op);
                let after = doc(&r.state);
                let (shown_before, shown_after) = (text(&before), text(&after));
                let kept: BTreeSet<char> = shown_after.chars().collect();
                ops.push(Written {
                    op,
                    act: act.clone(),
                    deps,
                    inserted: match act {
                        Act::TextInsert(..) => shown_after
                            .chars()
                            .filter(|c| !shown_before.contains(*c))
                            .collect(),
                        _ => String::new(),
                    },
                    deleted: match act {
                        Act::TextDelete(..) => {
                            shown_before.chars().filter(|c| !kept.contains(c)).collect()
                        }
                        _ => BTreeSet::new(),
                    },
                });
            }
            Step::Deliver {
                from,
                at,
                order,
                duplicate,
            } => {
                let missing: Vec<usize> = replicas[*from]
                    .applied
                    .difference(&replicas[*at].applied)
                    .copied()
                    .collect();
                deliver(&mut replicas[*at], &ops, missing, order);
                if *duplicate && let Some(&i) = replicas[*at].applied.iter().next() {
                    let before = replicas[*at].state.clone();
                    assert_eq!(replicas[*at].state.apply(&ops[i].op), Ok(false));
                    assert_eq!(replicas[*at].state, before);
                }
            }
        }
    }
    (ops, replicas)
}

/// Applies `missing` in a causal order chosen by `order`.
fn deliver(r: &mut Replica, ops: &[Written], mut missing: Vec<usize>, order: &[usize]) {
    let mut choice = order.iter().cycle();
    while !missing.is_empty() {
        let ready: Vec<usize> = missing
            .iter()
            .copied()
            .filter(|i| ops[*i].deps.is_subset(&r.applied))
            .collect();
        let pick = ready[choice.next().copied().unwrap_or(0) % ready.len()];
        r.apply(pick, &ops[pick].op);
        missing.retain(|i| *i != pick);
    }
}

/// Writes matching `is_target` that no later write matching `removes` saw.
fn survivors(
    ops: &[Written],
    is_target: impl Fn(&Act) -> bool,
    removes: impl Fn(&Act) -> bool,
) -> Vec<&Written> {
    ops.iter()
        .filter(|w| is_target(&w.act))
        .filter(|w| {
            !ops.iter()
                .any(|r| removes(&r.act) && r.op.context.covers(w.op.dot))
        })
        .collect()
}

fn state_join(a: &KeyState, b: &KeyState) -> crdt::Map {
    let mut out = a.clone();
    out.merge(b).unwrap();
    doc(&out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any causal delivery order, with duplicates, ends in one document everywhere,
    /// and that document is what the reference model says; with whole-document
    /// deletes in the history too (they remove only what they saw).
    #[test]
    fn replicas_converge_to_the_model(
        (deletes, steps) in any::<bool>().prop_flat_map(|d| (Just(d), steps(d))),
        order in prop::collection::vec(any::<usize>(), 8),
    ) {
        let (ops, mut replicas) = run(&steps);
        for r in &mut replicas {
            let missing: Vec<usize> = (0..ops.len()).filter(|i| !r.applied.contains(i)).collect();
            deliver(r, &ops, missing, &order);
        }
        let reference = doc(&replicas[0].state);
        for r in &replicas[1..] {
            prop_assert_eq!(&doc(&r.state), &reference);
            // Encoded alike too: digests compare replicas by their bytes.
            prop_assert_eq!(crdt::encode_state(&doc(&r.state)), crdt::encode_state(&reference));
            prop_assert_eq!(r.state.context(), replicas[0].state.context());
        }
        check_model(&ops, &reference, deletes)?;
    }

    /// State joins (used by state transfers) of replicas' partial states are
    /// commutative, associative and idempotent, and joining all of them gives what
    /// full delivery gives.
    #[test]
    fn state_joins_are_a_semilattice(steps in steps(true), order in prop::collection::vec(any::<usize>(), 8)) {
        let (ops, replicas) = run(&steps);
        let [a, b, c] = [&replicas[0].state, &replicas[1].state, &replicas[2].state];
        prop_assert_eq!(state_join(a, b), state_join(b, a));
        prop_assert_eq!(state_join(a, a), doc(a));
        let mut ab = a.clone();
        ab.merge(b).unwrap();
        let mut bc = b.clone();
        bc.merge(c).unwrap();
        prop_assert_eq!(state_join(&ab, c), state_join(a, &bc));
        let mut full = Replica { state: KeyState::new(), applied: BTreeSet::new(), counter: 0 };
        deliver(&mut full, &ops, (0..ops.len()).collect(), &order);
        prop_assert_eq!(state_join(&ab, c), doc(&full.state));
    }
}

fn check_model(ops: &[Written], doc: &crdt::Map, deletes: bool) -> Result<(), TestCaseError> {
    // Sets: add-wins. An add survives unless a later add or remove of the same
    // element, or a delete, saw it.
    let expected: BTreeSet<Vec<u8>> = ops
        .iter()
        .filter_map(|w| match w.act {
            Act::Add(x) => Some((w, x)),
            _ => None,
        })
        .filter(|(w, x)| {
            !ops.iter().any(|r| match r.act {
                Act::Remove(y) | Act::Add(y) => y == *x && r.op.context.covers(w.op.dot),
                Act::Delete => r.op.context.covers(w.op.dot),
                _ => false,
            })
        })
        .map(|(_, x)| vec![x])
        .collect();
    let actual: BTreeSet<Vec<u8>> = match doc.get(&path(&["s"]), Kind::Set) {
        Some(Field::Set(elements)) => elements.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    prop_assert_eq!(actual, expected, "set");
    // Counter: the sum of every increment (with no deletes to reset it).
    if !deletes {
        let expected: i64 = ops
            .iter()
            .map(|w| match w.act {
                Act::Count(by) => by,
                _ => 0,
            })
            .sum();
        let actual = match doc.get(&path(&["n"]), Kind::Counter) {
            Some(Field::Counter(d)) => Field::counter_value(d),
            _ => 0,
        };
        prop_assert_eq!(actual, i128::from(expected), "counter");
    }
    // Bounded counter: every accepted add less every accepted spend.
    let expected: i64 = ops
        .iter()
        .map(|w| match w.act {
            Act::Bound(by) => by,
            _ => 0,
        })
        .sum();
    let actual = match doc.get(&path(&["b"]), Kind::Bounded) {
        Some(Field::Bounded(b)) => b.value() as i64,
        _ => 0,
    };
    prop_assert_eq!(actual, expected, "bounded counter");
    // Flag: enable-wins.
    let enabled = !survivors(
        ops,
        |a| matches!(a, Act::Enable),
        |a| matches!(a, Act::Disable | Act::Delete),
    )
    .is_empty();
    prop_assert_eq!(
        doc.get(&path(&["f"]), Kind::Flag).is_some(),
        enabled,
        "flag"
    );
    // Registers: the writes no later write or remove saw.
    let mv: BTreeSet<Vec<u8>> = survivors(
        ops,
        |a| matches!(a, Act::Mv(_)),
        |a| matches!(a, Act::Mv(_) | Act::RemoveMap | Act::Delete),
    )
    .iter()
    .map(|w| match w.act {
        Act::Mv(x) => vec![x],
        _ => unreachable!(),
    })
    .collect();
    let actual: BTreeSet<Vec<u8>> = match doc.get(&path(&["m", "r"]), Kind::MvRegister) {
        Some(Field::MvRegister(d)) => d.iter().map(|(_, v)| v.clone()).collect(),
        _ => BTreeSet::new(),
    };
    prop_assert_eq!(actual, mv, "mv register");
    let lww = survivors(
        ops,
        |a| matches!(a, Act::Lww(_)),
        |a| matches!(a, Act::Lww(_) | Act::RemoveMap | Act::Delete),
    )
    .into_iter()
    .max_by_key(|w| (w.op.hlc, w.op.dot))
    .map(|w| match w.act {
        Act::Lww(x) => vec![x],
        _ => unreachable!(),
    });
    let actual = match doc.get(&path(&["m", "l"]), Kind::LwwRegister) {
        Some(Field::LwwRegister(d)) => Field::lww_value(d).map(<[u8]>::to_vec),
        _ => None,
    };
    prop_assert_eq!(actual, lww, "lww register");
    // Text: every character inserted that no delete took and no remove of the text
    // (or delete of the document) saw; shown while a write to it is unseen by those.
    let removes = |a: &Act| matches!(a, Act::RemoveText | Act::Delete);
    let expected: BTreeSet<char> = ops
        .iter()
        .filter(|w| {
            !ops.iter()
                .any(|r| removes(&r.act) && r.op.context.covers(w.op.dot))
        })
        .flat_map(|w| w.inserted.chars())
        .filter(|c| !ops.iter().any(|w| w.deleted.contains(c)))
        .collect();
    let actual = text(doc);
    prop_assert_eq!(actual.chars().collect::<BTreeSet<char>>(), expected, "text");
    prop_assert_eq!(
        actual.chars().count(),
        actual.chars().collect::<BTreeSet<_>>().len()
    );
    let shown = !survivors(
        ops,
        |a| matches!(a, Act::TextInsert(..) | Act::TextDelete(..)),
        removes,
    )
    .is_empty();
    let field = doc.get(&path(&["t"]), Kind::Text);
    prop_assert_eq!(field.is_some_and(Field::is_shown), shown, "text shown");
    // List: the same, as a count (elements repeat).
    let list_removes = |a: &Act| matches!(a, Act::RemoveMap | Act::Delete);
    let inserted = ops
        .iter()
        .filter(|w| matches!(w.act, Act::ListInsert(..)))
        .filter(|w| {
            !ops.iter()
                .any(|r| list_removes(&r.act) && r.op.context.covers(w.op.dot))
        })
        .count();
    prop_assert!(list(doc).len() <= inserted, "list");
    Ok(())
}
