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
        self.mac(&format!("clawfleet-agent-v1\0{}\0{}\0{fleet_uid}", agent.fleet, agent.slot))
    }

    /// The control plane's own bus password.
    pub fn control_password(&self) -> String {
        self.mac("clawfleet-control-v1")
    }
}

impl fmt::Debug for BusSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BusSecret(…)")
    }
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
}
