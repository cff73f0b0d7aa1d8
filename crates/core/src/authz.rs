//! Who may do what on the API: roles bound to tokens, in the manner of Kubernetes RBAC (a
//! missing or unknown token is 401, a forbidden action 403) with clawdinators' rule that an
//! agent never deploys itself.
//!
//! Four roles:
//! - **operator**: everything (with a fleet scope, everything on that fleet only);
//! - **observer**: reading (status, events, injections, audit), never changing anything;
//! - **agent** (one agent's own token): reading its own fleet and its own events, and asking
//!   for changes to *other* fleets where the control plane's [`Policy`] allows; never
//!   deploying, updating, scaling or terminating its own fleet ("refusing self-deploy");
//! - **peer** (another rack's control plane): what racks ask of each other ([`Action::Peer`]:
//!   rack information, migrations into this rack), nothing of any fleet.

use std::collections::BTreeSet;

use crate::names::{AgentRef, FleetName};

pub use clawfleet_proto::api::Role;

/// Who presented a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, for the audit log.
    pub name: String,
    pub role: Role,
    /// The only fleet an operator or observer token may touch; for an agent token, its fleet.
    pub fleet: Option<FleetName>,
    /// The agent an agent token belongs to (`None`: any agent of `fleet`).
    pub slot: Option<u32>,
}

impl Principal {
    /// The unscoped operator.
    pub fn operator(name: impl Into<String>) -> Principal {
        Principal { name: name.into(), role: Role::Operator, fleet: None, slot: None }
    }

    /// The token of one agent.
    pub fn agent(agent: &AgentRef) -> Principal {
        Principal { name: format!("agent {agent}"), role: Role::Agent, fleet: Some(agent.fleet.clone()), slot: Some(agent.slot) }
    }

    /// How the audit log names it: `name (role)`.
    pub fn audit_name(&self) -> String {
        format!("{} ({})", self.name, self.role)
    }
}

/// What a request does. Reads are split by what they reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Fleets, their status, injections, events.
    Read,
    /// The audit log (every actor's actions).
    ReadAudit,
    /// Agents' bus logins and tokens (`join`).
    Join,
    Launch,
    Scale,
    /// A new version or image (a deploy), or a rollback.
    Update,
    Terminate,
    Inject,
    /// Answering an agent's execution approval (never its own fleet's, for an agent token).
    Approve,
    /// A command of the vocabulary (restart, health-check, ...).
    Command,
    /// Creating, listing and revoking tokens.
    ManageTokens,
    /// Setting, listing (names only) and removing the secrets brains get.
    ManageSecrets,
    /// What one rack asks of another: its rack information, and offering, completing and
    /// aborting migrations into it.
    Peer,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::ReadAudit => "read-audit",
            Action::Join => "join",
            Action::Launch => "launch",
            Action::Scale => "scale",
            Action::Update => "update",
            Action::Terminate => "terminate",
            Action::Inject => "inject",
            Action::Approve => "approve",
            Action::Command => "command",
            Action::ManageTokens => "manage-tokens",
            Action::ManageSecrets => "manage-secrets",
            Action::Peer => "peer",
        }
    }

    /// Whether it changes a fleet's desired state: what an agent may never do to its own fleet.
    pub fn deploys(self) -> bool {
        matches!(self, Action::Launch | Action::Scale | Action::Update | Action::Terminate)
    }

    fn is_read(self) -> bool {
        matches!(self, Action::Read | Action::ReadAudit)
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Action, String> {
        const ALL: [Action; 13] = [
            Action::Read,
            Action::ReadAudit,
            Action::Join,
            Action::Launch,
            Action::Scale,
            Action::Update,
            Action::Terminate,
            Action::Inject,
            Action::Approve,
            Action::Command,
            Action::ManageTokens,
            Action::ManageSecrets,
            Action::Peer,
        ];
        ALL.into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action '{s}': the actions are {}", ALL.map(Action::as_str).join(", ")))
    }
}

/// What a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Everything (the fleet list, the whole event stream, the audit log, tokens).
    All,
    Fleet(&'a str),
    Agent(&'a str, u32),
}

impl Target<'_> {
    fn fleet(&self) -> Option<&str> {
        match self {
            Target::All => None,
            Target::Fleet(f) | Target::Agent(f, _) => Some(f),
        }
    }
}

