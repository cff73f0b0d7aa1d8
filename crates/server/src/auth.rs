//! API tokens: the operator's token file, the tokens made with `clawfleet token create`
//! (stored as hashes, held in memory for the check), and agents' own derived tokens.
//! (Bus logins are `clawfleet_bus::FleetAuth`'s.)

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::RwLock;

use clawfleet_bus::FleetAuth;
use clawfleet_bus::credentials::token_hash;
use clawfleet_core::FleetName;
use clawfleet_core::authz::{Principal, Role};
use clawfleet_store::TokenRow;
use rand::RngCore;

/// The name of the operator's first token, the one in `DATA/token`.
pub(crate) const FILE_TOKEN_NAME: &str = "operator";

/// Every stored token, by hash: the check on each request is one hash and one lookup.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    by_hash: RwLock<HashMap<String, TokenRow>>,
}

/// Why a presented token is refused (401).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    Invalid,
    Expired {
        name: String,
        at: i64,
    },
    /// Stored with a role or fleet this build cannot read.
    Corrupt(String),
}

impl Tokens {
    pub(crate) fn new(rows: Vec<TokenRow>) -> Tokens {
        Tokens { by_hash: RwLock::new(rows.into_iter().map(|r| (r.hash.clone(), r)).collect()) }
    }

    pub(crate) fn insert(&self, row: TokenRow) {
        let mut map = self.by_hash.write().expect("not poisoned");
        map.retain(|_, r| r.name != row.name);
        map.insert(row.hash.clone(), row);
    }

    pub(crate) fn remove(&self, name: &str) {
        self.by_hash.write().expect("not poisoned").retain(|_, r| r.name != name);
    }

    /// Who presented `token` at `now` (Unix seconds): a stored token, or an agent's own.
    pub(crate) fn resolve(&self, token: &str, agents: &FleetAuth, now: i64) -> Result<Principal, Unknown> {
        if let Some(agent) = agents.check_agent_token(token) {
            return Ok(Principal::agent(&agent));
        }
        let map = self.by_hash.read().expect("not poisoned");
        let row = map.get(&token_hash(token)).ok_or(Unknown::Invalid)?;
        if let Some(at) = row.expires_at.filter(|&at| at <= now) {
            return Err(Unknown::Expired { name: row.name.clone(), at });
        }
        let role: Role = row.role.parse().map_err(Unknown::Corrupt)?;
        let fleet = row.fleet.as_deref().map(str::parse::<FleetName>).transpose().map_err(|e| Unknown::Corrupt(e.to_string()))?;
        Ok(Principal { name: row.name.clone(), role, fleet, slot: None })
    }
}

/// A new random token: `cft_` and 64 hex digits.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("cft_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create_token(dir.path()).unwrap();
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t1);
    }

    #[test]
    fn stored_tokens_resolve_to_their_principal_until_they_expire() {
        let agents = FleetAuth::new(clawfleet_bus::BusSecret::from_bytes([3; 32]));
        let row = |name: &str, role: &str, fleet: Option<&str>, expires_at: Option<i64>, token: &str| TokenRow {
            name: name.into(),
            role: role.into(),
            fleet: fleet.map(str::to_owned),
            hash: token_hash(token),
            created_at: "t".into(),
            expires_at,
            created_by: "test".into(),
        };
        let tokens =
            Tokens::new(vec![row("root", "operator", None, None, "t-root"), row("ci", "observer", Some("web"), Some(100), "t-ci")]);
        assert_eq!(tokens.resolve("t-root", &agents, 50), Ok(Principal::operator("root")));
        let ci = tokens.resolve("t-ci", &agents, 99).unwrap();
        assert_eq!((ci.role, ci.fleet.as_ref().map(|f| f.as_str())), (Role::Observer, Some("web")));
        assert_eq!(tokens.resolve("t-ci", &agents, 100), Err(Unknown::Expired { name: "ci".into(), at: 100 }));
        assert_eq!(tokens.resolve("nope", &agents, 0), Err(Unknown::Invalid));
        tokens.remove("root");
        assert_eq!(tokens.resolve("t-root", &agents, 50), Err(Unknown::Invalid));
        // A token replaced under its name: the old one no longer works.
        tokens.insert(row("ci", "observer", None, None, "t-ci2"));
        assert_eq!(tokens.resolve("t-ci", &agents, 0), Err(Unknown::Invalid));
        assert!(tokens.resolve("t-ci2", &agents, 0).is_ok());
        agents.allow_fleet("squad", "u1");
        let agent: clawfleet_core::AgentRef = "squad/1".parse().unwrap();
        let own = agents.agent_token(&agent).unwrap();
        assert_eq!(tokens.resolve(&own, &agents, 0), Ok(Principal::agent(&agent)));
        assert!(new_token().starts_with("cft_") && new_token().len() == 68 && new_token() != new_token());
    }
}
