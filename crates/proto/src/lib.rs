//! Wire types of clawfleet: everything that crosses a process boundary.
//!
//! This crate is the only place that derives serde for what clawfleet says on the wire:
//! the HTTP API bodies ([`api`]), the stored and streamed [`event`]s, the model service APIs
//! ([`model`]: OpenAI and Ollama), the MQTT bus topics
//! ([`topic`]) and payloads ([`bus`]), and the codeswarm router lines ([`router`]).
//! It does no IO and knows no domain rules; `clawfleet-core` validates what is decoded here.

/// An enum of names: each variant has one, as on the wire (serde's, snake_case). Gives
/// `ALL`, `as_str`, `Display` and a `FromStr` whose error names what it expected.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    let (last, rest) = names.split_last().expect("an enum has variants");
                    let expected = if rest.is_empty() { (*last).to_owned() } else { format!("{} or {last}", rest.join(", ")) };
                    format!("unknown {} '{}' (expected {expected})", $what, s.chars().take(32).collect::<String>())
                })
            }
        }
    };
}
pub(crate) use named_enum;

pub mod alive;
pub mod api;
pub mod approval;
pub mod bus;
pub mod cluster;
pub mod council;
pub mod event;
pub mod exposition;
pub mod fleetfile;
pub mod mailbox;
pub mod model;
pub mod policy;
pub mod project;
pub mod queue;
pub mod rack;
pub mod router;
pub mod scenario;
pub mod snapshot;
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

#[cfg(test)]
mod named_enum_tests {
    use crate::api::{DeployState, FleetState};
    use crate::cluster::TransportMode;

    /// Each variant's name is its serde name, and parses back.
    fn check<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + serde::Serialize + std::str::FromStr + std::fmt::Display,
    {
        for v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(v.to_string()), "{v:?}");
            assert!(v.to_string().parse::<T>().is_ok_and(|back| back == *v), "{v:?}");
        }
    }

    #[test]
    fn names_are_the_wire_names_and_parse_back() {
        check(FleetState::ALL);
        check(DeployState::ALL);
        check(TransportMode::ALL);
        check(crate::scenario::Rps::ALL);
        check(crate::scenario::Chooser::ALL);
        assert_eq!("pigeon".parse::<TransportMode>().unwrap_err(), "unknown transport 'pigeon' (expected bus, mailbox or auto)");
        assert_eq!(
            "x".repeat(100).parse::<FleetState>().unwrap_err(),
            format!("unknown fleet state '{}' (expected active or terminating)", "x".repeat(32))
        );
    }
}
