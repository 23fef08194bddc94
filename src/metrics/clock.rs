//! The metrics clock: wall-clock nanoseconds read from a monotonic clock.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

/// The process's time base. Process-wide because a stamp taken on a source
/// thread is compared with the time on a sink thread; a constant once set.
static CLOCK: LazyLock<Clock> = LazyLock::new(|| Clock {
    base: Instant::now(),
    base_unix_ns: SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0),
});

/// Nanoseconds since the Unix epoch: monotonic within the process and
/// comparable between the processes of a cluster (up to clock skew between
/// hosts), so a record read on one worker and written on another has a latency.
pub fn now_ns() -> u64 {
    let clock = &*CLOCK;
    clock.base_unix_ns + clock.base.elapsed().as_nanos() as u64
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> f64 {
    now_ns() as f64 / 1e9
}
