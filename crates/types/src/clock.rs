//! Where the service reads the time.
//!
//! Every decision the control plane makes, and every row it writes, is stamped with the time
//! its [`Clock`] gives: the system clock in production, a clock the caller sets by hand in
//! tests (and in differential tests that replay the simulator's commands through the HTTP
//! API at simulated times).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::Timestamp;

/// A time source. Clones share one source.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that stands at `start` until [`Clock::set`] or [`Clock::advance`] moves it.
    pub fn manual(start: Timestamp) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(start.micros()))))
    }

    /// Whether this clock is set by hand.
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }

    /// The time now.
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            None => Timestamp::now(),
            Some(t) => Timestamp::from_micros(t.load(Ordering::Acquire)),
        }
    }

    /// Moves a manual clock to `t` (never backwards: an earlier `t` leaves it where it is).
    /// Does nothing to the system clock.
    pub fn set(&self, t: Timestamp) {
        if let Some(c) = &self.0 {
            c.fetch_max(t.micros(), Ordering::AcqRel);
        }
    }

    /// Moves a manual clock forward by `secs` seconds.
    pub fn advance(&self, secs: i64) {
        self.set(self.now().plus_seconds(secs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_clones_share_it() {
        let start = Timestamp::from_micros(1_800_000_000_000_000);
        let c = Clock::manual(start);
        let d = c.clone();
        assert_eq!(d.now(), start);
        c.advance(60);
        assert_eq!(d.now(), start.plus_seconds(60));
        d.set(start);
        assert_eq!(c.now(), start.plus_seconds(60), "never backwards");
        assert!(c.is_manual());
        let sys = Clock::system();
        sys.set(start);
        assert!(sys.now() > start.plus_seconds(-86_400 * 365 * 10));
    }
}
