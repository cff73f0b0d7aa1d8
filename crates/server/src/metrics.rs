//! The control plane's metrics (`GET /metrics`), kept with `prometheus-client`, the Prometheus
//! project's own Rust client: typed families whose labels are enums or a fixed set of names
//! (a route's pattern, a backend, a refusal's reason), never an injection id or an agent
//! unless asked for (`up --agent-metrics`), so a fleet of any size has the same few series.
//! Prometheus is answered in OpenMetrics, anyone else in the classic text format
//! ([`clawfleet_proto::exposition`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label's values: an enum, each variant a snake_case name.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, match self { $($name::$variant => $text),+ })
            }
        }
    };
}

label_values! {
    /// What a bus message the control plane read was.
    BusKind {
        Event = "event",
        Heartbeat = "heartbeat",
        /// Anything else on its subscriptions (a dynamic-security answer).
        Other = "other",
    }
}

label_values! {
    /// Why a bus message was refused.
    BusRefusal {
        /// Not an agent's topic, or a payload that does not decode.
        Malformed = "malformed",
        /// An event an agent may not report, or an answer for another agent's injection.
        Forbidden = "forbidden",
        /// A scenario play the control plane refused.
        Play = "play",
    }
}

label_values! {
    /// How an injection to one agent ended (or that it was accepted, once per injection).
    InjectOutcome {
        Accepted = "accepted",
        Completed = "completed",
        Failed = "failed",
        Timeout = "timeout",
    }
}

label_values! {
    /// Why the API refused a request (by its status).
    Refusal {
        BadRequest = "bad_request",
        Unauthorized = "unauthorized",
        Forbidden = "forbidden",
        NotFound = "not_found",
        Conflict = "conflict",
        TooLarge = "too_large",
        Other = "other",
    }
}

