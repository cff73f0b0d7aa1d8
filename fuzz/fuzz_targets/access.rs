//! The parsers of who may do what, on arbitrary input: agent policy files (`--agent-policy`),
//! token requests (`POST /api/v1/tokens`), presented API tokens, router first lines (auth or
//! HTTP), and the last will of a bus CONNECT.
//!
//! Nothing panics; an accepted policy is within its limits and grants agents no read, join or
//! token rights; a presented token that resolves to an agent is exactly that agent's token; an
//! auth line's token survives being written again; a will the broker accepts is one its client
//! could publish, and a retained one is an agent's own heartbeat.
#![no_main]

use clawfleet_bus::{BusSecret, FleetAuth};
use clawfleet_core::acl::{self, BusIdentity};
use clawfleet_core::authz::{Action, Policy};
use clawfleet_proto::topic::{self, Channel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    if let Ok(file) = serde_json::from_str::<clawfleet_proto::policy::PolicyFile>(text)
        && let Ok(policy) = Policy::from_file(&file)
    {
        assert!(policy.rules.len() <= clawfleet_core::authz::MAX_POLICY_RULES);
        for rule in &policy.rules {
            assert!(!rule.to.is_empty() && !rule.actions.is_empty());
            for a in &rule.actions {
                assert!(!matches!(a, Action::Read | Action::ReadAudit | Action::Join | Action::ManageTokens), "granted {a:?}");
            }
        }
    }
    let _ = serde_json::from_str::<clawfleet_proto::api::TokenRequest>(text);

    let auth = FleetAuth::new(BusSecret::from_bytes([9; 32]));
    auth.allow_fleet("squad", "u1");
    if let Some(agent) = auth.check_agent_token(text) {
        assert_eq!(auth.agent_token(&agent).as_deref(), Some(text), "a token that is not the agent's own resolved");
    }

    let _ = clawfleet_proto::router::looks_like_http(text);
    if let Some(token) = clawfleet_proto::router::auth_token(text) {
        let again = serde_json::json!({ "auth": token }).to_string();
        assert_eq!(clawfleet_proto::router::auth_token(&again), Some(token));
    }

    // A CONNECT: "username\ntopic\nretain".
    let mut parts = text.splitn(3, '\n');
    let (Some(username), Some(will)) = (parts.next(), parts.next()) else { return };
    let retain = parts.next().is_some_and(|r| r.starts_with('1'));
    let who = match username {
        "control" => BusIdentity::Control,
        "observer" => BusIdentity::Observer,
        other => match acl::parse_agent_username(other) {
            Some(agent) => BusIdentity::Agent(agent),
            None => return,
        },
    };
    if acl::may_will(&who, will, retain) {
        assert!(acl::may_publish(&who, will));
        if let (true, BusIdentity::Agent(me)) = (retain, &who) {
            assert_eq!(will, topic::agent(me.fleet.as_str(), me.slot, Channel::Heartbeat));
        }
        assert_ne!(who, BusIdentity::Observer, "the observer may leave no will");
    }
});
