//! The clawfleet agent runtime: what runs in every replica.
//!
//! One [`runtime::run`] per agent: a single event loop over its bus connection, its brain's
//! output, a heartbeat timer, a watchdog and the shutdown signal. It runs turns one at a time,
//! journals every event it emits in its [`workspace`] (so the control plane can ask for a
//! replay of anything it missed), de-duplicates directives by id, and ends every turn with a
//! terminal event. [`brain`] adapts each kind of brain (HTTP model APIs, agent CLIs, any
//! command) to one streaming interface.
//!
//! It reaches the control plane over the bus, or through a mailbox on a shared filesystem
//! ([`link`]) when its node has no route to the bus.
//!
//! **Architecture invariant:** an agent talks only to the bus (or its mailbox) and to its brain; never to
//! another agent and never to the control plane's HTTP API (except `join`, in the CLI).

pub mod brain;
pub mod config;
pub mod link;
pub mod runtime;
pub mod sandbox;
pub mod sysinfo;
pub mod workspace;

pub use config::AgentConfig;
pub use link::{MailboxSpec, Transport};

/// The version of this runtime, reported in heartbeats and `version-report`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// RFC 3339 UTC timestamp with milliseconds, as every clawfleet event carries.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
