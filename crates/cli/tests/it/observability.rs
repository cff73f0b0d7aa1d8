//! Metrics and logs as an operator's tools read them: `promtool check metrics` (Debian's
//! prometheus package) passes on the control plane's and the model service's `/metrics`; a
//! real Prometheus server scrapes both on loopback (in OpenMetrics, which it asks for) and its
//! query API gives the values back; `--agent-metrics` adds each agent's heartbeat at three
//! series an agent; `--log-format json` writes one JSON object a line.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Plane, PlaneOptions, eventually, free_port};

/// `promtool check metrics` of an exposition: its complaints (empty when it passes).
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { said } else { format!("exit {}: {said}", out.status) }
}

fn get(url: &str) -> String {
    try_get(url).unwrap_or_else(|| panic!("GET {url}"))
}

/// The body of a successful GET, if it is one.
fn try_get(url: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let resp = reqwest::get(url).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    })
}

/// A Prometheus server scraping `targets` every second, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[(&str, String)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let jobs: String = targets
            .iter()
            .map(|(job, target)| format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"))
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (apt-get install prometheus)");
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(60), "Prometheus to be ready", || try_get(&format!("{url}/-/ready")).map(|_| ()));
        Prometheus { child, url, _dir: dir }
    }

    /// The value of an instant query that returns one series, once it does.
    fn value(&self, query: &str) -> f64 {
        eventually(Duration::from_secs(60), query, || {
            let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", query)]).unwrap();
            let v: Value = serde_json::from_str(&try_get(url.as_str())?).ok()?;
            v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
        })
    }
}

#[test]
fn prometheus_scrapes_the_control_plane_and_the_model_service() {
    let plane = Plane::with(PlaneOptions { builtin_model: true, up_args: vec!["--agent-metrics".into()], ..PlaneOptions::default() });
    plane.ok(&["launch", "squad", "--replicas", "2", "--brain", "echo", "--wait"]);
    plane.ok(&["inject", "squad", "hello", "--wait"]);
    let model = format!("http://127.0.0.1:{}", plane.model_port);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let body = serde_json::json!({"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});
        let resp = reqwest::Client::new().post(format!("{model}/v1/chat/completions")).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{:?}", resp.text().await);
    });

    // The classic text format, as promtool reads it.
    let ours = get(&format!("{}/metrics", plane.url()));
    assert_eq!(promtool(&ours), "", "{ours}");
    for want in [
        "clawfleet_injections_total{outcome=\"accepted\"} 1",
        "clawfleet_injections_total{outcome=\"completed\"} 2",
        "clawfleet_inject_turn_complete_seconds_count 2",
        "clawfleet_agent_rss_bytes{fleet=\"squad\",slot=\"1\"}",
        "# TYPE clawfleet_http_request_duration_seconds histogram",
    ] {
        assert!(ours.contains(want), "{want} not in\n{ours}");
    }
    assert!(!ours.contains("injection_id") && !ours.contains("/api/v1/fleets/squad"), "no injection or fleet name as a label: {ours}");
    let theirs = get(&format!("{model}/metrics"));
    assert_eq!(promtool(&theirs), "", "{theirs}");
    assert!(theirs.contains("clawfleet_model_time_to_first_token_seconds_count 1"), "{theirs}");

    // A real Prometheus, which asks for OpenMetrics.
    let prometheus =
        Prometheus::start(&[("clawfleet", format!("127.0.0.1:{}", plane.http_port)), ("model", format!("127.0.0.1:{}", plane.model_port))]);
    assert_eq!(prometheus.value("up{job=\"clawfleet\"}"), 1.0);
    assert_eq!(prometheus.value("up{job=\"model\"}"), 1.0);
    assert_eq!(prometheus.value("clawfleet_injections_total{outcome=\"accepted\"}"), 1.0);
    assert_eq!(prometheus.value("sum(clawfleet_agents{state=\"idle\"})"), 2.0);
    assert!(prometheus.value("clawfleet_agent_uptime_seconds{fleet=\"squad\",slot=\"0\"}") >= 0.0);
    assert!(prometheus.value("clawfleet_model_completion_tokens_total") >= 1.0);
    assert_eq!(prometheus.value("clawfleet_model_slots"), 4.0);
    assert!(prometheus.value("histogram_quantile(0.99, sum by (le) (clawfleet_http_request_duration_seconds_bucket))").is_finite());
}

#[test]
fn json_logs_are_one_object_a_line() {
    let plane = Plane::with(PlaneOptions { up_args: vec!["--log-format".into(), "json".into()], ..PlaneOptions::default() });
    plane.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    let log = plane.log();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let serving = lines.iter().find(|l| l["message"] == "Control plane serving").expect("the serving line");
    assert_eq!(serving["level"], "INFO");
    assert!(serving["http"].as_str().unwrap().starts_with("127.0.0.1:"), "fields at the top level: {serving}");
    assert!(serving["timestamp"].is_string());
}

/// A metric's value in the classic text format.
fn metric(text: &str, line: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn retention_drops_old_events_but_not_what_an_agent_still_owes() {
    let plane = Plane::with(PlaneOptions { up_args: vec!["--retain-events-rows".into(), "20".into()], ..PlaneOptions::default() });
    plane.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    // An injection no agent takes (an external fleet whose agent never joins): it waits.
    plane.ok(&["launch", "stuck", "--backend", "external", "--replicas", "1"]);
    let waiting = plane.json(&["inject", "stuck", "anyone?", "--json"])["injection_id"].as_str().unwrap().to_owned();
    for i in 0..15 {
        plane.ok(&["inject", "squad", &format!("turn {i}"), "--wait"]);
    }
    let metrics = eventually(Duration::from_secs(60), "events dropped", || {
        let text = get(&format!("{}/metrics", plane.url()));
        (metric(&text, "clawfleet_events_dropped_total").unwrap_or(0.0) > 0.0).then_some(text)
    });
    assert!(metric(&metrics, "clawfleet_events_retention_cutoff").unwrap() > 0.0, "{metrics}");
    eventually(Duration::from_secs(60), "the table down to its cap, and what waits kept", || {
        let squad = crate::support::events(&plane, "squad");
        let stuck = crate::support::events(&plane, "stuck");
        let kept = stuck.iter().any(|e| e["event"] == "inject_ack" && e["injection_id"] == waiting.as_str());
        assert!(kept, "the waiting injection's ack is never dropped: {stuck:?}");
        (squad.len() <= 25 && squad.iter().all(|e| e["event"] != "fleet_launched")).then_some(())
    });
    // And everything still works.
    plane.ok(&["inject", "squad", "still here", "--wait"]);
}
