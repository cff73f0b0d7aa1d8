//! The clawfleet bus: MQTT, hub-and-spoke.
//!
//! - [`broker`]: the embedded broker (rmqtt) that `clawfleet up` starts by default. It asks an
//!   [`Authenticator`] who a client is, and `clawfleet_core::acl` what it may touch.
//! - [`client`]: a reconnecting MQTT client (rumqttc) that re-subscribes after every connect and
//!   reports connection changes and messages on one channel.
//! - [`credentials`]: per-agent bus passwords derived from one secret, so no table of them exists.
//! - [`url`]: `mqtt://user:pass@host:port` URLs of external brokers.

pub mod broker;
pub mod client;
pub mod credentials;
pub mod url;

pub use broker::{Authenticator, BrokerConfig, EmbeddedBroker};
pub use client::{BusClient, BusEvent, ClientConfig, Will};
pub use credentials::BusSecret;
pub use url::BusUrl;
