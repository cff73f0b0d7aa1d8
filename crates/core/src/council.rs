//! The rules of a council (seed 002), pure: which councils may be opened, who gets a role, when
//! a council is active or has failed, and how an agent's answer becomes a claim.
//!
//! The control plane broadcasts the opportunity; each agent answers with the roles it would
//! take, most wanted first (its brain's choice, or its declared capabilities). Claims are taken
//! in the order they reach the store, and an agent gets the first role of its list still free:
//! the first claim of a role wins, and an agent holds at most one. The council is active once
//! every core role is held, and fails at its deadline naming the core roles no one took. Before
//! it is active, a member that is lost frees its role for the others; once active, a member
//! keeps its role while it is away (its injections wait for it like any other).

use clawfleet_proto::council::{
    CouncilOpen, CouncilState, DEFAULT_TIMEOUT_SECONDS, MAX_BRIEF_CHARS, MAX_REASON_CHARS, MAX_ROLE_CHARS, MAX_ROLES, Seat, TIMEOUT_SECONDS,
};

/// A council the operator may open: its roles, in order, the core ones, and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub roles: Vec<String>,
    pub core: Vec<String>,
    pub timeout_seconds: u32,
    pub brief: String,
}

/// What is wrong with a council's request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("a council needs at least one role")]
    NoRoles,
    #[error("a council has at most {MAX_ROLES} roles, got {0}")]
    TooManyRoles(usize),
    #[error("role '{0}' must be 1 to {MAX_ROLE_CHARS} characters of a-z, 0-9, - and _, starting with a letter")]
    BadRole(String),
    #[error("role '{0}' is named twice")]
    DuplicateRole(String),
    #[error("core role '{0}' is not one of the council's roles")]
    CoreNotARole(String),
    #[error("timeout_seconds must be {min} to {max}, got {0}", min = TIMEOUT_SECONDS.start(), max = TIMEOUT_SECONDS.end())]
    Timeout(u32),
    #[error("a brief has at most {MAX_BRIEF_CHARS} characters, got {0}")]
    BriefTooLong(usize),
}

/// Whether `name` may name a role.
pub fn is_role(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= MAX_ROLE_CHARS
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Checks a request to open a council; a role named for `core` must be one of its roles (no
/// core roles named: every role is core).
pub fn validate(open: CouncilOpen) -> Result<Spec, SpecError> {
    if open.roles.is_empty() {
        return Err(SpecError::NoRoles);
    }
    if open.roles.len() > MAX_ROLES {
        return Err(SpecError::TooManyRoles(open.roles.len()));
    }
    for (i, role) in open.roles.iter().enumerate() {
        if !is_role(role) {
            return Err(SpecError::BadRole(bounded(role)));
        }
        if open.roles[..i].contains(role) {
            return Err(SpecError::DuplicateRole(role.clone()));
        }
    }
    let mut core = Vec::new();
    for role in open.core {
        if !open.roles.contains(&role) {
            return Err(SpecError::CoreNotARole(bounded(&role)));
        }
        if !core.contains(&role) {
            core.push(role);
        }
    }
    if core.is_empty() {
        core = open.roles.clone();
    }
    let timeout_seconds = open.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !TIMEOUT_SECONDS.contains(&timeout_seconds) {
        return Err(SpecError::Timeout(timeout_seconds));
    }
    let n = open.brief.chars().count();
    if n > MAX_BRIEF_CHARS {
        return Err(SpecError::BriefTooLong(n));
    }
    Ok(Spec { roles: open.roles, core, timeout_seconds, brief: open.brief })
}

/// A name quoted back in an error, cut to a readable length.
fn bounded(s: &str) -> String {
    s.chars().take(MAX_ROLE_CHARS + 8).collect()
}

/// The role a claim got, and whether it made the council active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    pub role: String,
    pub activates: bool,
}

/// Why a claim got no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefused {
    #[error("the council is {0}")]
    Over(CouncilState),
    #[error("agent {slot} holds role '{role}' already (an agent holds one role)")]
    Holds { slot: u32, role: String },
    #[error("it claimed no role")]
    Declined,
    #[error("the council has no role {0}")]
    Unknown(String),
    #[error("every role it claimed is taken: {0}")]
    Taken(String),
}

