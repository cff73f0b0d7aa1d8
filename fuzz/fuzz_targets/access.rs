//! The parsers of who may do what, on arbitrary input: agent policy files (`--agent-policy`),
//! token requests (`POST /api/v1/tokens`), presented API tokens, router first lines (auth or
//! HTTP), and bus CONNECT packets with their last wills.
//!
//! Nothing panics; an accepted policy is within its limits and grants agents no read, join or
//! token rights; a presented token that resolves to an agent is exactly that agent's token; an
//! auth line's token survives being written again; a will the broker accepts is one its client
//! could publish, and a retained one is an agent's own heartbeat; an accepted token name and
//! lifetime are within their limits; a CONNECT (as rmqtt decodes it) with good credentials for
//! its username is admitted only with a will its client may publish.
#![no_main]

use bytes::BytesMut;
use clawfleet_bus::broker::{Login, login};
use clawfleet_bus::{BusSecret, FleetAuth};
use clawfleet_core::acl::{self, BusIdentity};
use clawfleet_core::authz::{self, Action, Policy};
use clawfleet_proto::topic::{self, Channel};
use libfuzzer_sys::fuzz_target;
use rmqtt_codec::v3::{Codec, Packet};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    connect(data);
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
    if let Ok(req) = serde_json::from_str::<clawfleet_proto::api::TokenRequest>(text) {
        if let Some(name) = &req.name
            && authz::check_token_name(name).is_ok()
        {
            assert!(!name.is_empty() && name.len() <= authz::MAX_TOKEN_NAME);
        }
        match req.expires.as_deref().map(authz::token_lifetime) {
            Some(Ok(life)) => assert!(!life.is_zero() && life <= authz::MAX_TOKEN_LIFE),
            Some(Err(e)) => assert!(e.len() < 300, "an expiry error echoes too much"),
            None => {}
        }
    }
    if let Err(e) = authz::check_token_name(text) {
        assert!(e.len() < 400, "a name error echoes too much");
    }

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

/// A CONNECT packet, logged in with the right password for its username (so the will is what
/// decides): admitted only with a will its client may publish and, retained, only its heartbeat.
fn connect(data: &[u8]) {
    let Ok(Some((Packet::Connect(c), _))) = Codec::new(1 << 20).decode(&mut BytesMut::from(data)) else { return };
    let secret = BusSecret::from_bytes([9; 32]);
    let auth = FleetAuth::new(secret.clone());
    auth.allow_fleet("squad", "u1");
    let username = c.username.as_deref().unwrap_or("");
    let (client_id, password) = match username {
        clawfleet_bus::auth::CONTROL_USER => (c.client_id.to_string(), secret.control_password()),
        clawfleet_bus::auth::OBSERVER_USER => (c.client_id.to_string(), secret.observer_password()),
        other => match acl::parse_agent_username(other) {
            Some(a) => (acl::agent_client_id(&a, "u1"), secret.agent_password(&a, "u1")),
            None => (c.client_id.to_string(), String::from_utf8_lossy(c.password.as_deref().unwrap_or(b"")).into_owned()),
        },
    };
    let will = c.last_will.as_ref().map(|w| (w.topic.as_ref(), w.retain));
    match login(&auth, &client_id, username, password.as_bytes(), will) {
        Login::Admitted(who) => {
            if let Some((topic, retain)) = will {
                assert!(acl::may_publish(&who, topic), "admitted with a will on {topic}");
                if let (true, BusIdentity::Agent(me)) = (retain, &who) {
                    assert_eq!(topic, clawfleet_proto::topic::agent(me.fleet.as_str(), me.slot, Channel::Heartbeat));
                }
                assert_ne!(who, BusIdentity::Observer, "the observer may leave no will");
            }
        }
        Login::WillRefused => assert!(will.is_some()),
        Login::Refused => {}
    }
}
