//! The codeswarm router's line parser, on arbitrary input.
//!
//! `parse_line` promises never to panic, whatever the bytes; the reply built from either
//! outcome must not panic either.
#![no_main]

use clawfleet_proto::router::{RouterEvent, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    match parse_line(line) {
        Ok(request) => {
            let _ = request.command.name();
        }
        Err(rejection) => {
            let out = RouterEvent::rejected("t".into(), &rejection).to_line();
            // A reply is one JSON line: a newline inside it would split it in two.
            assert!(!out.contains('\n'), "rejection line contains a newline: {out:?}");
        }
    }
});