/// A council's state and seats, as the store keeps them, to apply the rules to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Council {
    pub state: CouncilState,
    pub seats: Vec<Seat>,
}

impl Council {
    /// A council just opened: every seat empty.
    pub fn open(spec: &Spec) -> Council {
        let seats = spec
            .roles
            .iter()
            .map(|role| Seat { role: role.clone(), core: spec.core.contains(role), slot: None, reason: None, since: None })
            .collect();
        Council { state: CouncilState::Open, seats }
    }

    /// The roles no one holds, in the council's order.
    pub fn open_roles(&self) -> Vec<&str> {
        self.seats.iter().filter(|s| s.slot.is_none()).map(|s| s.role.as_str()).collect()
    }

    /// The role `slot` holds, if any.
    pub fn role_of(&self, slot: u32) -> Option<&str> {
        self.seats.iter().find(|s| s.slot == Some(slot)).map(|s| s.role.as_str())
    }

    /// The slot that holds `role`, if any.
    pub fn holder(&self, role: &str) -> Option<u32> {
        self.seats.iter().find(|s| s.role == role).and_then(|s| s.slot)
    }

    /// Judges a claim by `slot` for `wanted` (most wanted first): the first wanted role that is
    /// free. Claims are taken while the council is open, and for its roles still free while it
    /// is active.
    pub fn claim(&self, slot: u32, wanted: &[String]) -> Result<Award, ClaimRefused> {
        if self.state.is_over() {
            return Err(ClaimRefused::Over(self.state));
        }
        if let Some(role) = self.role_of(slot) {
            return Err(ClaimRefused::Holds { slot, role: role.to_owned() });
        }
        if wanted.is_empty() {
            return Err(ClaimRefused::Declined);
        }
        let mut taken = Vec::new();
        for role in wanted {
            match self.seats.iter().find(|s| &s.role == role) {
                Some(Seat { slot: None, .. }) => {
                    let activates =
                        self.state == CouncilState::Open && self.seats.iter().all(|s| !s.core || s.slot.is_some() || &s.role == role);
                    return Ok(Award { role: role.clone(), activates });
                }
                Some(Seat { slot: Some(by), .. }) => taken.push(format!("'{role}' by agent {by}")),
                None => {}
            }
        }
        if taken.is_empty() {
            let names: Vec<String> = wanted.iter().take(4).map(|r| format!("'{}'", bounded(r))).collect();
            return Err(ClaimRefused::Unknown(names.join(" or ")));
        }
        Err(ClaimRefused::Taken(taken.join(", ")))
    }

    /// The role `slot` gives back because it was lost: only while the council is open (an
    /// active council keeps its members while they are away).
    pub fn freed_by_loss(&self, slot: u32) -> Option<&str> {
        (self.state == CouncilState::Open).then(|| self.role_of(slot)).flatten()
    }

    /// At its deadline: the core roles no one holds if it is still open (it has failed),
    /// `None` if it is active or over.
    pub fn expire(&self) -> Option<Vec<String>> {
        (self.state == CouncilState::Open)
            .then(|| self.seats.iter().filter(|s| s.core && s.slot.is_none()).map(|s| s.role.clone()).collect())
    }
}

/// What an agent's brain is asked when a council opens.
pub fn prompt(brief: &str, roles: &[String]) -> String {
    let about = if brief.trim().is_empty() { String::new() } else { format!(" It is for: {}", brief.trim()) };
    format!(
        "A council is forming.{about} Its open roles are: {}. Which would you take? Name the roles you \
         want, most wanted first, and say in one sentence why; or say none.",
        roles.join(", ")
    )
}

