//! The HTTP API request bodies, and the string parsers that validate what they carry.
#![no_main]

use clawfleet_core::{BrainSpec, FleetName, FleetSpec};
use clawfleet_proto::api::{ApplyRequest, CommandRequest, DeployRequest, InjectRequest, LaunchRequest, MaxUnavailable, ScaleRequest, UpdateRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<LaunchRequest>(data) {
        let _ = FleetSpec::from_request(&req, &BrainSpec::Echo);
    }
    if let Ok(req) = serde_json::from_slice::<ApplyRequest>(data) {
        let specs: Vec<FleetSpec> = req.fleets.iter().filter_map(|r| FleetSpec::from_request(r, &BrainSpec::Echo).ok()).collect();
        let _ = clawfleet_core::desired::diff(&[], &specs, req.prune);
    }
    if let Ok(req) = serde_json::from_slice::<DeployRequest>(data) {
        let _ = req.version.as_deref().map(clawfleet_core::spec::check_version);
    }
    let _ = serde_json::from_slice::<InjectRequest>(data);
    let _ = serde_json::from_slice::<CommandRequest>(data);
    let _ = serde_json::from_slice::<ScaleRequest>(data);
    if let Ok(req) = serde_json::from_slice::<UpdateRequest>(data) {
        let _ = req.image.as_deref().map(clawfleet_core::spec::check_image);
        let _ = req.version.as_deref().map(clawfleet_core::spec::check_version);
    }

    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(brain) = s.parse::<BrainSpec>() {
        let _ = brain.kind();
        let _ = brain.to_string();
    }
    if let Ok(m) = s.parse::<MaxUnavailable>() {
        assert_eq!(m.to_string().parse::<MaxUnavailable>(), Ok(m), "max_unavailable {s:?} survives being written and read");
        assert!(m.of(0) >= 1 && m.of(10_000) >= 1);
    }
    if let Ok(name) = s.parse::<FleetName>() {
        let _ = name.to_string();
    }
    let _ = clawfleet_bus::FleetKey::from_hex(s);
    if let Some((job, node)) = clawfleet_mailbox::Mailbox::parse_file_name(s) {
        assert_eq!(clawfleet_mailbox::Mailbox::parse_file_name(&clawfleet_mailbox::Mailbox::file_name(&job, node)), Some((job, node)));
    }
    if let Ok(url) = s.parse::<clawfleet_bus::BusUrl>() {
        let _ = url.to_string();
        let _ = url.without_credentials();
    }
});
