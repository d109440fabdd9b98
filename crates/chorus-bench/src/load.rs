//! A closed-loop load generator: N client threads, each issuing one operation at a
//! time, for a fixed duration; latencies of every operation are kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Stats {
    pub ops: u64,
    pub elapsed: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Stats {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Stats from latencies in microseconds over `elapsed`.
    pub fn from_latencies_us(mut latencies_us: Vec<u64>, elapsed: Duration) -> Stats {
        latencies_us.sort_unstable();
        let quantile = |q: f64| {
            if latencies_us.is_empty() {
                return f64::NAN;
            }
            let at = ((latencies_us.len() as f64 * q) as usize).min(latencies_us.len() - 1);
            latencies_us[at] as f64 / 1000.0
        };
        Stats {
            ops: latencies_us.len() as u64,
            elapsed,
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
        }
    }
}

/// Runs `op(key, i)` from `clients` threads for `duration`; keys are drawn uniformly
/// from `0..keys`. Failed operations abort the run.
pub fn run_closed_loop(
    clients: usize,
    duration: Duration,
    keys: u64,
    op: impl Fn(u64, u64) -> anyhow::Result<()> + Sync,
) -> Stats {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let latencies: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                let (op, stop) = (&op, &stop);
                s.spawn(move || {
                    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (client as u64 + 1);
                    let mut latencies = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let began = Instant::now();
                        op(state % keys, i).unwrap_or_else(|e| panic!("operation failed: {e:#}"));
                        latencies.push(began.elapsed().as_micros() as u64);
                        i += 1;
                    }
                    latencies
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    Stats::from_latencies_us(latencies.concat(), started.elapsed())
}

/// The closed loop of `Node::put` calls every write benchmark uses: random keys of
/// `0..keys`, the standard document.
pub fn embedded_writes(
    node: &chorus_node::Node,
    clients: usize,
    duration: Duration,
    keys: u64,
) -> Stats {
    run_closed_loop(clients, duration, keys, |key, i| {
        node.put(
            "bench",
            &format!("key-{key}"),
            crate::document(key, i).as_bytes(),
            None,
        )?;
        Ok(())
    })
}
