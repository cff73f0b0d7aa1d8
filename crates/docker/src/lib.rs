//! clawfleet on Docker.
//!
//! - [`engine`]: a client of the Docker Engine API over its unix socket ([`engine::ReadOnly`]
//!   for callers that must only read).
//! - [`image`]: agent images built locally, `FROM scratch`, from the running binary.
//! - [`discover`]: every running task of a Swarm service with its address (swarm, dns, auto).
//! - [`swarm`]: the Docker backend: a fleet is a Swarm service, a Swarm slot is an agent slot.

pub mod discover;
pub mod engine;
pub mod image;
pub mod swarm;

pub use engine::{Engine, EngineError, ReadOnly};
pub use swarm::{DockerBackend, DockerConfig};