/// Which other fleets the agents of a fleet may act on, and how: the control plane's policy
/// (default: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<PolicyRule>,
}

/// The agents of `from` may do `actions` to the fleets in `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub from: FleetName,
    pub to: Vec<FleetName>,
    pub actions: BTreeSet<Action>,
}

/// The most rules a policy file may hold (it is read on every agent request).
pub const MAX_POLICY_RULES: usize = 1000;

impl Policy {
    /// Validates a policy file: every fleet a fleet name, every action one agents may be
    /// granted (never reading others' audit, joining, or managing tokens).
    pub fn from_file(file: &clawfleet_proto::policy::PolicyFile) -> Result<Policy, String> {
        if file.rules.len() > MAX_POLICY_RULES {
            return Err(format!("{} rules, over the limit of {MAX_POLICY_RULES}", file.rules.len()));
        }
        let fleet = |i: usize, s: &str| s.parse::<FleetName>().map_err(|e| format!("rule {}: {e}", i + 1));
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.iter().enumerate() {
            let to = r.to.iter().map(|t| fleet(i, t)).collect::<Result<Vec<_>, _>>()?;
            let mut actions = BTreeSet::new();
            for a in &r.actions {
                let action: Action = a.parse().map_err(|e| format!("rule {}: {e}", i + 1))?;
                if matches!(
                    action,
                    Action::Read | Action::ReadAudit | Action::Join | Action::ManageTokens | Action::ManageSecrets | Action::Peer
                ) {
                    return Err(format!(
                        "rule {}: '{a}' cannot be granted to agents (only launch, scale, update, terminate, inject, approve, command)",
                        i + 1
                    ));
                }
                actions.insert(action);
            }
            if to.is_empty() || actions.is_empty() {
                return Err(format!("rule {}: needs at least one fleet in 'to' and one action", i + 1));
            }
            rules.push(PolicyRule { from: fleet(i, &r.from)?, to, actions });
        }
        Ok(Policy { rules })
    }

    fn allows(&self, from: &str, action: Action, to: &str) -> bool {
        self.rules.iter().any(|r| r.from.as_str() == from && r.actions.contains(&action) && r.to.iter().any(|t| t.as_str() == to))
    }
}

/// The longest token name.
pub const MAX_TOKEN_NAME: usize = 64;
/// The longest a token may be valid.
pub const MAX_TOKEN_LIFE: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// A token's name (`token create --name`): 1-64 of a-z, 0-9, `-`, `_`, `.`, starting with a
/// letter or digit. The error shows 80 characters of it at most.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(format!(
        "token name '{}' must be 1-{MAX_TOKEN_NAME} of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
        name.chars().take(80).collect::<String>()
    ))
}

/// How long a token lives (`--expires 30d`): between a second and ten years. The error shows
/// 40 characters of it at most.
pub fn token_lifetime(expires: &str) -> Result<std::time::Duration, String> {
    let shown: String = expires.chars().take(40).collect();
    // humantime's errors quote what they could not read, however long: a line of it at most.
    let life = humantime::parse_duration(expires)
        .map_err(|e| format!("expires '{shown}': {} (e.g. 30d, 12h)", e.to_string().chars().take(80).collect::<String>()))?;
    if life.is_zero() || life > MAX_TOKEN_LIFE {
        return Err(format!("expires '{shown}' must be between 1s and 10 years"));
    }
    Ok(life)
}

