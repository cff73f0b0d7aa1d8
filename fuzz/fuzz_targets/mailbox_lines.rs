//! The mailbox's line splitter and line parsers, on arbitrary bytes (a file a worker appended
//! to, possibly cut mid-line).
//!
//! `split_lines` consumes complete lines only, at increasing offsets; `parse_inbox` and
//! `parse_outbox` never panic, whatever the JSON; every directive, event and heartbeat they
//! read is read back unchanged from the line the control plane (or the worker) would write for it.
#![no_main]

use clawfleet_mailbox::follow::{Line, split_lines};
use clawfleet_proto::mailbox::{InboxItem, OutboxItem, event_line, heartbeat_line, inbox_line, parse_inbox, parse_outbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (lines, consumed) = split_lines(data, 0, false);
    // Relaying: the same lines, the valid ones as written.
    let (raw, raw_consumed) = split_lines(data, 0, true);
    assert_eq!(raw_consumed, consumed);
    assert_eq!(raw.len(), lines.len());
    for ((o1, l1), (o2, l2)) in lines.iter().zip(&raw) {
        assert_eq!(o1, o2);
        match (l1, l2) {
            (Line::Json(v), Line::Raw(bytes)) => assert_eq!(&serde_json::from_slice::<serde_json::Value>(bytes).unwrap(), v),
            (Line::Garbage(_), Line::Garbage(_)) => {}
            other => panic!("parsing and relaying disagree: {other:?}"),
        }
    }

    assert!(consumed <= data.len(), "consumed {consumed} of {} bytes", data.len());
    // Consumption ends right after a newline, and what is left is an incomplete line.
    assert!(consumed == 0 || data[consumed - 1] == b'\n', "consumption stops mid-line at {consumed}");
    assert!(!data[consumed..].contains(&b'\n'), "a complete line after byte {consumed} was left unconsumed");

    let mut previous: Option<u64> = None;
    for (offset, _) in &lines {
        assert!(*offset < consumed as u64, "line at offset {offset} lies beyond the {consumed} consumed bytes");
        let at = usize::try_from(*offset).expect("offsets fit in usize");
        assert!(at == 0 || data[at - 1] == b'\n', "line at offset {offset} does not start a line");
        if let Some(p) = previous {
            assert!(*offset > p, "offsets not strictly increasing: {p} then {offset}");
        }
        previous = Some(*offset);
    }

    for (_, line) in &lines {
        let Line::Json(v) = line else { continue };

        if let Ok(InboxItem::Directive(d)) = parse_inbox(v) {
            let written = inbox_line(&d);
            match parse_inbox(&written) {
                Ok(again) => assert_eq!(again, InboxItem::Directive(d), "directive changed in a round trip through {written}"),
                Err(e) => panic!("directive {d:?} is written as {written}, which does not parse: {e}"),
            }
        }

        match parse_outbox(v) {
            Ok(OutboxItem::Event(e)) => {
                let written = event_line("1", 0, &e);
                match parse_outbox(&written) {
                    Ok(again) => assert_eq!(again, OutboxItem::Event(e), "event changed in a round trip through {written}"),
                    Err(err) => panic!("event {e:?} is written as {written}, which does not parse: {err}"),
                }
            }
            Ok(OutboxItem::Heartbeat(h)) => {
                let written = heartbeat_line("1", 0, &h);
                match parse_outbox(&written) {
                    Ok(again) => assert_eq!(again, OutboxItem::Heartbeat(h), "heartbeat changed in a round trip through {written}"),
                    Err(err) => panic!("heartbeat {h:?} is written as {written}, which does not parse: {err}"),
                }
            }
            _ => {}
        }
    }
});
