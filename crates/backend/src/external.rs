//! The external backend: clawfleet starts nothing. The user runs the agents
//! (`clawfleet agent --join FLEET`, on any machine that reaches the bus); the control plane
//! knows them only by their heartbeats. Useful for machines no backend can drive, and for
//! simulating large fleets with `agent --join --count N`.

use async_trait::async_trait;
use clawfleet_core::BackendKind;
use clawfleet_proto::api::Isolation;

use crate::{Action, Applied, Backend, BackendError, Deployment, Instance, Rollout};

#[derive(Debug, Default)]
pub struct ExternalBackend;

#[async_trait]
impl Backend for ExternalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }

    fn isolation(&self) -> Isolation {
        Isolation::External
    }

    /// The user starts and replaces the agents: nothing is planned.
    fn rollout(&self) -> Rollout {
        Rollout::Native
    }

    async fn observe(&self, _: &Deployment) -> Result<Vec<Instance>, BackendError> {
        Ok(Vec::new())
    }

    async fn execute(&self, _: &Deployment, _: &[Action]) -> Result<Applied, BackendError> {
        Ok(Applied::Started)
    }

    async fn remove(&self, _: &Deployment) -> Result<bool, BackendError> {
        Ok(true)
    }

    async fn shutdown(&self) {}
}
