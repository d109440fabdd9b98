//! `chorus-sim`: run or replay simulated clusters.
//!
//! ```text
//! cargo run --release -p chorus-sim -- --seed 42          # replay one seed
//! cargo run --release -p chorus-sim -- --seeds 10000      # seeds 1..=10000
//! ```

use clap::Parser;
use std::collections::BTreeMap;
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
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut runs, mut writes, mut frames, mut transfers, mut keys, mut buckets) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for seed in seeds {
        match chorus_sim::Sim::new(seed).run(args.steps) {
            Ok(report) => {
                runs += 1;
                writes += report.writes_acked;
                frames += report.frames_delivered;
                transfers += report.state_transfers;
                keys += report.state_transfer_keys;
                buckets += report.state_buckets_wanted;
                for (kind, n) in report.faults {
                    *faults.entry(kind).or_default() += n;
                }
            }
            Err(failure) => {
                eprintln!("seed {seed} failed: {failure}");
                eprintln!(
                    "replay: cargo run --release -p chorus-sim -- --seed {seed} --steps {}",
                    args.steps
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{runs} seeds passed: {writes} acknowledged writes, {frames} frames delivered, {transfers} state transfers"
    );
    println!(
        "  state transfers sent {keys} key states; {buckets} of {} buckets differed",
        transfers * 256
    );
    for (kind, n) in faults {
        println!("  {kind}: {n}");
    }
    ExitCode::SUCCESS
}
