//! The dashboard in headless Chromium (Debian's chromium and chromium-driver), driven over
//! WebDriver: it logs in with the token from the URL, shows fleets and live agent tiles, and an
//! injection typed into it streams the agents' answers into its transcript.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Plane, eventually, free_port};

struct Driver {
    child: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed for the dashboard test (apt-get install chromium chromium-driver; .ci/run does)");
        let base = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(20), "chromedriver to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        let mut d = Driver { child, base, session: String::new(), rt, http };
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        }}}});
        let v = d.call("POST", "/session", Some(caps));
        d.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_owned();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut req = self.http.request(method.parse().unwrap(), url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send().await.unwrap().json().await.unwrap()
        })
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url})));
    }

    /// Text of the first element matching `css`, if any.
    fn text(&self, css: &str) -> Option<String> {
        let v = self.session("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id = v["value"].as_object()?.values().next()?.as_str()?.to_owned();
        let t = self.session("GET", &format!("/element/{id}/text"), None);
        t["value"].as_str().map(str::to_owned)
    }

    fn element(&self, css: &str) -> String {
        let v = self.session("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/click"), Some(json!({})));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session("DELETE", "", None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_shows_live_agents_and_streams_an_injection() {
    let plane = Plane::start();
    plane.ok(&["launch", "web", "--replicas", "2", "--wait"]);
    let browser = Driver::start();
    browser.go(&format!("{}/#token={}", plane.url(), plane.token()));

    // Fleets, and a tile per agent with its live state.
    eventually(Duration::from_secs(30), "the fleet in the list", || {
        browser.text(".fleet[data-fleet=\"web\"]").filter(|t| t.contains("2/2"))
    });
    for agent in ["web/0", "web/1"] {
        eventually(Duration::from_secs(30), "an idle tile", || {
            browser.text(&format!(".tile[data-agent=\"{agent}\"][data-state=\"idle\"]"))
        });
    }
    // The token left the address bar once read.
    let url = browser.session("GET", "/url", None);
    assert!(!url["value"].as_str().unwrap().contains("token="), "{url}");

    // Inject from the page; both answers stream into the transcript.
    browser.type_into("#prompt", "hello from the browser");
    browser.click("#send");
    for agent in ["web/0", "web/1"] {
        eventually(Duration::from_secs(30), "the streamed answer", || {
            browser.text(&format!(".msg[data-kind=\"answer\"][data-agent=\"{agent}\"] .text")).filter(|t| t == "hello from the browser")
        });
    }
    assert_eq!(browser.text(".msg[data-kind=\"prompt\"] .text").as_deref(), Some("hello from the browser"));

    // The MANAGER badge on the one leader; ARM toggled on a tile; a chat message posted.
    eventually(Duration::from_secs(30), "the MANAGER badge", || browser.text(".tile.manager[data-agent=\"web/0\"] .badge"));
    browser.click(".tile[data-agent=\"web/1\"] .arm");
    eventually(Duration::from_secs(30), "agent 1 disarmed", || {
        (plane.json(&["status", "web", "--json"])["agents"][1]["armed"] == false).then_some(())
    });
    eventually(Duration::from_secs(30), "the toggle showing it", || {
        browser.text(".tile[data-agent=\"web/1\"] .arm").filter(|t| t == "ARM off")
    });
    browser.type_into("#chat-text", "rock?");
    browser.click("#chat-send");
    eventually(Duration::from_secs(30), "the chat message", || browser.text(".chat-msg .text").filter(|t| t == "rock?"));
    assert_eq!(plane.json(&["chat", "web", "--json"])["messages"][0]["text"], "rock?");

    // A deploy's progress: its canary passed, the deploy waits, the canary's tile shows its version.
    plane.ok(&["deploy", "web", "--version", "2", "--canary", "1"]);
    eventually(Duration::from_secs(30), "the paused deploy", || {
        browser.text("#deploy").filter(|t| t.contains("deploy #1 paused: version 1 → 2, 1/1 agents passed"))
    });
    eventually(Duration::from_secs(30), "the canary's version on its tile", || {
        browser.text(".tile[data-agent=\"web/0\"]").filter(|t| t.contains("v2"))
    });

    // A bad token shows the login form instead of data.
    browser.session(
        "POST",
        "/execute/sync",
        Some(json!({"script": "localStorage.setItem('clawfleet-token', 'wrong'); location.hash = ''; location.reload();", "args": []})),
    );
    eventually(Duration::from_secs(20), "the login form", || {
        let v = browser.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return !document.getElementById('login').classList.contains('hidden');", "args": []})),
        );
        (v["value"] == true).then_some(())
    });
}