impl Refusal {
    /// The refusal a response of `status` is, if it is one (a 4xx).
    pub(crate) fn of(status: u16) -> Option<Refusal> {
        Some(match status {
            400 | 405 | 415 | 422 => Refusal::BadRequest,
            401 => Refusal::Unauthorized,
            403 => Refusal::Forbidden,
            404 => Refusal::NotFound,
            409 => Refusal::Conflict,
            413 => Refusal::TooLarge,
            400..=499 => Refusal::Other,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: BusKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    reason: BusRefusal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: InjectOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    reason: Refusal,
}

/// A route: its pattern (`/api/v1/fleets/{name}`, never the name itself), and the method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    pub route: String,
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// One agent (`up --agent-metrics` only).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    fleet: String,
    slot: u32,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from a millisecond to about a minute.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// How many injections' send times are kept for their latencies at most.
const MAX_TIMED: usize = 100_000;
/// How long an injection's send time is kept for its latencies.
const TIMED_FOR: Duration = Duration::from_secs(3600);

/// Every metric the control plane keeps.
pub(crate) struct Metrics {
    registry: Registry,
    bus_messages: Family<KindLabel, Counter>,
    bus_refused: Family<RefusedLabel, Counter>,
    pub events_ingested: Counter,
    pub duplicates: Counter,
    pub replays_requested: Counter,
    pub directives_sent: Counter,
    injections: Family<OutcomeLabel, Counter>,
    refusals: Family<RefusalLabel, Counter>,
    http: Histograms<RouteLabel>,
    inject_delivered: Histogram,
    inject_completed: Histogram,
    pub ingest_lag: Histogram,
    pub heartbeat_age: Histogram,
    reconcile: Histograms<BackendLabel>,
    agents: Family<StateLabel, Gauge>,
    outbox_depth: Gauge,
    outbox_in_flight: Gauge,
    queued: Gauge,
    migrations_open: Gauge,
    pub events_dropped: Counter,
    pub retention_cutoff: Gauge,
    pub retention_pass: Histogram,
    newest_event: Gauge,
    /// When each injection was first sent, for its latencies.
    sent_at: Mutex<HashMap<String, Instant>>,
    /// Per-agent heartbeat metrics, when asked for.
    per_agent: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(per_agent: bool) -> Metrics {
        let mut r = Registry::with_prefix("clawfleet");
        let bus_messages = Family::default();
        r.register("bus_messages", "Bus messages read by the control plane, by kind", bus_messages.clone());
        let bus_refused = Family::default();
        r.register("bus_rejected", "Bus messages refused, by reason", bus_refused.clone());
        let events_ingested = Counter::default();
        r.register("events_ingested", "Agent events stored", events_ingested.clone());
        let duplicates = Counter::default();
        r.register("duplicate_events", "Agent events received again and ignored", duplicates.clone());
        let replays_requested = Counter::default();
        r.register("replays_requested", "Replays asked of agents after a journal gap", replays_requested.clone());
        let directives_sent = Counter::default();
        r.register("directives_sent", "Directives published (first sends and resends)", directives_sent.clone());
        let injections = Family::default();
        r.register("injections", "Injections accepted (once each), and how each agent's ended", injections.clone());
        let refusals = Family::default();
        r.register("refusals", "API requests refused, by reason", refusals.clone());
        let http: Histograms<RouteLabel> = Family::new_with_constructor(latency);
        r.register_with_unit("http_request_duration", "HTTP requests served, by route and method", Unit::Seconds, http.clone());
        let inject_delivered = latency();
        r.register_with_unit(
            "inject_delivered",
            "From an injection's first send to its agent taking it",
            Unit::Seconds,
            inject_delivered.clone(),
        );
        let inject_completed = latency();
        r.register_with_unit(
            "inject_turn_complete",
            "From an injection's first send to its agent's turn_complete",
            Unit::Seconds,
            inject_completed.clone(),
        );
        let ingest_lag = latency();
        r.register_with_unit(
            "event_ingest_lag",
            "From an agent event's arrival to its being stored and broadcast",
            Unit::Seconds,
            ingest_lag.clone(),
        );
        let heartbeat_age = latency();
        r.register_with_unit(
            "heartbeat_age",
            "How old an agent's last heartbeat was when its next one arrived",
            Unit::Seconds,
            heartbeat_age.clone(),
        );
        let reconcile: Histograms<BackendLabel> = Family::new_with_constructor(latency);
        r.register_with_unit("reconcile_duration", "One fleet's reconcile pass, by backend", Unit::Seconds, reconcile.clone());
        let agents = Family::default();
        r.register("agents", "Agents by state", agents.clone());
        let outbox_depth = Gauge::default();
        r.register("outbox_depth", "Directives stored and not yet acknowledged by their agents", outbox_depth.clone());
        let outbox_in_flight = Gauge::default();
        r.register("outbox_in_flight", "Of those, sent at least once", outbox_in_flight.clone());
        let queued = Gauge::default();
        r.register("queued_injections", "Injections agents hold queued, as their heartbeats say", queued.clone());
        let migrations_open = Gauge::default();
        r.register("migrations_open", "Migrations between racks not ended on this rack", migrations_open.clone());
        let events_dropped = Counter::default();
        r.register("events_dropped", "Events dropped by retention", events_dropped.clone());
        let retention_cutoff = Gauge::default();
        r.register(
            "events_retention_cutoff",
            "The event id at and below which retention drops what no open injection needs",
            retention_cutoff.clone(),
        );
        let newest_event = Gauge::default();
        r.register("events_newest_id", "The newest event's id", newest_event.clone());
        let retention_pass = latency();
        r.register_with_unit("retention_pass_duration", "One retention pass over the events table", Unit::Seconds, retention_pass.clone());
        Metrics {
            registry: r,
            events_dropped,
            retention_cutoff,
            retention_pass,
            newest_event,
            bus_messages,
            bus_refused,
            events_ingested,
            duplicates,
            replays_requested,
            directives_sent,
            injections,
            refusals,
            http,
            inject_delivered,
            inject_completed,
            ingest_lag,
            heartbeat_age,
            reconcile,
            agents,
            outbox_depth,
            outbox_in_flight,
            queued,
            migrations_open,
            sent_at: Mutex::default(),
            per_agent,
        }
    }

    pub(crate) fn bus_message(&self, kind: BusKind) {
        self.bus_messages.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn bus_refused(&self, reason: BusRefusal) {
        self.bus_refused.get_or_create(&RefusedLabel { reason }).inc();
    }

    pub(crate) fn injection(&self, outcome: InjectOutcome, n: u64) {
        self.injections.get_or_create(&OutcomeLabel { outcome }).inc_by(n);
    }

    /// A request to `route` (its pattern) answered with `status` after `took`.
    pub(crate) fn http(&self, route: RouteLabel, status: u16, took: Duration) {
        self.http.get_or_create(&route).observe(took.as_secs_f64());
        if let Some(reason) = Refusal::of(status) {
            self.refusals.get_or_create(&RefusalLabel { reason }).inc();
        }
    }

    pub(crate) fn reconciled(&self, backend: &str, took: Duration) {
        self.reconcile.get_or_create(&BackendLabel { backend: backend.to_owned() }).observe(took.as_secs_f64());
    }

    /// Injection `id` was sent now (its first send counts).
    pub(crate) fn sent(&self, id: &str) {
        let mut at = self.sent_at.lock().expect("not poisoned");
        if at.len() >= MAX_TIMED {
            at.retain(|_, t| t.elapsed() < TIMED_FOR);
            if at.len() >= MAX_TIMED {
                return;
            }
        }
        at.entry(id.to_owned()).or_insert_with(Instant::now);
    }

    /// An agent took injection `id`.
    pub(crate) fn delivered(&self, id: &str) {
        if let Some(t) = self.sent_at.lock().expect("not poisoned").get(id) {
            self.inject_delivered.observe(t.elapsed().as_secs_f64());
        }
    }

    /// An agent's turn for injection `id` ended, as `outcome` says (its latency kept when completed).
    pub(crate) fn ended(&self, id: &str, outcome: InjectOutcome) {
        if outcome == InjectOutcome::Completed
            && let Some(t) = self.sent_at.lock().expect("not poisoned").get(id)
        {
            self.inject_completed.observe(t.elapsed().as_secs_f64());
        }
        self.injection(outcome, 1);
    }

    /// Forgets send times older than an hour.
    pub(crate) fn sweep(&self) {
        self.sent_at.lock().expect("not poisoned").retain(|_, t| t.elapsed() < TIMED_FOR);
    }

    /// The exposition, with the gauges as `now` says; OpenMetrics or (`classic`) the text format.
    pub(crate) fn render(&self, now: Now<'_>, openmetrics: bool) -> String {
        for (state, n) in now.agents {
            self.agents.get_or_create(&StateLabel { state }).set(*n as i64);
        }
        self.outbox_depth.set(now.outbox_depth as i64);
        self.outbox_in_flight.set(now.in_flight as i64);
        self.queued.set(now.queued as i64);
        self.migrations_open.set(now.migrations_open as i64);
        self.newest_event.set(now.newest_event);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).expect("writing to a String");
        if self.per_agent {
            let mut r = Registry::with_prefix("clawfleet_agent");
            let (uptime, rss): (Family<AgentLabel, Gauge>, Family<AgentLabel, Gauge>) = Default::default();
            let load: Family<AgentLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
            r.register_with_unit("uptime", "An agent's uptime, as its last heartbeat says", Unit::Seconds, uptime.clone());
            r.register_with_unit("rss", "An agent's resident memory, as its last heartbeat says", Unit::Bytes, rss.clone());
            r.register("load1", "The one-minute load of an agent's host, as its last heartbeat says", load.clone());
            for a in now.per_agent {
                let label = AgentLabel { fleet: a.fleet.clone(), slot: a.slot };
                uptime.get_or_create(&label).set(a.uptime_s as i64);
                rss.get_or_create(&label).set(a.rss_bytes as i64);
                load.get_or_create(&label).set(a.load1);
            }
            prometheus_client::encoding::text::encode_registry(&mut out, &r).expect("writing to a String");
        }
        prometheus_client::encoding::text::encode_eof(&mut out).expect("writing to a String");
        if openmetrics { out } else { clawfleet_proto::exposition::classic(&out) }
    }
}

/// What the gauges say at a scrape.
pub(crate) struct Now<'a> {
    pub agents: &'a [(&'static str, u64)],
    pub outbox_depth: u64,
    pub in_flight: u64,
    pub queued: u64,
    pub migrations_open: u64,
    pub newest_event: i64,
    pub per_agent: &'a [AgentSample],
}

