//! Who may log in to the embedded broker: the control plane (one account), and the agents of
//! fleets that exist, each with its own derived password and client id.

use std::collections::HashMap;
use std::sync::RwLock;

use clawfleet_core::AgentRef;
use clawfleet_core::acl::{self, BusIdentity};

use crate::broker::Authenticator;
use crate::credentials::{BusSecret, constant_time_eq};

/// The control plane's own bus username.
pub const CONTROL_USER: &str = "clawfleet-control";
/// The read-only observer's bus username (any client id).
pub const OBSERVER_USER: &str = "clawfleet-observer";

/// The [`Authenticator`] of a control plane: its own login, plus agent logins for the fleets it
/// has allowed (by name and incarnation uid).
#[derive(Debug)]
pub struct FleetAuth {
    secret: BusSecret,
    /// fleet name -> fleet uid, for every fleet that exists.
    fleets: RwLock<HashMap<String, String>>,
}

impl FleetAuth {
    pub fn new(secret: BusSecret) -> FleetAuth {
        FleetAuth { secret, fleets: RwLock::new(HashMap::new()) }
    }

    pub fn allow_fleet(&self, name: &str, uid: &str) {
        self.fleets.write().expect("not poisoned").insert(name.to_owned(), uid.to_owned());
    }

    pub fn knows(&self, name: &str) -> bool {
        self.fleets.read().expect("not poisoned").contains_key(name)
    }

    pub fn forget_fleet(&self, name: &str) {
        self.fleets.write().expect("not poisoned").remove(name);
    }

    /// The read-only observer's bus password.
    pub fn observer_password(&self) -> String {
        self.secret.observer_password()
    }

    /// The API token of an agent of an existing fleet.
    pub fn agent_token(&self, agent: &AgentRef) -> Option<String> {
        let fleets = self.fleets.read().expect("not poisoned");
        Some(self.secret.agent_token(agent, fleets.get(agent.fleet.as_str())?))
    }

    /// The agent whose API token this is, if it is one of an existing fleet's current agents'.
    pub fn check_agent_token(&self, token: &str) -> Option<AgentRef> {
        let rest = token.strip_prefix(crate::credentials::AGENT_TOKEN_PREFIX)?;
        let mut parts = rest.splitn(4, '.');
        let (fleet, slot, uid) = (parts.next()?, parts.next()?, parts.next()?);
        let agent: AgentRef = format!("{fleet}/{slot}").parse().ok()?;
        let fleets = self.fleets.read().expect("not poisoned");
        let ok = fleets.get(fleet).is_some_and(|known| known == uid)
            && constant_time_eq(token.as_bytes(), self.secret.agent_token(&agent, uid).as_bytes());
        ok.then_some(agent)
    }
}

impl Authenticator for FleetAuth {
    fn authenticate(&self, client_id: &str, username: &str, password: &[u8]) -> Option<BusIdentity> {
        if username == CONTROL_USER {
            return constant_time_eq(password, self.secret.control_password().as_bytes()).then_some(BusIdentity::Control);
        }
        if username == OBSERVER_USER {
            return constant_time_eq(password, self.secret.observer_password().as_bytes()).then_some(BusIdentity::Observer);
        }
        let agent = acl::parse_agent_username(username)?;
        let fleets = self.fleets.read().expect("not poisoned");
        let uid = fleets.get(agent.fleet.as_str())?;
        let ok = constant_time_eq(password, self.secret.agent_password(&agent, uid).as_bytes())
            && client_id == acl::agent_client_id(&agent, uid);
        ok.then_some(BusIdentity::Agent(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_of_existing_fleets_only() {
        let secret = BusSecret::from_bytes([1; 32]);
        let auth = FleetAuth::new(secret.clone());
        let a: clawfleet_core::AgentRef = "squad/2".parse().unwrap();
        let pw = secret.agent_password(&a, "u1");
        let cid = acl::agent_client_id(&a, "u1");
        assert_eq!(auth.authenticate(&cid, "agent/squad/2", pw.as_bytes()), None, "no such fleet yet");
        auth.allow_fleet("squad", "u1");
        assert_eq!(auth.authenticate(&cid, "agent/squad/2", pw.as_bytes()), Some(BusIdentity::Agent(a.clone())));
        assert_eq!(auth.authenticate("other-id", "agent/squad/2", pw.as_bytes()), None, "wrong client id");
        assert_eq!(auth.authenticate(&cid, "agent/squad/2", b"nope"), None);
        auth.forget_fleet("squad");
        assert_eq!(auth.authenticate(&cid, "agent/squad/2", pw.as_bytes()), None);
        assert_eq!(auth.authenticate("x", CONTROL_USER, secret.control_password().as_bytes()), Some(BusIdentity::Control));
        assert_eq!(auth.authenticate("any", OBSERVER_USER, secret.observer_password().as_bytes()), Some(BusIdentity::Observer));
        assert_eq!(auth.authenticate("any", OBSERVER_USER, secret.control_password().as_bytes()), None);
    }

    #[test]
    fn agent_tokens_name_their_agent_and_die_with_its_fleet() {
        let secret = BusSecret::from_bytes([1; 32]);
        let auth = FleetAuth::new(secret.clone());
        let a: AgentRef = "squad/2".parse().unwrap();
        assert_eq!(auth.agent_token(&a), None);
        auth.allow_fleet("squad", "u1");
        let token = auth.agent_token(&a).unwrap();
        assert!(token.starts_with("cfa.squad.2.u1."), "{token}");
        assert_eq!(auth.check_agent_token(&token), Some(a.clone()));
        // Another slot, a forged MAC, an old incarnation: none is anyone's.
        let forged = [
            token.replace("cfa.squad.2.", "cfa.squad.3."),
            format!("{}{}", &token[..token.len() - 1], if token.ends_with('0') { '1' } else { '0' }),
            secret.agent_token(&a, "u0"),
        ];
        for f in &forged {
            assert_eq!(auth.check_agent_token(f), None, "{f}");
        }
        for junk in ["", "cfa.", "cfa.squad", "cfa.squad.x.u1.ab", "operator"] {
            assert_eq!(auth.check_agent_token(junk), None, "{junk}");
        }
        auth.forget_fleet("squad");
        assert_eq!(auth.check_agent_token(&token), None);
    }
}
