//! The same bus ACLs on Mosquitto, through its dynamic-security plugin: a client and a role per
//! identity (the control plane, the read-only observer, every agent), with the topics
//! `clawfleet_core::acl` gives each.
//!
//! [`config_file`] is the plugin's whole JSON file (passwords hashed the plugin's way: PBKDF2 with
//! SHA-512, 101 rounds, a 12-byte salt) for `clawfleet bus config --mosquitto DIR`; the control
//! plane then keeps it current with the plugin's topic API ([`add_agents`], [`remove_agents`]
//! on `$CONTROL/dynamic-security/v1`), so agents of new fleets can log in without a restart.
//!
//! Mosquitto checks a will against the ACL when it would send it (not at CONNECT, as the embedded
//! broker does), so a will on a topic its client may not publish is never delivered. It has no
//! rule for retained messages.

use std::num::NonZeroU32;

use clawfleet_core::AgentRef;
use clawfleet_core::acl;
use clawfleet_proto::topic::{self, Channel};
use rand::RngCore;
use serde_json::{Value, json};

use crate::credentials::BusSecret;
use crate::{CONTROL_USER, OBSERVER_USER};

/// The topic the plugin takes commands on.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where it answers them.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

const ITERATIONS: u32 = 101;

/// The most logins one command message carries, so that it stays within the bus's payload
/// limit (`clawfleet_proto::MAX_BUS_PAYLOAD_BYTES`) for the longest fleet names.
pub const LOGINS_PER_MESSAGE: usize = 100;

/// One agent of one fleet incarnation, as a bus login.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentLogin {
    pub agent: AgentRef,
    pub fleet_uid: String,
}

fn acl(kind: &str, topic: &str) -> Value {
    json!({"acltype": kind, "topic": topic, "priority": 0, "allow": true})
}

/// The role of one agent: exactly `core::acl`'s topics.
fn agent_role(a: &AgentRef) -> Value {
    let f = a.fleet.as_str();
    json!({
        "rolename": acl::agent_username(a),
        "acls": [
            acl("publishClientSend", &topic::agent(f, a.slot, Channel::Events)),
            acl("publishClientSend", &topic::agent(f, a.slot, Channel::Heartbeat)),
            acl("subscribeLiteral", &topic::agent(f, a.slot, Channel::Cmd)),
            acl("subscribeLiteral", &topic::fleet_cmd(f)),
        ],
    })
}

/// A client with its password hashed as the plugin stores it.
fn hashed_client(username: &str, password: &str, clientid: Option<&str>) -> Value {
    let mut salt = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    let mut hash = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        NonZeroU32::new(ITERATIONS).expect("non-zero"),
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut c = json!({
        "username": username,
        "password": b64.encode(hash),
        "salt": b64.encode(salt),
        "iterations": ITERATIONS,
        "roles": [{"rolename": username}],
    });
    if let Some(id) = clientid {
        c["clientid"] = json!(id);
    }
    c
}

/// The plugin's configuration file: everything denied by default; the control plane may do
/// anything (and administer the plugin), the observer may read `clawfleet/v1/#`, each agent
/// its own topics, logging in with its own client id.
pub fn config_file(secret: &BusSecret, agents: &[AgentLogin]) -> Value {
    let mut clients = vec![
        hashed_client(CONTROL_USER, &secret.control_password(), None),
        hashed_client(OBSERVER_USER, &secret.observer_password(), None),
    ];
    let mut roles = vec![
        json!({"rolename": CONTROL_USER, "acls": [
            acl("publishClientSend", "#"),
            acl("publishClientSend", "$CONTROL/dynamic-security/#"),
            acl("subscribePattern", "#"),
            acl("subscribePattern", "$CONTROL/dynamic-security/#"),
        ]}),
        json!({"rolename": OBSERVER_USER, "acls": [acl("subscribePattern", "clawfleet/v1/#")]}),
    ];
    for a in agents {
        let name = acl::agent_username(&a.agent);
        let id = acl::agent_client_id(&a.agent, &a.fleet_uid);
        clients.push(hashed_client(&name, &secret.agent_password(&a.agent, &a.fleet_uid), Some(&id)));
        roles.push(agent_role(&a.agent));
    }
    json!({
        "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true, "subscribe": false, "unsubscribe": true},
        "clients": clients,
        "groups": [],
        "roles": roles,
    })
}

/// Commands that let `agents` log in (the plugin hashes their passwords). Travels only between
/// the control plane and the broker: `$` topics match no subscriber's `#`.
pub fn add_agents(secret: &BusSecret, agents: &[AgentLogin]) -> Value {
    let mut commands = Vec::new();
    for a in agents {
        let name = acl::agent_username(&a.agent);
        let mut role = agent_role(&a.agent);
        role["command"] = json!("createRole");
        commands.push(role);
        commands.push(json!({
            "command": "createClient",
            "username": name,
            "password": secret.agent_password(&a.agent, &a.fleet_uid),
            "clientid": acl::agent_client_id(&a.agent, &a.fleet_uid),
            "roles": [{"rolename": name}],
        }));
    }
    json!({ "commands": commands })
}

