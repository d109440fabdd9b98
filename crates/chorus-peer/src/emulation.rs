//! Link emulation in the replication transport: one-way delay, jitter, loss and
//! partitions per link, so one machine can show wide-area behaviour (there is no
//! kernel netem here) and tests can create it.
//!
//! Off by default. Set per link in the cluster file (`[[emulate]]`, both directions)
//! or on the command line (`--emulate PEER:delay=40,jitter=5,loss=0.01`, this node's
//! frames to `PEER` only).
//!
//! **Invariant:** emulation delays frames but never reorders or drops them within a
//! connection, as TCP would not: a "lost" frame arrives one retransmission timeout
//! late, as a frame lost on the wire and retransmitted by TCP does. A partitioned
//! link refuses connections both ways and drops an open one.

use std::time::Duration;

/// Conditions emulated on a link, in the direction of this node's frames.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkEmulation {
    /// One-way delay added to every frame.
    pub delay_ms: u64,
    /// A uniformly random extra delay in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Probability (0 to 1) that a frame is lost once and retransmitted.
    pub loss: f64,
    /// No connection at all.
    pub partitioned: bool,
}

/// TCP's lower bound on the retransmission timeout (Linux: 200 ms).
const RETRANSMIT_MIN: Duration = Duration::from_millis(200);

impl LinkEmulation {
    /// Whether it changes anything.
    pub fn is_active(&self) -> bool {
        *self != LinkEmulation::default()
    }

    /// Parses `delay=40,jitter=5,loss=0.01,partitioned` (milliseconds; any subset).
    pub fn parse(spec: &str) -> Result<LinkEmulation, String> {
        let mut emulation = LinkEmulation::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let millis = || {
                value
                    .trim_end_matches("ms")
                    .parse::<u64>()
                    .map_err(|_| format!("{key}={value:?} is not a number of milliseconds"))
            };
            match key {
                "delay" => emulation.delay_ms = millis()?,
                "jitter" => emulation.jitter_ms = millis()?,
                "loss" => {
                    emulation.loss = value
                        .parse()
                        .map_err(|_| format!("loss={value:?} is not a number"))?
                }
                "partitioned" if value.is_empty() => emulation.partitioned = true,
                _ => {
                    return Err(format!(
                        "unknown link condition {part:?}; use delay=MS, jitter=MS, loss=P, partitioned"
                    ));
                }
            }
        }
        emulation.check()?;
        Ok(emulation)
    }

    /// Refuses a loss probability outside 0..=1.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} is not a probability (0 to 1)", self.loss));
        }
        Ok(())
    }

    /// How long to hold one frame back, drawing jitter and loss from `random`.
    pub fn hold(&self, random: &mut SplitMix) -> Duration {
        let delay = Duration::from_millis(self.delay_ms);
        let jitter = if self.jitter_ms > 0 {
            Duration::from_millis(random.next_u64() % (self.jitter_ms + 1))
        } else {
            Duration::ZERO
        };
        let lost = self.loss > 0.0 && random.unit() < self.loss;
        let retransmit = if lost {
            RETRANSMIT_MIN.max(delay * 4)
        } else {
            Duration::ZERO
        };
        delay + jitter + retransmit
    }
}

/// A small, fast pseudo-random generator (SplitMix64) for jitter and loss.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Specs parse into conditions; bad ones say what is wrong.
    #[test]
    fn parses_specs() {
        assert_eq!(
            LinkEmulation::parse("delay=40ms,jitter=5,loss=0.5").unwrap(),
            LinkEmulation {
                delay_ms: 40,
                jitter_ms: 5,
                loss: 0.5,
                partitioned: false
            }
        );
        assert!(LinkEmulation::parse("partitioned").unwrap().partitioned);
        assert!(!LinkEmulation::parse("").unwrap().is_active());
        for (bad, needle) in [
            ("delay=soon", "milliseconds"),
            ("loss=2", "probability"),
            ("bandwidth=1", "unknown link condition"),
        ] {
            let err = LinkEmulation::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    /// Holds stay within delay..=delay+jitter, plus a retransmission when lost; the
    /// share of lost frames follows the probability.
    #[test]
    fn holds_follow_the_conditions() {
        let mut random = SplitMix::new(7);
        let link = LinkEmulation {
            delay_ms: 40,
            jitter_ms: 10,
            loss: 0.25,
            partitioned: false,
        };
        let mut lost = 0;
        for _ in 0..10_000 {
            let hold = link.hold(&mut random).as_millis() as u64;
            if hold >= 200 {
                lost += 1;
                assert!((200..=210).contains(&(hold - 40)), "{hold}");
            } else {
                assert!((40..=50).contains(&hold), "{hold}");
            }
        }
        assert!((2_000..3_000).contains(&lost), "{lost} of 10000 lost");
    }
}