/// One agent's last heartbeat, for `--agent-metrics`.
pub(crate) struct AgentSample {
    pub fleet: String,
    pub slot: u32,
    pub uptime_s: u64,
    pub rss_bytes: u64,
    pub load1: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<'a>(agents: &'a [(&'static str, u64)], per_agent: &'a [AgentSample]) -> Now<'a> {
        Now { agents, outbox_depth: 2, in_flight: 1, queued: 3, migrations_open: 0, newest_event: 7, per_agent }
    }

    #[test]
    fn the_exposition_has_its_families_and_no_agent_unless_asked() {
        let m = Metrics::new(false);
        m.bus_message(BusKind::Heartbeat);
        m.injection(InjectOutcome::Accepted, 1);
        m.sent("inj-1");
        m.delivered("inj-1");
        m.ended("inj-1", InjectOutcome::Completed);
        m.http(RouteLabel { route: "/api/v1/fleets/{name}".into(), method: "GET".into() }, 404, Duration::from_millis(3));
        let sample = [AgentSample { fleet: "f".into(), slot: 0, uptime_s: 5, rss_bytes: 9, load1: 0.5 }];
        let text = m.render(now(&[("idle", 4)], &sample), false);
        for want in [
            "clawfleet_bus_messages_total{kind=\"heartbeat\"} 1",
            "clawfleet_injections_total{outcome=\"completed\"} 1",
            "clawfleet_refusals_total{reason=\"not_found\"} 1",
            "clawfleet_inject_turn_complete_seconds_count 1",
            "clawfleet_http_request_duration_seconds_count{route=\"/api/v1/fleets/{name}\",method=\"GET\"} 1",
            "clawfleet_agents{state=\"idle\"} 4",
            "clawfleet_outbox_depth 2",
            "# TYPE clawfleet_injections_total counter",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
        assert!(!text.contains("clawfleet_agent_") && !text.contains("# EOF"), "{text}");
        let with = Metrics::new(true).render(now(&[], &sample), true);
        assert!(with.contains("clawfleet_agent_rss_bytes{fleet=\"f\",slot=\"0\"} 9") && with.ends_with("# EOF\n"), "{with}");
    }

    #[test]
    fn refusals_are_the_4xx_answers() {
        assert_eq!(Refusal::of(403), Some(Refusal::Forbidden));
        assert_eq!(Refusal::of(429), Some(Refusal::Other));
        assert_eq!(Refusal::of(200), None);
        assert_eq!(Refusal::of(503), None);
    }
}
