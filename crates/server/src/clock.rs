//! Time as the control plane reads it: wall-clock stamps for events, a monotonic clock for
//! liveness (so a wall-clock jump never marks agents lost).

use std::sync::OnceLock;
use std::time::Instant;

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The wall-clock time `seconds` ago, stamped as events are (a window's start).
pub(crate) fn rfc3339_ago(seconds: u64) -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now() - std::time::Duration::from_secs(seconds)).to_string()
}

/// Seconds since the Unix epoch (token expiry).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the Unix epoch (retention's marks).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A Unix time as RFC 3339.
pub(crate) fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64)).to_string()
}

/// Milliseconds on a monotonic clock that starts with the process.
pub(crate) fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
