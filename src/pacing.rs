//! Pacing shared by the layers: a capped exponential backoff (failed accepts, stream
//! reconnections) and a log limiter that lets a repeated warning through once per period with the
//! count of those held back (query truncation, stream frame errors).

use std::time::{Duration, Instant};

/// Doubles the pause after each failure, from `min` up to `max`; a success resets it.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `min` is the first pause (at most `max`).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Back to the first pause.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The pause to take now, without taking it.
    pub(crate) fn peek(&self) -> Duration {
        self.next
    }

    /// The pause to take now; the next one is twice as long (up to `max`).
    pub(crate) fn advance(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

/// Lets a repeated warning through once per `every`, counting the ones held back.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)`: log now, mentioning the `n` warnings held back since the last one; `None`: hold
    /// this one back. `force` lets it through whatever the period (a new kind of warning).
    pub(crate) fn admit(&mut self, now: Instant, force: bool) -> Option<u64> {
        match self.last {
            Some(t) if !force && now.saturating_duration_since(t) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }

    /// Warnings held back since the last one let through.
    #[cfg(test)]
    pub(crate) fn held_back(&self) -> u64 {
        self.held_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let seen: Vec<Duration> = (0..9).map(|_| b.advance()).collect();
        assert_eq!(seen[0], Duration::from_millis(10));
        assert_eq!(seen[1], Duration::from_millis(20));
        assert_eq!(seen[6], Duration::from_millis(640));
        assert_eq!(seen[7], Duration::from_secs(1));
        assert_eq!(seen[8], Duration::from_secs(1));
        assert_eq!(b.peek(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.advance(), Duration::from_millis(10));
        let mut tight = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(
            tight.advance(),
            Duration::from_secs(1),
            "min is capped by max"
        );
    }

    #[test]
    fn repeated_warnings_pass_once_per_period_with_the_count_held_back() {
        let mut w = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.admit(t0, false), Some(0));
        for i in 1..=5 {
            assert_eq!(w.admit(t0 + Duration::from_secs(i), false), None);
        }
        assert_eq!(w.held_back(), 5);
        assert_eq!(w.admit(t0 + Duration::from_secs(10), false), Some(5));
        assert_eq!(w.admit(t0 + Duration::from_secs(11), false), None);
        assert_eq!(
            w.admit(t0 + Duration::from_secs(12), true),
            Some(1),
            "forced"
        );
        assert_eq!(w.admit(t0 + Duration::from_secs(25), false), Some(0));
    }
}
