//! Wire types of clawfleet: everything that crosses a process boundary.
//!
//! This crate is the only place that derives serde for what clawfleet says on the wire:
//! the HTTP API bodies ([`api`]), the stored and streamed [`event`]s, the model service APIs
//! ([`model`]: OpenAI and Ollama), the MQTT bus topics
//! ([`topic`]) and payloads ([`bus`]), and the codeswarm router lines ([`router`]).
//! It does no IO and knows no domain rules; `clawfleet-core` validates what is decoded here.

pub mod api;
pub mod bus;
pub mod cluster;
pub mod event;
pub mod fleetfile;
pub mod mailbox;
pub mod model;
pub mod policy;
pub mod router;
pub mod topic;

/// Largest prompt (or system prompt) clawfleet accepts, in bytes of UTF-8.
///
/// Chosen to fit comfortably in one MQTT packet and in any model context clawfleet serves;
/// a larger prompt is refused with an error that names this limit.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// Largest MQTT payload clawfleet publishes or accepts on the bus.
pub const MAX_BUS_PAYLOAD_BYTES: usize = 256 * 1024;

/// Largest router input line, in bytes; longer lines are refused without being parsed.
pub const MAX_ROUTER_LINE_BYTES: usize = 1024 * 1024;

/// Longest `request_id` a client may give, in bytes: it is stored with every event its command
/// causes (one `inject_ack` per agent), so it is bounded like every stored string (codeswarm's
/// clients send UUIDs, 36 bytes).
pub const MAX_REQUEST_ID_BYTES: usize = 256;
