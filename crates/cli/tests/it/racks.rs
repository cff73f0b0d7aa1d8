//! Racks end to end: two control planes that know each other as peers, each with a `peer`
//! token the other made for it, which lets a rack read the other's rack information and
//! nothing of its fleets; `racks` shows whether each peer answers, and says so when it is down.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Plane, PlaneOptions};

#[test]
fn racks_know_their_peers_and_whether_they_answer() {
    let mut b = Plane::with(PlaneOptions { up_args: vec!["--rack".into(), "rack-b".into()], ..PlaneOptions::default() });
    b.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    let token = b.ok(&["token", "create", "--role", "peer", "--name", "rack-a"]).trim().to_owned();
    assert!(b.fails(&["token", "create", "--role", "peer", "--fleet", "squad"]).contains("a peer token is another rack's"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rack-b.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();

    // A token file others can read is refused, naming it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let peer = format!("rack-b={}", b.url());
    let peer_token = format!("rack-b={}", file.display());
    let up = |extra: &[&str]| {
        let scratch = tempfile::tempdir().unwrap();
        let args = [&["up", "--no-model", "--data", scratch.path().to_str().unwrap(), "--http", "127.0.0.1:0"], extra].concat();
        b.fails(&args)
    };
    assert!(up(&["--peer", &peer, "--peer-token", &peer_token]).contains("is readable by others"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(up(&["--peer", &peer]).contains("--peer rack-b needs --peer-token rack-b=FILE"));
    assert!(up(&["--peer", "rack-b=ftp://x", "--peer-token", &peer_token]).contains("must be an http:// or https:// URL"));
    assert!(up(&["--rack", "Rack_A"]).contains("rack name 'Rack_A' must be"));
    assert!(up(&["--rack", "rack-b", "--peer", &peer, "--peer-token", &peer_token]).contains("that is this rack's own name"));

    let a = Plane::with(PlaneOptions {
        up_args: ["--rack", "rack-a", "--peer", &peer, "--peer-token", &peer_token].map(String::from).to_vec(),
        ..PlaneOptions::default()
    });
    let racks = a.json(&["racks", "--json"]);
    assert_eq!(racks["rack"], "rack-a", "{racks:#}");
    let p = &racks["peers"][0];
    assert_eq!((&p["name"], &p["answers"], &p["info"]["rack"]), (&"rack-b".into(), &true.into(), &"rack-b".into()), "{racks:#}");
    assert!(p.get("problem").is_none(), "{racks:#}");
    let text = a.ok(&["racks"]);
    assert!(text.starts_with("rack rack-a (1 peers)") && text.contains("rack-b") && text.contains("answers"), "{text}");

    // The peer token reads the rack, and nothing of its fleets.
    assert_eq!(b.http("GET", "/api/v1/rack", Some(&token), None).0, 200);
    for (method, path) in [("GET", "/api/v1/fleets"), ("GET", "/api/v1/fleets/squad"), ("GET", "/api/v1/racks"), ("GET", "/api/v1/audit")] {
        let (status, body) = b.http(method, path, Some(&token), None);
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("the peer token 'rack-a' may not"), "{body}");
    }
    let (status, body) = b.http("POST", "/api/v1/fleets/squad/inject", Some(&token), Some(r#"{"prompt":"hi"}"#));
    assert_eq!(status, 403, "{body}");

    // A peer that is down does not answer, and `racks` says why.
    b.stop();
    let racks = a.json(&["racks", "--json"]);
    let p = &racks["peers"][0];
    assert_eq!(p["answers"], false, "{racks:#}");
    assert!(p["problem"].as_str().unwrap().contains("rack 'rack-b' does not answer"), "{racks:#}");
    assert!(a.ok(&["racks"]).contains("does not answer"));
    // The token never shows in either log.
    assert!(!a.log().contains(&token) && !b.log().contains(&token));
}
