//! Property tests of the merge and apply laws of key states, on histories made by a
//! small model of replicas that write (blind, with a full context, or with a stale
//! one, with arbitrarily skewed clocks) and exchange ops.

use chorus_core::{Dot, Hlc, KeyState, NodeId, Op, Policy, VersionVector};
use proptest::prelude::*;
use std::collections::BTreeSet;

const REPLICAS: usize = 3;

/// One step of the model: replica `at` writes, or delivers what `from` has to `at`.
#[derive(Clone, Debug)]
enum Step {
    Write {
        at: usize,
        context: ContextChoice,
        delete: bool,
        clock_ms: u64,
    },
    Deliver {
        from: usize,
        at: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum ContextChoice {
    Blind,
    Current,
    Stale,
}

fn step() -> impl Strategy<Value = Step> {
    let context = prop_oneof![
        Just(ContextChoice::Blind),
        Just(ContextChoice::Current),
        Just(ContextChoice::Stale)
    ];
    prop_oneof![
        (0..REPLICAS, context, prop::bool::weighted(0.2), 0..20u64).prop_map(
            |(at, context, delete, clock_ms)| Step::Write {
                at,
                context,
                delete,
                clock_ms
            }
        ),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, at)| Step::Deliver { from, at }),
    ]
}

/// A written op and the ops its origin had applied when writing it.
struct Written {
    op: Op,
    deps: BTreeSet<usize>,
}

struct Replica {
    state: KeyState,
    applied: BTreeSet<usize>,
    stale_context: VersionVector,
    counter: u64,
}

/// Runs the steps; returns every op written and the final replicas. (Policies do not
/// change key states; they only choose what a read shows.)
fn run(steps: &[Step]) -> (Vec<Written>, Vec<Replica>) {
    let mut ops: Vec<Written> = Vec::new();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| Replica {
            state: KeyState::new(),
            applied: BTreeSet::new(),
            stale_context: VersionVector::new(),
            counter: 0,
        })
        .collect();
    for (tick, step) in steps.iter().enumerate() {
        match *step {
            Step::Write {
                at,
                context,
                delete,
                clock_ms,
            } => {
                let r = &mut replicas[at];
                r.counter += 1;
                let context = match context {
                    ContextChoice::Blind => VersionVector::new(),
                    ContextChoice::Current => r.state.context().clone(),
                    ContextChoice::Stale => r.stale_context.clone(),
                };
                r.stale_context = r.state.context().clone();
                let op = Op {
                    dot: Dot::new(NodeId(at as u64 + 1), r.counter),
                    // Arbitrary clocks: skew, ties, and later writes with earlier times.
                    hlc: Hlc::from_parts(clock_ms, 0),
                    collection: "c".into(),
                    key: "k".into(),
                    context,
                    value: (!delete).then(|| format!("v{tick}").into_bytes()),
                };
                r.state.apply(&op).unwrap();
                ops.push(Written {
                    op,
                    deps: r.applied.clone(),
                });
                r.applied.insert(ops.len() - 1);
            }
            Step::Deliver { from, at } => {
                // Delivery in the sender's apply order is a causal order.
                let missing: Vec<usize> = replicas[from]
                    .applied
                    .difference(&replicas[at].applied)
                    .copied()
                    .collect();
                for i in missing {
                    let r = &mut replicas[at];
                    r.state.apply(&ops[i].op).unwrap();
                    r.applied.insert(i);
                }
            }
        }
    }
    (ops, replicas)
}

/// Applies every op in a random causal order (a linear extension of the deps) and
/// returns the final state with every conflict record produced.
fn apply_in_causal_order(
    ops: &[Written],
    policy: Policy,
    choices: &[usize],
) -> (KeyState, Vec<chorus_core::ConflictRecord>) {
    let mut state = KeyState::new();
    let mut records = Vec::new();
    let mut done = BTreeSet::new();
    let mut choice = choices.iter().cycle();
    while done.len() < ops.len() {
        let ready: Vec<usize> = (0..ops.len())
            .filter(|i| !done.contains(i) && ops[*i].deps.is_subset(&done))
            .collect();
        let pick = ready[choice.next().copied().unwrap_or(0) % ready.len()];
        if state.apply(&ops[pick].op).unwrap() {
            records.extend(policy.conflict("c", "k", &state));
        }
        done.insert(pick);
    }
    (state, records)
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::Siblings), Just(Policy::Lww)]
}

