//! Bounded polling, instead of fixed sleeps, wherever a test waits for something to happen.

use std::time::{Duration, Instant};

/// Pause between two tries.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Calls `probe` until it returns `Some` (that value is returned) or `timeout` has passed (`None`).
/// `probe` runs at least once, and once more at or after the deadline, so a condition that holds
/// by then is never missed.
pub(crate) fn until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= end {
            return None;
        }
        std::thread::sleep(POLL.min(end - now));
    }
}

/// [`until`] for a plain condition: whether it held within `timeout`.
pub(crate) fn until_true(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    until(timeout, || cond().then_some(())).is_some()
}