/// Commands that remove `agents`' logins.
pub fn remove_agents(agents: &[AgentLogin]) -> Value {
    let mut commands = Vec::new();
    for a in agents {
        let name = acl::agent_username(&a.agent);
        commands.push(json!({"command": "deleteClient", "username": name}));
        commands.push(json!({"command": "deleteRole", "rolename": name}));
    }
    json!({ "commands": commands })
}

/// The refusals in a response of the plugin, less the ones a repeated command earns.
pub fn response_errors(payload: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return vec!["the dynamic-security plugin sent a response that is not JSON".into()];
    };
    v["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let error = r["error"].as_str()?;
            let repeat = error.contains("already exists") || error.contains("not found");
            (!repeat).then(|| format!("{}: {error}", r["command"].as_str().unwrap_or("?")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(s: &str) -> AgentLogin {
        AgentLogin { agent: s.parse().unwrap(), fleet_uid: "u1".into() }
    }

    #[test]
    fn the_file_gives_each_identity_its_own_topics() {
        let secret = BusSecret::from_bytes([5; 32]);
        let file = config_file(&secret, &[login("squad/0")]);
        assert_eq!(file["defaultACLAccess"]["publishClientSend"], false);
        assert_eq!(file["defaultACLAccess"]["subscribe"], false);
        let clients = file["clients"].as_array().unwrap();
        let names: Vec<&str> = clients.iter().map(|c| c["username"].as_str().unwrap()).collect();
        assert_eq!(names, [CONTROL_USER, OBSERVER_USER, "agent/squad/0"]);
        assert_eq!(clients[2]["clientid"], "clawfleet-squad-0-u1");
        let role = &file["roles"][2];
        let topics: Vec<(&str, &str)> =
            role["acls"].as_array().unwrap().iter().map(|a| (a["acltype"].as_str().unwrap(), a["topic"].as_str().unwrap())).collect();
        assert_eq!(
            topics,
            [
                ("publishClientSend", "clawfleet/v1/fleets/squad/agents/0/events"),
                ("publishClientSend", "clawfleet/v1/fleets/squad/agents/0/heartbeat"),
                ("subscribeLiteral", "clawfleet/v1/fleets/squad/agents/0/cmd"),
                ("subscribeLiteral", "clawfleet/v1/fleets/squad/cmd"),
            ]
        );
        // No password is in the file, only its hash.
        let text = file.to_string();
        for pw in [secret.control_password(), secret.observer_password(), secret.agent_password(&login("squad/0").agent, "u1")] {
            assert!(!text.contains(&pw));
        }
    }

    /// The plugin's hash: PBKDF2-HMAC-SHA512 of the password under the salt, 101 rounds, as
    /// OpenSSL's `PKCS5_PBKDF2_HMAC` computes it (Debian's Mosquitto checks it end to end).
    #[test]
    fn passwords_are_hashed_as_the_plugin_checks_them() {
        use base64::Engine;
        let c = hashed_client("u", "secret", None);
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode(c["salt"].as_str().unwrap()).unwrap();
        let hash = b64.decode(c["password"].as_str().unwrap()).unwrap();
        assert_eq!((salt.len(), hash.len(), c["iterations"].as_u64()), (12, 64, Some(101)));
        assert!(ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA512, NonZeroU32::new(101).unwrap(), &salt, b"secret", &hash).is_ok());
    }

    #[test]
    fn a_message_of_logins_fits_the_bus() {
        let secret = BusSecret::from_bytes([5; 32]);
        let longest = "f".repeat(clawfleet_core::names::MAX_FLEET_NAME);
        let logins: Vec<AgentLogin> = (0..LOGINS_PER_MESSAGE as u32)
            .map(|slot| AgentLogin { agent: format!("{longest}/{}", 100_000 + slot).parse().unwrap(), fleet_uid: "0123456789ab".into() })
            .collect();
        for message in [add_agents(&secret, &logins), remove_agents(&logins)] {
            let size = serde_json::to_vec(&message).unwrap().len();
            assert!(size < clawfleet_proto::MAX_BUS_PAYLOAD_BYTES, "{size} bytes");
        }
    }

    #[test]
    fn responses_report_real_refusals_only() {
        let r = br#"{"responses":[{"command":"createClient","error":"Client already exists"},{"command":"createRole"},{"command":"deleteClient","error":"Permission denied"}]}"#;
        assert_eq!(response_errors(r), ["deleteClient: Permission denied"]);
        assert_eq!(response_errors(b"junk").len(), 1);
    }
}
