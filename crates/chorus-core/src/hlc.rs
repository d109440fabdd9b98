//! Hybrid logical clock: physical milliseconds plus a logical counter in one `u64`.
//!
//! Layout: the high 48 bits are wall-clock milliseconds since the Unix epoch, the low
//! 16 bits a logical counter. Timestamps issued by one clock strictly increase, even
//! when the physical clock stands still or steps back. HLC orders last-write-wins and
//! feeds lag figures; it never decides whether two writes are concurrent (version
//! vectors do).
//!
//! The physical clock is passed in ([`PhysicalClock`]) so tests and the simulator can
//! drive time. A remote timestamp more than `drift_ms_max` ahead of our physical clock
//! is refused by [`HlcClock::observe`], so one peer with a runaway clock cannot drag
//! every replica into the future.

use std::fmt;

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn from_parts(wall_ms: u64, logical: u16) -> Hlc {
        assert!(
            wall_ms < (1 << (64 - LOGICAL_BITS)),
            "wall clock out of range"
        );
        Hlc((wall_ms << LOGICAL_BITS) | logical as u64)
    }

    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// A source of wall-clock milliseconds since the Unix epoch.
pub trait PhysicalClock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote timestamp {remote} is {ahead_ms} ms ahead of the local clock (at most {drift_ms_max} ms accepted)"
)]
pub struct ClockDriftError {
    pub remote: Hlc,
    pub ahead_ms: u64,
    pub drift_ms_max: u64,
}

/// The clock state of one replica. `last` must be persisted and restored so that
/// timestamps keep increasing across restarts.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    drift_ms_max: u64,
}

impl HlcClock {
    pub fn new(last: Hlc, drift_ms_max: u64) -> HlcClock {
        HlcClock { last, drift_ms_max }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event, greater than every timestamp seen so far.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let physical = Hlc::from_parts(now_ms, 0);
        self.last = if physical > self.last {
            physical
        } else {
            // When the logical counter overflows this carries into the millisecond
            // field, which keeps timestamps strictly increasing.
            Hlc(self.last.0 + 1)
        };
        self.last
    }

    /// Takes a remote timestamp into account, unless it runs too far ahead.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Result<(), ClockDriftError> {
        let ahead_ms = remote.wall_ms().saturating_sub(now_ms);
        if ahead_ms > self.drift_ms_max {
            return Err(ClockDriftError {
                remote,
                ahead_ms,
                drift_ms_max: self.drift_ms_max,
            });
        }
        self.last = self.last.max(remote);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timestamps strictly increase whether the physical clock advances, stands still
    /// or steps back.
    #[test]
    fn tick_is_strictly_increasing() {
        let mut clock = HlcClock::new(Hlc::default(), 1000);
        let a = clock.tick(100);
        let b = clock.tick(100);
        let c = clock.tick(50);
        let d = clock.tick(200);
        assert!(a < b && b < c && c < d);
        assert_eq!(a, Hlc::from_parts(100, 0));
        assert_eq!(c, Hlc::from_parts(100, 2));
        assert_eq!(d, Hlc::from_parts(200, 0));
    }

    /// A remote timestamp within the drift bound pulls the clock forward; one beyond
    /// it is refused and leaves the clock as it was.
    #[test]
    fn observe_bounds_drift() {
        let mut clock = HlcClock::new(Hlc::default(), 1000);
        clock.observe(Hlc::from_parts(1_500, 7), 1_000).unwrap();
        assert_eq!(clock.tick(1_000), Hlc::from_parts(1_500, 8));
        let err = clock.observe(Hlc::from_parts(5_000, 0), 1_000).unwrap_err();
        assert_eq!(err.ahead_ms, 4_000);
        assert_eq!(clock.last(), Hlc::from_parts(1_500, 8));
    }
}
