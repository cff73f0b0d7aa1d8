//! clawfleet's domain, pure: validated names and specs, brain specs, the command vocabulary,
//! agent liveness, the bus access rules, who may do what on the API, the reconcile plan, who
//! leads a fleet and the rules of its scenarios, and validated generation requests.
//!
//! **Architecture invariant:** this crate does no IO and reads no clock; callers pass `now`.
//! Everything here is a function of its arguments, so it is tested without processes or sockets.

pub mod acl;
pub mod authz;
pub mod brain;
pub mod command;
pub mod council;
pub mod delegation;
pub mod desired;
pub mod generation;
pub mod leader;
pub mod liveness;
pub mod names;
pub mod plan;
pub mod project;
pub mod queue;
pub mod scenario;
pub mod spec;

pub use brain::BrainSpec;
pub use command::CommandName;
pub use names::{AgentRef, FleetName, NameError};
pub use spec::{BackendKind, FleetSpec, SpecError};
