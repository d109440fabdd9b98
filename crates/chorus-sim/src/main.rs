//! `chorus-sim`: run or replay simulated clusters.
//!
//! ```text
//! cargo run --release -p chorus-sim -- --seed 42          # replay one seed
//! cargo run --release -p chorus-sim -- --seeds 10000      # seeds 1..=10000
//! ```

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Deterministic simulation of Chorus clusters: run seeds, replay one")]
struct Args {
    /// Run exactly this seed (a replay).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds `from..from+seeds`.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Add CRDT operations (counters, sets) to the workload.
    #[arg(long)]
    crdt: bool,
    /// Add device replicas uploading to any node, answers lost now and then.
    #[arg(long)]
    devices: bool,
    /// Steps of client operations and faults per seed.
    #[arg(long, default_value_t = chorus_sim::DEFAULT_STEPS)]
    steps: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match args.seed {
        Some(seed) => seed..seed + 1,
        None => args.from..args.from + args.seeds,
    };
    let mut totals = chorus_sim::Report::default();
    let mut runs = 0u64;
    for seed in seeds {
        let sim = chorus_sim::Sim::new(seed);
        let sim = if args.crdt { sim.with_crdt() } else { sim };
        let sim = if args.devices {
            sim.with_devices()
        } else {
            sim
        };
        match sim.run(args.steps) {
            Ok(report) => {
                runs += 1;
                totals.absorb(&report);
            }
            Err(failure) => {
                eprintln!("seed {seed} failed: {failure}");
                eprintln!(
                    "replay: cargo run --release -p chorus-sim -- --seed {seed} --steps {}{}{}",
                    args.steps,
                    if args.crdt { " --crdt" } else { "" },
                    if args.devices { " --devices" } else { "" }
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{runs} seeds passed: {} acknowledged writes, {} frames delivered, {} s simulated",
        totals.writes_acked,
        totals.frames_delivered,
        totals.sim_ms / 1000
    );
    println!(
        "state transfers: {} ({} key states sent; {} of {} buckets differed); tombstone collections: {}; conflict log prunes: {}",
        totals.state_transfers,
        totals.state_transfer_keys,
        totals.state_buckets_wanted,
        totals.state_transfers * chorus_node::STATE_BUCKETS as u64,
        totals.tombstone_collections,
        totals.conflict_prunes
    );
    println!(
        "links dialled around unreachable nodes: {}; writes with a home: {} taken by the home, {} failed over, {} uncertain (sent to a frozen node)",
        totals.healing_links,
        totals.home_writes_at_home,
        totals.home_writes_failed_over,
        totals.home_writes_uncertain
    );
    if args.devices {
        println!(
            "devices: {} writes taken, {} upload answers lost, {} uploads refused while in doubt elsewhere, \
             {} records of devices expired; {} acknowledged writes lost to restores from backups, \
             {} device writes queued again",
            totals.device_writes_taken,
            totals.device_answers_lost,
            totals.device_in_doubt_refusals,
            totals.device_records_expired,
            totals.writes_lost_to_restores,
            totals.device_writes_requeued
        );
    }
    println!("faults injected:");
    for (kind, n) in &totals.faults {
        println!("  {kind}: {n}");
    }
    ExitCode::SUCCESS
}
