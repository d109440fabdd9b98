//! The simulator in CI: regression seeds (each once found a bug), then a range of
//! seeds. `CHORUS_SIM_SEEDS=N` runs N seeds (default 200); `CHORUS_SIM_FROM=S` starts
//! at S. A failure names its seed and the command that replays it.

use chorus_sim::{DEFAULT_STEPS, Report, Sim};

/// Seeds that found bugs, kept so the bugs stay fixed:
/// - 2: a frame that overtook a session's first `Entries` frame was taken as its start,
///   so the entries before it were acknowledged unseen (fixed by `resumes`).
/// - 5: lww dropped losers from the key state, so a later write that superseded the
///   winner but not a loser (with a skewed clock) showed differently on two replicas
///   (fixed by resolving lww at read time).
/// - 1051: collecting only fully deleted documents diverged when a write concurrent
///   with the delete arrived after the collection on one node and before it on
///   another (fixed: stable tombstones are collected beside live versions too).
/// - 1195: merging a transferred key state revived versions the key's context had
///   seen but the node's vector did not yet cover (mid-transfer), while CRDT
///   support was being added (fixed: both count as seen).
/// - 100026: a joining node adopted a state transfer one of whose parts a healed
///   partition had let the end overtake, so its vector covered a settings document
///   it never got (fixed: `StateEnd` counts its parts, guarded by the engine test
///   `a_transfer_missing_a_part_is_not_adopted`; and held frames keep their order).
const REGRESSIONS: [u64; 5] = [2, 5, 1051, 1195, 100026];

fn run(seed: u64) -> Report {
    match Sim::new(seed).run(DEFAULT_STEPS) {
        Ok(report) => report,
        Err(failure) => panic!(
            "seed {seed} failed: {failure}\nreplay: cargo run --release -p chorus-sim -- --seed {seed}"
        ),
    }
}

#[test]
fn regression_seeds() {
    for seed in REGRESSIONS {
        run(seed);
    }
}

#[test]
fn seed_range() {
    let count: u64 = std::env::var("CHORUS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let from: u64 = std::env::var("CHORUS_SIM_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let mut totals = Report::default();
    for seed in from..from + count {
        totals.absorb(&run(seed));
    }
    // The range exercises what the simulator is for (a change that silently stopped
    // healing, membership changes or home routing from happening fails here).
    if count >= 100 {
        let fault = |kind| totals.faults.get(kind).copied().unwrap_or(0);
        assert!(totals.healing_links > 0, "no link healed around a node");
        assert!(
            totals.home_writes_failed_over > 0,
            "no home write failed over"
        );
        assert!(totals.state_transfers > 0, "no state transfer");
        for kind in ["node joined", "node left", "link added", "freeze", "crash"] {
            assert!(fault(kind) > 0, "no {kind:?} in {count} seeds");
        }
    }
}

/// CRDT seeds that found bugs:
/// - 10125: a CRDT write made while a state transfer was merged but not yet adopted
///   had a context beyond what it depended on; a replica that applied it early
///   counted a concurrent increment as seen and skipped it when it came (fixed: a
///   CRDT write's context is what its node has seen *and applied* of the key).
/// - 10006, 10161: with a first fix (writes depending on their context too), an
///   entry waited for writes a peer had only by transfer, and was never retried
///   after that peer's transfer to us was adopted (fixed in the engine: adoption
///   retries what waits, like applied entries do).
const CRDT_REGRESSIONS: [u64; 3] = [10006, 10125, 10161];

/// Seeds with CRDT operations in the workload: replicas converge and every counter
/// holds exactly the acknowledged increments, through crashes, partitions and
/// state transfers. `CHORUS_SIM_CRDT_SEEDS=N` runs N (default 40) after the
/// regression seeds.
#[test]
fn crdt_seed_range() {
    let count: u64 = std::env::var("CHORUS_SIM_CRDT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in CRDT_REGRESSIONS.into_iter().chain(5_000..5_000 + count) {
        if let Err(failure) = Sim::new(seed).with_crdt().run(DEFAULT_STEPS) {
            panic!(
                "seed {seed} failed: {failure}\nreplay: cargo run --release -p chorus-sim -- --seed {seed} --crdt"
            );
        }
    }
}

/// The same seed gives the same run, to the frame.
#[test]
fn a_seed_replays_exactly() {
    let a = Sim::new(77).run(DEFAULT_STEPS).unwrap();
    let b = Sim::new(77).run(DEFAULT_STEPS).unwrap();
    assert_eq!(
        (a.writes_acked, a.frames_delivered, a.sim_ms),
        (b.writes_acked, b.frames_delivered, b.sim_ms)
    );
    assert_eq!(a.faults, b.faults);
}

/// Device seeds that once failed: 100559, a write answered "taken before" without
/// its dot (the node's record had moved on), whose supersession the checks missed.
const DEVICE_REGRESSIONS: [u64; 1] = [100559];

/// Seeds with device replicas in the workload: writes made outside the cluster and
/// uploaded to whichever node a device reaches, answers lost now and then, through
/// crashes, partitions, joins and leaves; every write a device learns was taken is
/// on every replica, and none is taken twice. `CHORUS_SIM_DEVICE_SEEDS=N` runs N
/// (default 30).
#[test]
fn device_seed_range() {
    let count: u64 = std::env::var("CHORUS_SIM_DEVICE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    for seed in DEVICE_REGRESSIONS.into_iter().chain(9_000..9_000 + count) {
        if let Err(failure) = Sim::new(seed).with_devices().run(DEFAULT_STEPS) {
            panic!(
                "seed {seed} failed: {failure}\nreplay: cargo run --release -p chorus-sim -- --seed {seed} --devices"
            );
        }
    }
}
