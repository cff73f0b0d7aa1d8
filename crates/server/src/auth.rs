//! Who may talk to the control plane: the operator token for the HTTP API, and the bus
//! authenticator that checks each agent's derived credentials against the fleets that exist.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::RwLock;

use clawfleet_bus::credentials::constant_time_eq;
use clawfleet_bus::{Authenticator, BusSecret};
use clawfleet_core::acl::{self, BusIdentity};
use rand::RngCore;

/// The control plane's own bus username.
pub(crate) const CONTROL_USER: &str = "clawfleet-control";

/// Reads the operator token from `<data>/token`, creating it (mode 0600) on first start.
pub(crate) fn load_or_create_token(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "The token file is readable by others; setting it to 0600");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(t.trim().to_owned())
        }
        _ => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
            Ok(token)
        }
    }
}

/// Checks a presented API token.
pub(crate) fn token_ok(expected: &str, presented: &str) -> bool {
    constant_time_eq(expected.as_bytes(), presented.as_bytes())
}

/// The embedded broker's view of who may connect.
#[derive(Debug)]
pub(crate) struct BusAuth {
    secret: BusSecret,
    /// fleet name -> fleet uid, for every fleet that exists.
    fleets: RwLock<HashMap<String, String>>,
}

impl BusAuth {
    pub(crate) fn new(secret: BusSecret) -> BusAuth {
        BusAuth { secret, fleets: RwLock::new(HashMap::new()) }
    }

    pub(crate) fn allow_fleet(&self, name: &str, uid: &str) {
        self.fleets.write().expect("not poisoned").insert(name.to_owned(), uid.to_owned());
    }

    pub(crate) fn knows(&self, name: &str) -> bool {
        self.fleets.read().expect("not poisoned").contains_key(name)
    }

    pub(crate) fn forget_fleet(&self, name: &str) {
        self.fleets.write().expect("not poisoned").remove(name);
    }
}

impl Authenticator for BusAuth {
    fn authenticate(&self, client_id: &str, username: &str, password: &[u8]) -> Option<BusIdentity> {
        if username == CONTROL_USER {
            return constant_time_eq(password, self.secret.control_password().as_bytes()).then_some(BusIdentity::Control);
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
        let auth = BusAuth::new(secret.clone());
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
    }

    #[test]
    fn token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create_token(dir.path()).unwrap();
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t1);
        assert!(token_ok(&t1, &t1) && !token_ok(&t1, "x"));
    }
}
