//! Where directives leave the control plane, whoever sends them (the API's first send, the
//! outbox's resends, ingest's replay requests): the bus, and the inbox of each agent that talks
//! through a mailbox. The mailbox loop keeps the routes current (each slot's current job); a
//! directive lost on either way is sent again by the outbox until its agent answers.

use std::collections::HashMap;
use std::sync::Mutex;

use clawfleet_bus::BusClient;
use clawfleet_mailbox::Mailbox;
use clawfleet_proto::bus::{self as wire, Directive};
use clawfleet_proto::mailbox as lines;
use clawfleet_proto::topic::{self, Channel};

/// Each slot's current job id, in a mailbox fleet.
pub(crate) type Jobs = HashMap<u32, String>;

pub(crate) struct Outbound {
    bus: BusClient,
    /// The mailbox fleets: their mailbox and their agents' current jobs.
    routes: Mutex<HashMap<String, (Mailbox, Jobs)>>,
}

impl Outbound {
    pub(crate) fn new(bus: BusClient) -> Outbound {
        Outbound { bus, routes: Mutex::default() }
    }

    /// Sends `directive` to each of `slots`, one bus message per agent. Returns whether the
    /// bus took every message.
    pub(crate) async fn to_agents(&self, fleet: &str, slots: &[u32], directive: &Directive) -> bool {
        self.to_inboxes(fleet, slots, directive);
        let payload = wire::encode(directive);
        let mut all = true;
        for &slot in slots {
            all &= self.bus.publish(topic::agent(fleet, slot, Channel::Cmd), payload.clone(), false).await.is_ok();
        }
        all
    }

    /// Sends `directive` to `targets` in one bus message on the fleet's topic, naming its
    /// targets unless they are every agent of the fleet (`everyone`: a broadcast to 10,000
    /// agents carries no list of 10,000 slots to each); inboxes get it one by one.
    pub(crate) async fn to_fleet(&self, fleet: &str, targets: &[u32], everyone: bool, directive: &Directive) {
        self.to_inboxes(fleet, targets, directive);
        let mut broadcast = directive.clone();
        if let Directive::Inject { targets: t, .. } | Directive::Command { targets: t, .. } | Directive::Play { targets: t, .. } =
            &mut broadcast
        {
            *t = (!everyone).then(|| targets.to_vec());
        }
        let _ = self.bus.publish(topic::fleet_cmd(fleet), wire::encode(&broadcast), false).await;
    }

    /// Appends `directive` to the inbox of each of `slots` that talks through a mailbox (agents
    /// on the bus have no outbox, so no route, and get nothing here).
    fn to_inboxes(&self, fleet: &str, slots: &[u32], directive: &Directive) {
        // The routes are copied out: no file is written under the lock.
        let (mailbox, routes): (Mailbox, Vec<(u32, String)>) = {
            let fleets = self.routes.lock().expect("not poisoned");
            let Some((mailbox, jobs)) = fleets.get(fleet) else { return };
            (mailbox.clone(), slots.iter().filter_map(|s| Some((*s, jobs.get(s)?.clone()))).collect())
        };
        let line = lines::inbox_line(directive);
        for (slot, job) in routes {
            if let Err(e) = mailbox.append_inbox(&job, slot, &line) {
                tracing::warn!(fleet, slot, error = %e, "Could not append to an agent's inbox; will retry");
            }
        }
    }

    /// A fleet's agents talk through `mailbox`, each slot through its current job's files.
    pub(crate) fn route(&self, fleet: &str, mailbox: Mailbox, jobs: Jobs) {
        self.routes.lock().expect("not poisoned").insert(fleet.to_owned(), (mailbox, jobs));
    }

    /// Only these fleets have mailboxes now.
    pub(crate) fn keep_routes(&self, fleets: impl Fn(&str) -> bool) {
        self.routes.lock().expect("not poisoned").retain(|name, _| fleets(name));
    }
}
