//! The HTTP API request bodies, and the string parsers that validate what they carry (and a
//! brain's answers, turned into moves, phrases, haiku and council claims).
#![no_main]

use clawfleet_core::{BrainSpec, FleetName, FleetSpec};
use clawfleet_proto::api::{
    ApplyRequest, CommandRequest, DeployRequest, InjectRequest, LaunchRequest, MaxUnavailable, ScaleRequest, SecretRequest, UpdateRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<clawfleet_proto::api::ChatPost>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::api::ArmRequest>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::api::LeaderRequest>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::api::ChimeRequest>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::approval::ApprovalAnswer>(data);
    // What racks send each other, and what `migrate` asks; a rack name is checked whatever it is.
    let _ = serde_json::from_slice::<clawfleet_proto::rack::MigrateRequest>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::rack::Offer>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::rack::Forwarded>(data);
    let _ = serde_json::from_slice::<clawfleet_proto::rack::RackInfo>(data);
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = clawfleet_proto::rack::check_rack_name(name);
    }
    if let Ok(s) = serde_json::from_slice::<clawfleet_proto::scenario::Scenarios>(data)
        && clawfleet_core::scenario::validate(&s).is_ok()
    {
        assert!(s.rps.is_none_or(|r| clawfleet_proto::scenario::RPS_INTERVAL_SECONDS.contains(&r.interval_seconds)));
    }
    // A queue request: what it makes is one item for an agent the fleet has, each agent once.
    if let Ok(add) = serde_json::from_slice::<clawfleet_proto::queue::QueueAdd>(data)
        && let Ok(items) = clawfleet_core::queue::items(add.agents.as_deref(), add.all, 4, "web")
    {
        use clawfleet_core::queue::Wants;
        let slots: Vec<u32> = items.iter().filter_map(|w| if let Wants::Agent(s) = w { Some(*s) } else { None }).collect();
        assert!(!items.is_empty() && slots.iter().all(|s| *s < 4));
        assert!(slots.iter().enumerate().all(|(i, s)| !slots[..i].contains(s)));
        let placed = clawfleet_core::queue::place(&items, &[0, 1, 2, 3]);
        assert!(placed.iter().enumerate().all(|(i, (_, s))| !placed[..i].iter().any(|(_, t)| t == s)));
    }
    // A merge patch of a fleet's scenarios: what it yields is valid, or it is refused.
    if let Ok(patch) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(s) = clawfleet_core::scenario::merge(&clawfleet_proto::scenario::Scenarios::default(), &patch)
    {
        assert!(clawfleet_core::scenario::validate(&s).is_ok(), "{s:?}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // A brain's answer becomes a move, a phrase or a haiku, each bounded, or nothing.
        let _ = clawfleet_core::scenario::parse_move(text);
        assert!(clawfleet_core::scenario::three_words(text).is_none_or(|w| w.chars().count() <= 50 && w.split_whitespace().count() <= 3));
        assert!(clawfleet_core::scenario::haiku(text).is_none_or(|h| h.chars().count() <= 400));
        // ... and delegation directives: at most MAX_DIRECTIVES, each prompt part of the answer,
        // every node list bounded.
        let (directives, _) = clawfleet_core::delegation::parse(text);
        assert!(directives.len() <= clawfleet_core::delegation::MAX_DIRECTIVES);
        for d in &directives {
            assert!(!d.prompt.is_empty() && d.prompt.len() <= text.len());
            if let clawfleet_core::delegation::Nodes::List(nodes) = &d.nodes {
                assert!(!nodes.is_empty() && nodes.len() <= clawfleet_core::delegation::MAX_NODES);
            }
        }
        // ... and a council claim: only roles that are open, each once; a bounded reason.
        let open: Vec<String> = ["planner", "code-reviewer", "tester"].map(String::from).to_vec();
        let wanted = clawfleet_core::council::parse_claim(text, &open);
        assert!(wanted.iter().all(|w| open.contains(w)) && wanted.len() <= open.len(), "{wanted:?}");
        assert!(clawfleet_core::council::reason(text).chars().count() <= clawfleet_proto::council::MAX_REASON_CHARS);
    }
    // A project's task graph: an accepted one has distinct ids, known dependencies and no
    // cycle, and one integration task once completed; a worker's or a planner's answer is read
    // without panicking, every value bounded.
    if let Ok(req) = serde_json::from_slice::<clawfleet_proto::project::ProjectCreate>(data)
        && let Ok(tasks) = clawfleet_core::project::normalize(req.tasks)
    {
        let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        assert!(ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id)));
        assert!(tasks.iter().all(|t| t.depends_on.iter().all(|d| ids.contains(&d.as_str()))));
        let all = clawfleet_core::project::with_integration(tasks, "p", "main");
        let n = all.len();
        assert!(all.iter().filter(|t| t.kind == clawfleet_proto::project::TaskKind::Integration).count() >= 1);
        let states: Vec<_> = all
            .into_iter()
            .map(|spec| clawfleet_core::project::TaskState { spec, status: clawfleet_proto::project::TaskStatus::Pending, attempts: 0, not_before_ms: None })
            .collect();
        let c = clawfleet_core::project::counts(&states, 0);
        assert_eq!((c.pending as usize, c.ready + c.blocked), (n, c.pending));
        assert!(c.ready >= 1, "an acyclic graph has a task that can start");
        // A resume from any statuses leaves no completed task with a dependency that is not.
        use clawfleet_proto::project::TaskStatus as S;
        let mut states = states;
        for (i, t) in states.iter_mut().enumerate() {
            t.status = [S::Pending, S::Assigned, S::Completed, S::Failed][data.get(i).copied().unwrap_or(0) as usize % 4];
        }
        let opts = clawfleet_core::project::ResumeOptions { retry_failed: data.len() % 2 == 0, reverify_completed: data.len() % 3 != 0 };
        let changes = clawfleet_core::project::resume(&states, opts, &mut |i| clawfleet_core::project::Verified {
            recoverable: data.get(i + 1).is_some_and(|b| b % 2 == 0),
            reason: String::new(),
            tip: None,
        });
        let after = clawfleet_core::project::resumed(&states, &changes);
        let status = |id: &str| after.iter().find(|t| t.spec.task_id == id).map(|t| t.status);
        for t in after.iter().filter(|t| t.status == S::Completed) {
            assert!(t.spec.depends_on.iter().all(|d| status(d) == Some(S::Completed)));
        }
        assert!(after.iter().all(|t| t.status != S::Assigned), "a resume leaves no task assigned");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let o = clawfleet_core::project::judge(text, 1);
        assert!(o.branch.as_ref().is_none_or(|b| b.chars().count() <= clawfleet_proto::project::MAX_ITEM_CHARS));
        let _ = clawfleet_core::project::parse_task_graph(text);
    }
    // A council's request: accepted ones have valid, distinct roles, a core among them, and
    // bounded timeout and brief.
    if let Ok(open) = serde_json::from_slice::<clawfleet_proto::council::CouncilOpen>(data)
        && let Ok(spec) = clawfleet_core::council::validate(open)
    {
        use clawfleet_proto::council::{MAX_BRIEF_CHARS, MAX_ROLES, TIMEOUT_SECONDS};
        assert!(!spec.roles.is_empty() && spec.roles.len() <= MAX_ROLES);
        assert!(spec.roles.iter().all(|r| clawfleet_core::council::is_role(r)));
        assert!(spec.roles.iter().enumerate().all(|(i, r)| !spec.roles[..i].contains(r)));
        assert!(!spec.core.is_empty() && spec.core.iter().all(|c| spec.roles.contains(c)));
        assert!(TIMEOUT_SECONDS.contains(&spec.timeout_seconds) && spec.brief.chars().count() <= MAX_BRIEF_CHARS);
    }
    if let Ok(req) = serde_json::from_slice::<SecretRequest>(data)
        && clawfleet_core::spec::check_secret_value("X", &req.value).is_ok()
    {
        assert!(req.value.len() <= clawfleet_core::spec::MAX_SECRET_BYTES && !req.value.contains('\0'));
    }
    if let Ok(req) = serde_json::from_slice::<LaunchRequest>(data) {
        // A brain's environment is bounded and never clawfleet's own.
        if let Ok(spec) = FleetSpec::from_request(&req, &BrainSpec::Echo) {
            assert!(spec.env.len() + spec.secrets.len() <= clawfleet_core::spec::MAX_BRAIN_VARS);
            for name in spec.env.keys().chain(&spec.secrets) {
                assert!(!name.to_ascii_uppercase().starts_with("CLAWFLEET_") && !name.is_empty() && name.len() <= 128, "{name}");
            }
            assert!(spec.env.values().all(|v| v.len() <= clawfleet_core::spec::MAX_ENV_VALUE_BYTES));
        }
    }
    if let Ok(req) = serde_json::from_slice::<ApplyRequest>(data) {
        let specs: Vec<FleetSpec> = req.fleets.iter().filter_map(|r| FleetSpec::from_request(r, &BrainSpec::Echo).ok()).collect();
        let _ = clawfleet_core::desired::diff(&[], &specs, req.prune);
    }
    if let Ok(req) = serde_json::from_slice::<DeployRequest>(data) {
        let _ = req.version.as_deref().map(clawfleet_core::spec::check_version);
    }
    let _ = serde_json::from_slice::<InjectRequest>(data);
    let _ = serde_json::from_slice::<CommandRequest>(data);
    let _ = serde_json::from_slice::<ScaleRequest>(data);
    if let Ok(req) = serde_json::from_slice::<UpdateRequest>(data) {
        let _ = req.image.as_deref().map(clawfleet_core::spec::check_image);
        let _ = req.version.as_deref().map(clawfleet_core::spec::check_version);
    }

    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(brain) = s.parse::<BrainSpec>() {
        let _ = brain.kind();
        let _ = brain.to_string();
    }
    if let Ok(m) = s.parse::<MaxUnavailable>() {
        assert_eq!(m.to_string().parse::<MaxUnavailable>(), Ok(m), "max_unavailable {s:?} survives being written and read");
        assert!(m.of(0) >= 1 && m.of(10_000) >= 1);
    }
    if let Ok(name) = s.parse::<FleetName>() {
        let _ = name.to_string();
    }
    let _ = clawfleet_bus::FleetKey::from_hex(s);
    if let Some((job, node)) = clawfleet_mailbox::Mailbox::parse_file_name(s) {
        assert_eq!(clawfleet_mailbox::Mailbox::parse_file_name(&clawfleet_mailbox::Mailbox::file_name(&job, node)), Some((job, node)));
    }
    if let Ok(url) = s.parse::<clawfleet_bus::BusUrl>() {
        let _ = url.to_string();
        let _ = url.without_credentials();
    }
});
