//! Bus credentials. Each agent's password is an HMAC of its identity under one secret held
//! by the control plane: the broker recomputes it to check a login, so no password table
//! exists, and one agent's password says nothing about another's.

use std::fmt;

use clawfleet_core::AgentRef;
use rand::RngCore;
use ring::hmac;

/// The control plane's bus secret (32 random bytes).
#[derive(Clone)]
pub struct BusSecret([u8; 32]);

impl BusSecret {
    pub fn generate() -> BusSecret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        BusSecret(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> BusSecret {
        BusSecret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, message: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hex(hmac::sign(&key, message.as_bytes()).as_ref())
    }

    /// The password of one agent of one fleet incarnation (`fleet_uid` changes when a fleet
    /// of the same name is launched again, so old agents cannot log in to the new one).
    pub fn agent_password(&self, agent: &AgentRef, fleet_uid: &str) -> String {
        self.fleet_key(agent.fleet.as_str(), fleet_uid).agent_password(agent.slot)
    }

    /// The key every password of one fleet incarnation derives from. Backends that cannot give
    /// each agent its own environment (a Swarm service gives every task the same one) hand
    /// agents this key, and each derives its own password from its slot.
    pub fn fleet_key(&self, fleet: &str, fleet_uid: &str) -> FleetKey {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, format!("clawfleet-fleet-v1\0{fleet}\0{fleet_uid}").as_bytes());
        FleetKey(tag.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// The API token of one agent of one fleet incarnation: `cfa.FLEET.SLOT.UID.MAC`. Like bus
    /// passwords it is derived, not stored, and dies with the fleet's incarnation.
    pub fn agent_token(&self, agent: &AgentRef, fleet_uid: &str) -> String {
        self.fleet_key(agent.fleet.as_str(), fleet_uid).agent_token(agent, fleet_uid)
    }

    /// The read-only observer's bus password.
    pub fn observer_password(&self) -> String {
        self.mac("clawfleet-observer-v1")
    }

    /// The control plane's own bus password.
    pub fn control_password(&self) -> String {
        self.mac("clawfleet-control-v1")
    }
}

/// The password key of one fleet incarnation (see [`BusSecret::fleet_key`]).
#[derive(Clone, PartialEq, Eq)]
pub struct FleetKey([u8; 32]);

impl FleetKey {
    /// The bus password of the agent in `slot`.
    pub fn agent_password(&self, slot: u32) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hex(hmac::sign(&key, format!("clawfleet-agent-v2\0{slot}").as_bytes()).as_ref())
    }

    /// The API token of the agent `agent` of this fleet incarnation `fleet_uid` (see
    /// [`BusSecret::agent_token`]): agents given only the key derive theirs.
    pub fn agent_token(&self, agent: &AgentRef, fleet_uid: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mac = hex(hmac::sign(&key, format!("clawfleet-agent-token-v1\0{}", agent.slot).as_bytes()).as_ref());
        format!("{AGENT_TOKEN_PREFIX}{}.{}.{fleet_uid}.{mac}", agent.fleet, agent.slot)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<FleetKey> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(FleetKey(out))
    }
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetKey(…)")
    }
}

impl fmt::Debug for BusSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BusSecret(…)")
    }
}

/// How an agent's API token starts.
pub const AGENT_TOKEN_PREFIX: &str = "cfa.";

/// SHA-256 of an API token, hex: what the control plane stores instead of the token.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_differ_per_agent_and_incarnation() {
        let s = BusSecret::from_bytes([7; 32]);
        let a: AgentRef = "squad/1".parse().unwrap();
        let b: AgentRef = "squad/2".parse().unwrap();
        assert_eq!(s.agent_password(&a, "u1"), s.agent_password(&a, "u1"));
        assert_ne!(s.agent_password(&a, "u1"), s.agent_password(&b, "u1"));
        assert_ne!(s.agent_password(&a, "u1"), s.agent_password(&a, "u2"));
        assert_ne!(s.agent_password(&a, "u1"), BusSecret::from_bytes([8; 32]).agent_password(&a, "u1"));
        assert_eq!(s.agent_password(&a, "u1").len(), 64);
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"ab", b"abc"));
    }

    #[test]
    fn a_fleet_key_derives_the_same_passwords_and_round_trips_as_hex() {
        let s = BusSecret::from_bytes([7; 32]);
        let a: AgentRef = "squad/3".parse().unwrap();
        let key = s.fleet_key("squad", "u1");
        assert_eq!(key.agent_password(3), s.agent_password(&a, "u1"));
        assert_eq!(FleetKey::from_hex(&key.to_hex()), Some(key.clone()));
        assert_ne!(s.fleet_key("squad", "u2"), key);
        assert_ne!(s.fleet_key("other", "u1"), key);
        assert_eq!(FleetKey::from_hex("zz"), None);
        assert_eq!(FleetKey::from_hex(&"g".repeat(64)), None);
    }
}
