//! The external backend: clawfleet starts nothing. The user runs the agents
//! (`clawfleet agent --join FLEET`, on any machine that reaches the bus); the control plane
//! knows them only by their heartbeats. Useful for machines no backend can drive, and for
//! simulating large fleets with `agent --join --count N`.

use async_trait::async_trait;
use clawfleet_core::{BackendKind, FleetName};
use clawfleet_proto::api::Isolation;

use crate::{Applied, Backend, BackendError, Deployment, Replica};

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

    async fn apply(&self, _: &Deployment) -> Result<Applied, BackendError> {
        Ok(Applied::Started)
    }

    async fn observe(&self, _: &FleetName) -> Result<Vec<Replica>, BackendError> {
        Ok(Vec::new())
    }

    async fn remove(&self, _: &FleetName) -> Result<bool, BackendError> {
        Ok(true)
    }

    async fn shutdown(&self) {}
}