/// Why a request is forbidden (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("refusing self-deploy: an agent token may not {action} its own fleet '{fleet}'")]
    SelfDeploy { action: &'static str, fleet: String },
    #[error("refusing self-approval: an agent token may not approve what its own fleet '{fleet}' runs")]
    SelfApprove { fleet: String },
    #[error("the {role} token '{name}' may not {action} {target}")]
    Role { role: Role, name: String, action: &'static str, target: String },
    #[error("no policy lets the agents of '{from}' {action} '{to}' (the control plane's --agent-policy)")]
    Policy { from: String, action: &'static str, to: String },
}

/// Decides one request.
pub fn authorize(who: &Principal, action: Action, target: Target<'_>, policy: &Policy) -> Result<(), Denied> {
    let role_denies = || Denied::Role {
        role: who.role,
        name: who.name.clone(),
        action: action.as_str(),
        target: match target {
            Target::All => "everything".into(),
            Target::Fleet(f) => format!("fleet '{f}'"),
            Target::Agent(f, s) => format!("agent {f}/{s}"),
        },
    };
    let in_scope = |scope: &Option<FleetName>| match (scope, target.fleet()) {
        (None, _) => true,
        (Some(s), Some(f)) => s.as_str() == f,
        (Some(_), None) => false,
    };
    match who.role {
        Role::Operator if matches!(action, Action::ManageTokens | Action::ManageSecrets) && who.fleet.is_some() => Err(role_denies()),
        Role::Operator if in_scope(&who.fleet) => Ok(()),
        Role::Operator => Err(role_denies()),
        Role::Observer if action.is_read() && in_scope(&who.fleet) => Ok(()),
        Role::Observer => Err(role_denies()),
        // Another control plane: rack to rack, nothing of any fleet.
        Role::Peer if action == Action::Peer && target == Target::All => Ok(()),
        Role::Peer => Err(role_denies()),
        Role::Agent => {
            let Some(own) = &who.fleet else { return Err(role_denies()) };
            let own = own.as_str();
            match (action, target) {
                // An agent's own token reads its own agent; a token made for a fleet, all of it.
                (Action::Read, Target::Fleet(f)) if f == own && who.slot.is_none() => Ok(()),
                (Action::Read, Target::Agent(f, s)) if f == own && who.slot.is_none_or(|mine| mine == s) => Ok(()),
                (a, Target::Fleet(f) | Target::Agent(f, _)) if f == own && a.deploys() => {
                    Err(Denied::SelfDeploy { action: a.as_str(), fleet: own.to_owned() })
                }
                (Action::Approve, Target::Fleet(f) | Target::Agent(f, _)) if f == own => Err(Denied::SelfApprove { fleet: own.to_owned() }),
                (Action::Read | Action::ReadAudit | Action::Join | Action::ManageTokens | Action::ManageSecrets | Action::Peer, _) => {
                    Err(role_denies())
                }
                // Another fleet, or its own for what does not deploy it (a command to its
                // siblings, say): as the policy says (a rule may name the agents' own fleet).
                (a, Target::Fleet(f) | Target::Agent(f, _)) => {
                    if policy.allows(own, a, f) {
                        Ok(())
                    } else {
                        Err(Denied::Policy { from: own.to_owned(), action: a.as_str(), to: f.to_owned() })
                    }
                }
                (_, Target::All) => Err(role_denies()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(s: &str) -> FleetName {
        s.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy {
            rules: vec![
                PolicyRule {
                    from: fleet("ops"),
                    to: vec![fleet("web")],
                    actions: [Action::Scale, Action::Update, Action::Command, Action::Approve].into_iter().collect(),
                },
                // Its own fleet: it may restart (command) its siblings, and still never deploy
                // it or approve what it runs.
                PolicyRule {
                    from: fleet("ops"),
                    to: vec![fleet("ops")],
                    actions: [Action::Command, Action::Scale, Action::Approve].into_iter().collect(),
                },
            ],
        }
    }

    /// The role matrix: role × action × own/other target.
    #[test]
    fn the_role_matrix() {
        let operator = Principal::operator("root");
        let scoped = Principal { name: "web-admin".into(), role: Role::Operator, fleet: Some(fleet("web")), slot: None };
        let observer = Principal { name: "grafana".into(), role: Role::Observer, fleet: None, slot: None };
        let ops3 = Principal::agent(&"ops/3".parse().unwrap());
        // A token made for the agents of a fleet (`token create --role agent --fleet ops`).
        let ops_any = Principal { name: "ops-bot".into(), slot: None, ..ops3.clone() };
        // Another rack's token (`token create --role peer`).
        let rack = Principal { name: "rack-b".into(), role: Role::Peer, fleet: None, slot: None };
        let p = policy();
        use Action::*;
        let cases: &[(&Principal, Action, Target<'_>, Result<(), &str>)] = &[
            (&operator, Launch, Target::Fleet("any"), Ok(())),
            (&operator, ManageTokens, Target::All, Ok(())),
            (&operator, Join, Target::Fleet("web"), Ok(())),
            (&scoped, Terminate, Target::Fleet("web"), Ok(())),
            (&scoped, Terminate, Target::Fleet("ops"), Err("the operator token 'web-admin' may not terminate fleet 'ops'")),
            (&scoped, Read, Target::All, Err("the operator token 'web-admin' may not read everything")),
            (&scoped, ManageTokens, Target::All, Err("the operator token 'web-admin' may not manage-tokens everything")),
            (&observer, Read, Target::All, Ok(())),
            (&observer, ReadAudit, Target::All, Ok(())),
            (&observer, Read, Target::Agent("web", 1), Ok(())),
            (&observer, Join, Target::Fleet("web"), Err("the observer token 'grafana' may not join fleet 'web'")),
            (&observer, Inject, Target::Fleet("web"), Err("the observer token 'grafana' may not inject fleet 'web'")),
            (&observer, ManageTokens, Target::All, Err("the observer token 'grafana' may not manage-tokens everything")),
            (&observer, ManageSecrets, Target::All, Err("the observer token 'grafana' may not manage-secrets everything")),
            (&scoped, ManageSecrets, Target::All, Err("the operator token 'web-admin' may not manage-secrets everything")),
            (&operator, ManageSecrets, Target::All, Ok(())),
            (&ops3, ManageSecrets, Target::All, Err("the agent token 'agent ops/3' may not manage-secrets everything")),
            (&ops3, Read, Target::Fleet("ops"), Err("the agent token 'agent ops/3' may not read fleet 'ops'")),
            (&ops_any, Read, Target::Fleet("ops"), Ok(())),
            (&ops_any, Read, Target::Agent("ops", 2), Ok(())),
            (&ops_any, Scale, Target::Fleet("ops"), Err("refusing self-deploy: an agent token may not scale its own fleet 'ops'")),
            (&ops3, Read, Target::Agent("ops", 3), Ok(())),
            (&ops3, Read, Target::Agent("ops", 2), Err("the agent token 'agent ops/3' may not read agent ops/2")),
            (&ops3, Read, Target::Fleet("web"), Err("the agent token 'agent ops/3' may not read fleet 'web'")),
            (&ops3, Read, Target::All, Err("the agent token 'agent ops/3' may not read everything")),
            (&ops3, ReadAudit, Target::All, Err("the agent token 'agent ops/3' may not read-audit everything")),
            (&ops3, Scale, Target::Fleet("ops"), Err("refusing self-deploy: an agent token may not scale its own fleet 'ops'")),
            (&ops3, Update, Target::Fleet("ops"), Err("refusing self-deploy: an agent token may not update its own fleet 'ops'")),
            (&ops3, Terminate, Target::Fleet("ops"), Err("refusing self-deploy: an agent token may not terminate its own fleet 'ops'")),
            (&ops3, Scale, Target::Fleet("web"), Ok(())),
            (&ops3, Command, Target::Agent("ops", 1), Ok(())),
            (&ops3, Scale, Target::Agent("ops", 1), Err("refusing self-deploy: an agent token may not scale its own fleet 'ops'")),
            (
                &ops3,
                Inject,
                Target::Fleet("ops"),
                Err("no policy lets the agents of 'ops' inject 'ops' (the control plane's --agent-policy)"),
            ),
            (&ops3, Update, Target::Fleet("web"), Ok(())),
            (&ops3, Command, Target::Agent("web", 0), Ok(())),
            (
                &ops3,
                Terminate,
                Target::Fleet("web"),
                Err("no policy lets the agents of 'ops' terminate 'web' (the control plane's --agent-policy)"),
            ),
            (&ops3, Scale, Target::Fleet("db"), Err("no policy lets the agents of 'ops' scale 'db' (the control plane's --agent-policy)")),
            (&ops3, Join, Target::Fleet("web"), Err("the agent token 'agent ops/3' may not join fleet 'web'")),
            (&operator, Approve, Target::Agent("web", 0), Ok(())),
            (&scoped, Approve, Target::Agent("ops", 0), Err("the operator token 'web-admin' may not approve agent ops/0")),
            (&observer, Approve, Target::Agent("web", 0), Err("the observer token 'grafana' may not approve agent web/0")),
            (&ops3, Approve, Target::Agent("web", 1), Ok(())),
            (
                &ops3,
                Approve,
                Target::Agent("db", 1),
                Err("no policy lets the agents of 'ops' approve 'db' (the control plane's --agent-policy)"),
            ),
            // Not even when a rule names its own fleet: an agent does not approve its siblings.
            (
                &ops_any,
                Approve,
                Target::Agent("ops", 1),
                Err("refusing self-approval: an agent token may not approve what its own fleet 'ops' runs"),
            ),
            (&rack, Peer, Target::All, Ok(())),
            (&rack, Read, Target::All, Err("the peer token 'rack-b' may not read everything")),
            (&rack, Inject, Target::Fleet("web"), Err("the peer token 'rack-b' may not inject fleet 'web'")),
            (&rack, Update, Target::Agent("web", 0), Err("the peer token 'rack-b' may not update agent web/0")),
            (&rack, ManageTokens, Target::All, Err("the peer token 'rack-b' may not manage-tokens everything")),
            (&operator, Peer, Target::All, Ok(())),
            (&scoped, Peer, Target::All, Err("the operator token 'web-admin' may not peer everything")),
            (&observer, Peer, Target::All, Err("the observer token 'grafana' may not peer everything")),
            (&ops_any, Peer, Target::All, Err("the agent token 'ops-bot' may not peer everything")),
        ];
        for (who, action, target, expected) in cases {
            let got = authorize(who, *action, *target, &p).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{} {action:?} {target:?}", who.name);
        }
        // Without a policy, agents touch nothing but their own reads.
        assert!(authorize(&ops3, Scale, Target::Fleet("web"), &Policy::default()).is_err());
    }

    #[test]
    fn token_names_and_lifetimes_are_checked() {
        assert!(check_token_name("ci-bot.1").is_ok());
        for bad in ["", "Bad", "-x", &"a".repeat(MAX_TOKEN_NAME + 1)] {
            assert!(check_token_name(bad).unwrap_err().starts_with("token name '"), "{bad}");
        }
        assert_eq!(token_lifetime("30d").unwrap().as_secs(), 30 * 86400);
        assert_eq!(token_lifetime("0s").unwrap_err(), "expires '0s' must be between 1s and 10 years");
        // An error quotes a line of what it could not read, however long that is.
        let long = format!("1{}", "z".repeat(10_000));
        assert!(token_lifetime(&long).unwrap_err().len() < 200, "{}", token_lifetime(&long).unwrap_err());
    }

    #[test]
    fn policy_files_are_checked() {
        use clawfleet_proto::policy::{PolicyFile, PolicyRuleFile};
        let rule = |from: &str, to: &[&str], actions: &[&str]| PolicyRuleFile {
            from: from.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
        };
        let ok = PolicyFile {
            rules: vec![
                rule("ops", &["web"], &["scale", "update", "command", "approve"]),
                rule("ops", &["ops"], &["command", "scale", "approve"]),
            ],
        };
        assert_eq!(Policy::from_file(&ok).unwrap(), policy());
        let cases = [
            (rule("Ops", &["web"], &["scale"]), "rule 1: fleet name"),
            (rule("ops", &["web"], &["deploy"]), "rule 1: unknown action 'deploy'"),
            (rule("ops", &["web"], &["join"]), "rule 1: 'join' cannot be granted to agents"),
            (rule("ops", &[], &["scale"]), "rule 1: needs at least one fleet"),
            (rule("ops", &["web"], &[]), "rule 1: needs at least one fleet"),
        ];
        for (r, expected) in cases {
            let err = Policy::from_file(&PolicyFile { rules: vec![r] }).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!("observer".parse::<Role>(), Ok(Role::Observer));
        assert_eq!("root".parse::<Role>().unwrap_err(), "unknown role 'root': the roles are operator, observer, agent and peer");
        assert_eq!("scale".parse::<Action>(), Ok(Action::Scale));
        assert!("deploy".parse::<Action>().unwrap_err().starts_with("unknown action 'deploy': the actions are read, read-audit"));
        let p = Principal::agent(&"ops/3".parse().unwrap());
        assert_eq!(p.audit_name(), "agent ops/3 (agent)");
    }
}
