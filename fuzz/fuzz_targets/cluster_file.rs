//! Cluster files (`--cluster FILE`), on arbitrary text: a profile alone or inside codeswarm's
//! configuration.
//!
//! `parse_cluster_file` never panics; a profile it accepts passes `check`, and survives being
//! written as JSON and read again (less the `ssh_retry_*` fields, read from codeswarm's files
//! but never written).
#![no_main]

use clawfleet_proto::cluster::{ClusterSpec, parse_cluster_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = parse_cluster_file(text, "default") else { return };

    if let Err(e) = spec.check() {
        panic!("accepted profile {spec:?} fails its own check: {e}");
    }

    let json = serde_json::to_string(&spec).expect("a profile serializes");
    let expected = ClusterSpec { ssh_retry_attempts: None, ssh_retry_delay_seconds: None, ..spec.clone() };
    match parse_cluster_file(&json, "default") {
        Ok(again) => assert_eq!(again, expected, "profile changed in a round trip through {json}"),
        Err(e) => panic!("profile {spec:?} is written as {json}, which is refused: {e}"),
    }
});
