//! A small WebDriver client for Debian's chromium-driver: the dashboard test drives headless
//! Chromium with it, and the dashboard benchmark (crates/bench) measures with the same one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Driver {
    child: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Driver {
    /// Starts chromedriver and a headless Chromium session, `width` × `height` pixels.
    pub fn start(width: u32, height: u32) -> Driver {
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
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(up.elapsed() < Duration::from_secs(20), "chromedriver did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut d = Driver { child, base, session: String::new(), rt, http };
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", format!("--window-size={width},{height}")]
        }}}});
        let v = d.call("POST", "/session", Some(caps));
        d.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_owned();
        d
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut req = self.http.request(method.parse().unwrap(), url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send().await.unwrap().json().await.unwrap()
        })
    }

    pub fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn go(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url})));
    }

    /// Text of the first element matching `css`, if any.
    pub fn text(&self, css: &str) -> Option<String> {
        let v = self.session("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id = v["value"].as_object()?.values().next()?.as_str()?.to_owned();
        let t = self.session("GET", &format!("/element/{id}/text"), None);
        t["value"].as_str().map(str::to_owned)
    }

    pub fn element(&self, css: &str) -> String {
        let v = self.session("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Empties an input.
    pub fn clear(&self, css: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/clear"), Some(json!({})));
    }

    /// Runs `script` in the page and returns its value.
    /// The value `script` returns. A renderer too busy to answer in chromedriver's time (on a
    /// loaded 2-core machine, with a thousand tiles redrawing) is asked again, for up to a
    /// minute; any other WebDriver error fails the caller with the error's text.
    pub fn run(&self, script: &str) -> Value {
        let began = Instant::now();
        loop {
            let v = self.session("POST", "/execute/sync", Some(json!({"script": script, "args": []})))["value"].clone();
            let Some(error) = v.get("error").and_then(Value::as_str) else { return v };
            let busy = matches!(error, "timeout" | "script timeout");
            assert!(busy && began.elapsed() < Duration::from_secs(60), "script failed: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Saves a PNG of the page as it is now.
    pub fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let v = self.session("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(v["value"].as_str().expect("a screenshot")).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
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