/// The roles an answer names, among `open`, in the order it first names them (whole words,
/// in any case); none when it names none.
pub fn parse_claim(answer: &str, open: &[String]) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::new();
    let lower = answer.to_ascii_lowercase();
    for word in lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        let word = word.trim_matches(|c| c == '-' || c == '_');
        if open.iter().any(|r| r == word) && !wanted.iter().any(|w| w == word) {
            wanted.push(word.to_owned());
        }
    }
    wanted
}

/// The roles an agent declares it can take, among `open`, in its own order.
pub fn from_capabilities(capabilities: &[String], open: &[String]) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::new();
    for c in capabilities {
        if open.contains(c) && !wanted.contains(c) {
            wanted.push(c.clone());
        }
    }
    wanted
}

/// The reason given with a claim: the answer on one line, cut to its bound.
pub fn reason(answer: &str) -> String {
    answer.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(MAX_REASON_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;

    fn spec(roles: &[&str], core: &[&str]) -> Spec {
        let open = CouncilOpen {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            core: core.iter().map(|r| r.to_string()).collect(),
            timeout_seconds: None,
            brief: String::new(),
        };
        validate(open).unwrap()
    }

    fn list(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn requests_are_checked() {
        let mut out = String::new();
        // Roles, core roles, timeout, and the brief's length.
        type Case<'a> = (&'a [&'a str], &'a [&'a str], Option<u32>, usize);
        let cases: &[Case<'_>] = &[
            (&["planner", "coder"], &[], None, 0),
            (&["planner", "coder"], &["coder", "coder"], Some(3600), 0),
            (&[], &[], None, 0),
            (&["a"; 17], &[], None, 0),
            (&["Planner"], &[], None, 0),
            (&["9lives"], &[], None, 0),
            (&["planner", "planner"], &[], None, 0),
            (&["planner"], &["boss"], None, 0),
            (&["planner"], &[], Some(0), 0),
            (&["planner"], &[], Some(3601), 0),
            (&["planner"], &[], None, 2001),
        ];
        for (roles, core, timeout, brief) in cases {
            let open = CouncilOpen { roles: list(roles), core: list(core), timeout_seconds: *timeout, brief: "b".repeat(*brief) };
            match validate(open) {
                Ok(s) => writeln!(out, "{roles:?} {core:?} -> core {:?}, {} s", s.core, s.timeout_seconds).unwrap(),
                Err(e) => writeln!(out, "{roles:?} {core:?} -> {e}").unwrap(),
            }
        }
        expect![[r#"
            ["planner", "coder"] [] -> core ["planner", "coder"], 60 s
            ["planner", "coder"] ["coder", "coder"] -> core ["coder"], 3600 s
            [] [] -> a council needs at least one role
            ["a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a"] [] -> a council has at most 16 roles, got 17
            ["Planner"] [] -> role 'Planner' must be 1 to 32 characters of a-z, 0-9, - and _, starting with a letter
            ["9lives"] [] -> role '9lives' must be 1 to 32 characters of a-z, 0-9, - and _, starting with a letter
            ["planner", "planner"] [] -> role 'planner' is named twice
            ["planner"] ["boss"] -> core role 'boss' is not one of the council's roles
            ["planner"] [] -> timeout_seconds must be 1 to 3600, got 0
            ["planner"] [] -> timeout_seconds must be 1 to 3600, got 3601
            ["planner"] [] -> a brief has at most 2000 characters, got 2001
        "#]]
        .assert_eq(&out);
    }

    /// Claims in the order they arrive: each agent gets the first free role it wants.
    #[test]
    fn first_claim_wins_and_an_agent_holds_one_role() {
        let mut council = Council::open(&spec(&["planner", "coder", "reviewer"], &["planner", "coder"]));
        let mut out = String::new();
        let claims: &[(u32, &[&str])] = &[
            (0, &[]),
            (0, &["boss"]),
            (0, &["planner", "coder"]),
            (1, &["planner", "coder"]),
            (1, &["reviewer"]),
            (2, &["planner", "coder"]),
            (3, &["reviewer"]),
            (3, &["coder"]),
            (4, &["planner"]),
        ];
        for (slot, wanted) in claims {
            match council.claim(*slot, &list(wanted)) {
                Ok(award) => {
                    writeln!(out, "{slot} {wanted:?} -> {}{}", award.role, if award.activates { " (active)" } else { "" }).unwrap();
                    let seat = council.seats.iter_mut().find(|s| s.role == award.role).unwrap();
                    seat.slot = Some(*slot);
                    if award.activates {
                        council.state = CouncilState::Active;
                    }
                }
                Err(e) => writeln!(out, "{slot} {wanted:?} -> refused: {e}").unwrap(),
            }
        }
        writeln!(out, "open roles: {:?}; coder held by {:?}", council.open_roles(), council.holder("coder")).unwrap();
        council.state = CouncilState::Closed;
        writeln!(out, "closed: {}", council.claim(9, &list(&["reviewer"])).unwrap_err()).unwrap();
        expect![[r#"
            0 [] -> refused: it claimed no role
            0 ["boss"] -> refused: the council has no role 'boss'
            0 ["planner", "coder"] -> planner
            1 ["planner", "coder"] -> coder (active)
            1 ["reviewer"] -> refused: agent 1 holds role 'coder' already (an agent holds one role)
            2 ["planner", "coder"] -> refused: every role it claimed is taken: 'planner' by agent 0, 'coder' by agent 1
            3 ["reviewer"] -> reviewer
            3 ["coder"] -> refused: agent 3 holds role 'reviewer' already (an agent holds one role)
            4 ["planner"] -> refused: every role it claimed is taken: 'planner' by agent 0
            open roles: []; coder held by Some(1)
            closed: the council is closed
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn a_lost_member_frees_its_role_only_before_activation_and_the_deadline_names_what_is_missing() {
        let mut council = Council::open(&spec(&["planner", "coder", "reviewer"], &["planner", "coder"]));
        council.seats[0].slot = Some(4);
        council.seats[2].slot = Some(5);
        assert_eq!(council.freed_by_loss(4), Some("planner"));
        assert_eq!(council.freed_by_loss(7), None);
        assert_eq!(council.expire(), Some(list(&["coder"])), "the core role no one took (reviewer is held, and not core)");
        council.seats[0].slot = None;
        assert_eq!(council.expire(), Some(list(&["planner", "coder"])));
        council.seats[0].slot = Some(4);
        council.seats[1].slot = Some(6);
        council.state = CouncilState::Active;
        assert_eq!(council.freed_by_loss(4), None, "an active council keeps its members");
        assert_eq!(council.expire(), None, "an active council does not fail");
    }

    #[test]
    fn answers_become_claims() {
        let open = list(&["planner", "code-reviewer", "tester"]);
        let cases = [
            "Tester, then planner: I like tests.",
            "I would take code-reviewer; planner is fine too. planner!",
            "none",
            "I'm a plannerish agent",
            // The echo brain writes the prompt back: every role, in the council's order.
            &prompt("ship it", &open),
        ];
        let mut out = String::new();
        for answer in cases {
            writeln!(out, "{:?}", parse_claim(answer, &open)).unwrap();
        }
        writeln!(out, "{:?}", from_capabilities(&list(&["tester", "cook", "tester", "planner"]), &open)).unwrap();
        expect![[r#"
            ["tester", "planner"]
            ["code-reviewer", "planner"]
            []
            []
            ["planner", "code-reviewer", "tester"]
            ["tester", "planner"]
        "#]]
        .assert_eq(&out);
        assert_eq!(reason("  I   plan\n well "), "I plan well");
        assert_eq!(reason(&"x".repeat(500)).len(), MAX_REASON_CHARS);
    }
}
