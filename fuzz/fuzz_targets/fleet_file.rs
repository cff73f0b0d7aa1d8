//! Fleet files (`diff`/`apply -f fleet.toml`), on arbitrary text.
//!
//! `fleetfile::parse` never panics and every error it gives points inside the text; each fleet
//! it accepts knows where each of its fields was written, and a fleet the core accepts is
//! planned by `desired::diff` without panicking, against nothing and against itself.
#![no_main]

use clawfleet_core::desired::{Existing, diff};
use clawfleet_core::{BrainSpec, FleetSpec};
use clawfleet_proto::fleetfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.split('\n').count();
    let declared = match fleetfile::parse(text) {
        Ok(declared) => declared,
        Err(e) => {
            if let Some(at) = e.at {
                assert!(at.line >= 1 && at.line <= lines, "error at {at} outside a {lines}-line text: {e}");
            }
            assert!(!e.message.is_empty());
            return;
        }
    };
    let mut specs = Vec::new();
    for fleet in &declared {
        for field in ["name", "replicas", "backend", "brain", "prompt", "version", "image", "cluster", "deploy"] {
            let at = fleet.locate(field);
            assert!(at.line >= 1 && at.line <= lines, "{field} of {} at {at}, outside the text", fleet.request.name);
        }
        if let Ok(spec) = FleetSpec::from_request(&fleet.request, &BrainSpec::Echo) {
            specs.push(spec);
        }
    }
    let plan = diff(&[], &specs, true).expect("new fleets of distinct names are planned");
    assert_eq!(plan.changes.len(), specs.len());
    let existing: Vec<Existing> = specs.iter().map(|s| Existing { spec: s.clone(), terminating: false }).collect();
    let again = diff(&existing, &specs, true).expect("the same fleets are planned");
    assert!(again.changes.is_empty(), "a file planned against itself changes {:?}", again.changes);
});
