//! Keeps the agent logins of an external Mosquitto's dynamic-security plugin current: each
//! reconcile pass, before any backend starts an agent, adds the logins of new fleets and slots
//! and removes those of fleets that are gone, through the plugin's topic API. The plugin's
//! answers come back on the bus; refusals are logged.

use std::collections::BTreeSet;
use std::sync::Mutex;

use clawfleet_bus::BusSecret;
use clawfleet_bus::dynsec::{self, AgentLogin};
use clawfleet_core::{AgentRef, FleetName};
use clawfleet_store::FleetRow;

use crate::app::App;

pub(crate) struct Dynsec {
    secret: BusSecret,
    /// The logins sent to the plugin since this control plane started.
    known: Mutex<BTreeSet<AgentLogin>>,
}

impl Dynsec {
    pub(crate) fn new(secret: BusSecret) -> Dynsec {
        Dynsec { secret, known: Mutex::default() }
    }

    /// Makes the plugin's agent logins those of `fleets` (every stored fleet, terminating ones
    /// too: their agents still report their last events).
    pub(crate) async fn sync(&self, app: &App, fleets: &[FleetRow]) {
        let wanted: BTreeSet<AgentLogin> = fleets
            .iter()
            .filter_map(|f| Some((f.name.parse::<FleetName>().ok()?, f)))
            .flat_map(|(name, f)| {
                (0..f.replicas).map(move |slot| AgentLogin { agent: AgentRef { fleet: name.clone(), slot }, fleet_uid: f.uid.clone() })
            })
            .collect();
        let (add, remove): (Vec<_>, Vec<_>) = {
            let known = self.known.lock().expect("not poisoned");
            (wanted.difference(&known).cloned().collect(), known.difference(&wanted).cloned().collect())
        };
        // A fleet relaunched under its name: its old logins go before the new ones come. Large
        // fleets go in several messages, each within the bus's payload limit.
        let messages = remove
            .chunks(dynsec::LOGINS_PER_MESSAGE)
            .map(dynsec::remove_agents)
            .chain(add.chunks(dynsec::LOGINS_PER_MESSAGE).map(|chunk| dynsec::add_agents(&self.secret, chunk)));
        for command in messages {
            let payload = serde_json::to_vec(&command).expect("commands serialize");
            if let Err(e) = app.bus.publish(dynsec::CONTROL_TOPIC, payload, false).await {
                tracing::warn!(error = %e, "Could not send Mosquitto's dynamic-security plugin its agent logins; trying again");
                return;
            }
        }
        *self.known.lock().expect("not poisoned") = wanted;
    }
}

/// A response of the plugin, read from the bus.
pub(crate) fn response(payload: &[u8]) {
    for error in dynsec::response_errors(payload) {
        tracing::error!(%error, "Mosquitto's dynamic-security plugin refused a command");
    }
}
