//! The clawfleet bus: MQTT, hub-and-spoke.
//!
//! - [`broker`]: the embedded broker (rmqtt) that `clawfleet up` starts by default. It asks an
//!   [`Authenticator`] who a client is, and `clawfleet_core::acl` what it may touch.
//! - [`client`]: a reconnecting MQTT client (rumqttc) that re-subscribes after every connect and
//!   reports connection changes and messages on one channel.
//! - [`credentials`]: per-agent bus passwords derived from one secret, so no table of them exists.
//! - [`auth`]: the control plane's [`Authenticator`]: its own login and its fleets' agents.
//! - [`url`]: `mqtt://user:pass@host:port` URLs of external brokers.
//! - [`tls`]: MQTT over TLS in front of the embedded broker, and the rustls server configuration.
//! - [`dynsec`]: the same logins and ACLs on Mosquitto, as its dynamic-security plugin's file
//!   and commands.

pub mod auth;
pub mod broker;
pub mod client;
pub mod credentials;
pub mod dynsec;
pub mod tls;
pub mod url;

pub use auth::{CONTROL_USER, FleetAuth, OBSERVER_USER};
pub use broker::{Authenticator, BrokerConfig, EmbeddedBroker};
pub use client::{BusClient, BusEvent, ClientConfig, Will};
pub use credentials::{BusSecret, FleetKey};
pub use url::BusUrl;
