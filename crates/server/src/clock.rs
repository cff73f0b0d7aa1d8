//! Time as the control plane reads it: wall-clock stamps for events, a monotonic clock for
//! liveness (so a wall-clock jump never marks agents lost).

use std::sync::OnceLock;
use std::time::Instant;

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Milliseconds on a monotonic clock that starts with the process.
pub(crate) fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