fn merged(a: &KeyState, b: &KeyState) -> KeyState {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Merge is commutative, associative and idempotent on states that real
    /// histories reach.
    #[test]
    fn merge_is_a_join(steps in prop::collection::vec(step(), 1..40)) {
        let (_, replicas) = run(&steps);
        let [a, b, c] = [&replicas[0].state, &replicas[1].state, &replicas[2].state];
        prop_assert_eq!(merged(a, b), merged(b, a));
        prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        prop_assert_eq!(&merged(a, a), a);
    }

    /// Every causal order of applying the same ops yields the same state (so the
    /// same value under every policy, whatever the clocks), which is also the merge
    /// of all replicas' states.
    #[test]
    fn any_causal_order_converges(
        steps in prop::collection::vec(step(), 1..40),
        policy in policy(),
        order_a in prop::collection::vec(any::<usize>(), 1..50),
        order_b in prop::collection::vec(any::<usize>(), 1..50),
    ) {
        let (ops, replicas) = run(&steps);
        let (state_a, _) = apply_in_causal_order(&ops, policy, &order_a);
        let (state_b, _) = apply_in_causal_order(&ops, policy, &order_b);
        prop_assert_eq!(&state_a, &state_b);
        let (versions_a, versions_b) = (state_a.versions(), state_b.versions());
        prop_assert_eq!(policy.winner(&versions_a), policy.winner(&versions_b));
        let mut all = KeyState::new();
        for r in &replicas {
            all = merged(&all, &r.state);
        }
        prop_assert_eq!(&all, &state_a);
    }

    /// Nothing is silently lost: every value written is live, or was superseded by a
    /// write whose context saw it, or is kept in a conflict record.
    #[test]
    fn no_write_is_silently_lost(
        steps in prop::collection::vec(step(), 1..40),
        policy in policy(),
        order in prop::collection::vec(any::<usize>(), 1..50),
    ) {
        let (ops, _) = run(&steps);
        let (state, records) = apply_in_causal_order(&ops, policy, &order);
        for written in &ops {
            let dot = written.op.dot;
            let live = state.versions().iter().any(|v| v.dot == dot);
            let superseded = ops.iter().any(|o| o.op.dot != dot && o.op.context.covers(dot));
            let logged = records.iter().any(|r| {
                r.versions.iter().any(|v| v.dot == dot && v.value == written.op.value)
            });
prop_assert!(live || superseded || logged, "write {} lost", dot);
        }
    }

    /// A write with the context of a read replaces exactly the versions that read saw,
    /// even when other versions arrived in between.
    #[test]
    fn context_write_supersedes_exactly_what_it_saw(
        steps in prop::collection::vec(step(), 1..30),
        concurrent in 1u64..4,
    ) {
        let (_, replicas) = run(&steps);
        let mut state = replicas[0].state.clone();
        let seen: Vec<Dot> = state.versions().iter().map(|v| v.dot).collect();
        let read_context = state.context().clone();
        let outsider = NodeId(99);
        for counter in 1..=concurrent {
            state.apply(&Op {
                dot: Dot::new(outsider, counter),
                hlc: Hlc(0),
                collection: "c".into(),
                key: "k".into(),
                context: VersionVector::new(),
                value: Some(b"other".to_vec()),
            }).unwrap();
        }
        let write = Dot::new(NodeId(1), 1_000);
        state.apply(&Op {
            dot: write,
            hlc: Hlc(0),
            collection: "c".into(),
            key: "k".into(),
            context: read_context,
            value: Some(b"new".to_vec()),
        }).unwrap();
        let live: BTreeSet<Dot> = state.versions().iter().map(|v| v.dot).collect();
        let mut expected: BTreeSet<Dot> = (1..=concurrent).map(|c| Dot::new(outsider, c)).collect();
        expected.insert(write);
        prop_assert_eq!(live, expected);
        prop_assert!(seen.iter().all(|d| state.context().covers(*d)));
    }
}
