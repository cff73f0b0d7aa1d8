//! `clawfleet mailbox follow`: codeswarm's outbox follower, as a command.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::BIN;

fn follow(outbox: &std::path::Path) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child =
        Command::new(BIN).args(["mailbox", "follow"]).arg(outbox).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    for pipe in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    (child, rx)
}

fn next(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(20)).expect("a line within 20 s")
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_follower_prints_complete_lines_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("mailbox").join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::create_dir_all(dir.path().join("mailbox").join("archive")).unwrap();
    let path = outbox.join("77_00.jsonl");
    let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    w.write_all(b"{\"n\":1}\nnot json\n{\"n\":2}\n{\"n\":").unwrap();

    let (child, rx) = follow(&outbox);
    let mut got = [next(&rx), next(&rx), next(&rx)];
    got.sort();
    assert_eq!(got[0], "skipped a line of 77_00.jsonl at byte 8: not JSON (expected ident at line 1 column 2): not json");
    assert_eq!(&got[1..], ["{\"n\":1}", "{\"n\":2}"]);
    w.write_all(b"3}\n").unwrap();
    assert_eq!(next(&rx), "{\"n\":3}", "the partial line, once complete");
    stop(child);

    // A restart: nothing printed again; the file moved to the archive is followed there.
    w.write_all(b"{\"n\":4}\n").unwrap();
    std::fs::rename(&path, dir.path().join("mailbox/archive/77_00.jsonl")).unwrap();
    let (child, rx) = follow(&outbox);
    assert_eq!(next(&rx), "{\"n\":4}");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "nothing else");
    stop(child);
}

#[test]
fn the_follower_refuses_a_directory_that_is_not_an_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["mailbox", "follow"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a mailbox outbox (expected <base>/mailbox/outbox)"), "{err}");
    let out = Command::new(BIN).args(["mailbox", "follow", "/nonexistent/mailbox/outbox"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("the outbox directory /nonexistent/mailbox/outbox"));
}
