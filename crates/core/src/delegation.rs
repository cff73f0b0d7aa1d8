//! Delegation (codeswarm's inter-swarm directives): an agent hands work to another fleet by
//! starting a line of its answer with `/swarm[FLEET]/idle` (or `/first-idle`, `/all`,
//! `/node[0,2-4]`, `/agent[…]`, each with an optional `/reply`), or to its own fleet with `/all`
//! or `/node[…]`; the text up to the next directive is the prompt. These are the rules: how an
//! answer is read (as the reference's web backend reads it), and whether a delegation may go
//! (policy, depth, loops, rate). The control plane queues what may go.

/// At most this many directives are taken from one answer; the rest are refused.
pub const MAX_DIRECTIVES: usize = 8;
/// At most this many nodes in one directive's node list.
pub const MAX_NODES: usize = 256;
/// How many hops a piece of work may travel from the fleet it started in.
pub const MAX_DEPTH: usize = 3;
/// How many delegations one fleet may make in [`RATE_WINDOW_SECONDS`].
pub const MAX_PER_WINDOW: usize = 30;
pub const RATE_WINDOW_SECONDS: u64 = 60;

/// Whom a directive addresses in its fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// The fleet's first idle agent (`idle`, `first-idle`).
    Idle,
    All,
    List(Vec<u32>),
}

/// One directive of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The fleet it goes to; none: the answering agent's own (`/all`, `/node[…]`).
    pub fleet: Option<String>,
    pub nodes: Nodes,
    /// Whether the answer is to be sent back to the delegating agent.
    pub reply: bool,
    pub prompt: String,
}

/// A directive line that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub line: String,
    pub reason: String,
}

/// A directive's address, as read from its line (or why it cannot be read).
type Address = Result<(Option<String>, Nodes, bool), String>;

/// The directives of an answer, in order (at most [`MAX_DIRECTIVES`]; one with an empty prompt
/// is skipped, as the reference skips it), and the directive lines it could not read.
pub fn parse(answer: &str) -> (Vec<Directive>, Vec<Unreadable>) {
    // Each directive line: its address, the line (for a refusal), and its prompt's lines.
    let mut found: Vec<(Address, String, Vec<String>)> = Vec::new();
    for line in answer.lines() {
        match head(line) {
            Some((directive, rest)) => found.push((directive, line.chars().take(80).collect(), vec![rest.to_owned()])),
            None => {
                if let Some((_, _, body)) = found.last_mut() {
                    body.push(line.to_owned());
                }
            }
        }
    }
    let (mut directives, mut unreadable) = (Vec::new(), Vec::new());
    for (read, line, body) in found {
        let prompt = body.join("\n").trim().to_owned();
        match read {
            Err(reason) => unreadable.push(Unreadable { line, reason }),
            Ok(_) if prompt.is_empty() => {}
            Ok(_) if directives.len() == MAX_DIRECTIVES => {
                unreadable.push(Unreadable { line, reason: format!("more than {MAX_DIRECTIVES} directives in one answer") })
            }
            Ok((fleet, nodes, reply)) => directives.push(Directive { fleet, nodes, reply, prompt }),
        }
    }
    (directives, unreadable)
}

/// A line's directive and what follows it on the line, if the line starts with one (after an
/// optional list bullet, `- `, `* `, `+ `, `1. `, or a quote, `> `).
fn head(line: &str) -> Option<(Address, &str)> {
    let s = line.trim_start();
    let s = strip_bullet(s).unwrap_or(s);
    let s = s.strip_prefix('/')?;
    let (word, rest) = s.split_at(s.find(char::is_whitespace).unwrap_or(s.len()));
    let read = if let Some(swarm) = word.strip_prefix("swarm[") {
        let (fleet, mode) = swarm.split_once("]/")?;
        if fleet.is_empty() {
            return None;
        }
        let (mode, reply) = match mode.strip_suffix("/reply") {
            Some(m) => (m, true),
            None => (mode, false),
        };
        let nodes = match mode {
            "idle" | "first-idle" => Ok(Nodes::Idle),
            "all" => Ok(Nodes::All),
            m => node_list(m)?,
        };
        nodes.map(|n| (Some(fleet.to_owned()), n, reply))
    } else {
        let nodes = match word {
            "all" => Ok(Nodes::All),
            w => node_list(w)?,
        };
        nodes.map(|n| (None, n, false))
    };
    Some((read, rest.trim_start()))
}

fn strip_bullet(s: &str) -> Option<&str> {
    let rest = if let Some(r) = s.strip_prefix(['-', '*', '+', '>']) {
        r
    } else {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        s[digits..].strip_prefix('.')?
    };
    let trimmed = rest.trim_start();
    (trimmed.len() < rest.len()).then_some(trimmed)
}

/// `node[0,2-4]` or `agent[…]`: `None` when it is not that form at all, else the list or why
/// it cannot be read.
fn node_list(word: &str) -> Option<Result<Nodes, String>> {
    let spec = word.strip_prefix("node[").or_else(|| word.strip_prefix("agent["))?.strip_suffix(']')?;
    if spec.is_empty() {
        return None;
    }
    let mut nodes: Vec<u32> = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.trim().parse::<u32>().ok().zip(b.trim().parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|n| (n, n)),
        };
        let Some((a, b)) = range.filter(|(a, b)| a <= b) else {
            return Some(Err(format!("'{}' is not a node number or a range a-b", part.chars().take(20).collect::<String>())));
        };
        if (b - a) as usize >= MAX_NODES || nodes.len() + (b - a) as usize >= MAX_NODES {
            return Some(Err(format!("more than {MAX_NODES} nodes")));
        }
        nodes.extend((a..=b).filter(|n| !nodes.contains(n)).collect::<Vec<_>>());
    }
    Some(Ok(Nodes::List(nodes)))
}

/// Why a delegation may not go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The agent policy does not let the source fleet inject the target.
    #[error("{0}")]
    Policy(String),
    #[error("a loop: '{target}' is already on the way this work came ({})", .chain.join(" → "))]
    Loop { target: String, chain: Vec<String> },
    #[error("too deep: this work came through {} fleets ({}), the most is {MAX_DEPTH}", .chain.len(), .chain.join(" → "))]
    TooDeep { chain: Vec<String> },
    #[error("'{source_fleet}' delegated {made} times in the last {RATE_WINDOW_SECONDS} s, the most it may")]
    Rate { source_fleet: String, made: usize },
}

/// Whether work that came through `chain` (the fleets it passed, oldest first, ending with the
/// delegating fleet) may go on to `target`: the policy's answer first, then no fleet twice on
/// the way (a delegation to one's own fleet is not a loop: it goes no further), at most
/// [`MAX_DEPTH`] hops, and at most [`MAX_PER_WINDOW`] delegations of the source in the window.
pub fn check(chain: &[String], target: &str, policy: Result<(), String>, recent: usize) -> Result<(), Refused> {
    policy.map_err(Refused::Policy)?;
    let source = chain.last().map_or("", String::as_str);
    if target != source && chain.iter().any(|f| f == target) {
        return Err(Refused::Loop { target: target.to_owned(), chain: chain.to_vec() });
    }
    if chain.len() > MAX_DEPTH {
        return Err(Refused::TooDeep { chain: chain.to_vec() });
    }
    if recent >= MAX_PER_WINDOW {
        return Err(Refused::Rate { source_fleet: source.to_owned(), made: recent });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;

    #[test]
    fn directives_are_read_as_the_reference_reads_them() {
        let mut table = String::new();
        for answer in [
            "/swarm[crew]/idle summarise the log",
            "Plan:\n- /swarm[crew]/node[0,2-3]/reply check\nthe tests\n> /swarm[qa]/all run it\n",
            "/all everyone\n/node[1] you",
            "/swarm[crew]/first-idle   \n\n",
            "see /swarm[crew]/idle in the docs",
            "/swarm[crew]/node[x] do",
            "/swarm[crew]/node[5-2] do",
            "/swarm[crew]/node[0-999] do",
            "/swarm[]/idle no fleet",
            "/swarm[crew]/sideways do",
            "/etc/passwd is a file",
            "1. /swarm[a]/idle one\n2) /swarm[b]/idle two",
            "/swarm[crew]/idle\nthe prompt on the next line",
        ] {
            let (directives, unreadable) = parse(answer);
            let got: Vec<String> = directives
                .iter()
                .map(|d| {
                    format!("{}:{:?}{} {:?}", d.fleet.as_deref().unwrap_or("(own)"), d.nodes, if d.reply { "+reply" } else { "" }, d.prompt)
                })
                .chain(unreadable.iter().map(|u| format!("unreadable {:?}: {}", u.line, u.reason)))
                .collect();
            writeln!(table, "{:<48} {}", format!("{answer:?}").chars().take(48).collect::<String>(), got.join(" | ")).unwrap();
        }
        expect![[r#"
            "/swarm[crew]/idle summarise the log"            crew:Idle "summarise the log"
            "Plan:\n- /swarm[crew]/node[0,2-3]/reply check\n crew:List([0, 2, 3])+reply "check\nthe tests" | qa:All "run it"
            "/all everyone\n/node[1] you"                    (own):All "everyone" | (own):List([1]) "you"
            "/swarm[crew]/first-idle   \n\n"                 
            "see /swarm[crew]/idle in the docs"              
            "/swarm[crew]/node[x] do"                        unreadable "/swarm[crew]/node[x] do": 'x' is not a node number or a range a-b
            "/swarm[crew]/node[5-2] do"                      unreadable "/swarm[crew]/node[5-2] do": '5-2' is not a node number or a range a-b
            "/swarm[crew]/node[0-999] do"                    unreadable "/swarm[crew]/node[0-999] do": more than 256 nodes
            "/swarm[]/idle no fleet"                         
            "/swarm[crew]/sideways do"                       
            "/etc/passwd is a file"                          
            "1. /swarm[a]/idle one\n2) /swarm[b]/idle two"   a:Idle "one\n2) /swarm[b]/idle two"
            "/swarm[crew]/idle\nthe prompt on the next line" crew:Idle "the prompt on the next line"
        "#]].assert_eq(&table);
        let many: String = (0..10).map(|i| format!("/swarm[f{i}]/idle go\n")).collect();
        let (directives, unreadable) = parse(&many);
        assert_eq!((directives.len(), unreadable.len()), (MAX_DIRECTIVES, 2));
    }

    #[test]
    fn a_delegation_goes_only_where_policy_depth_loops_and_rate_allow() {
        let chain = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let mut table = String::new();
        for (from, target, policy, recent) in [
            ("ops", "crew", Ok(()), 0),
            ("ops", "crew", Err("no policy lets the agents of 'ops' inject 'crew'".to_owned()), 0),
            ("crew ops", "crew", Ok(()), 0),
            ("ops", "ops", Ok(()), 0),
            ("a b c", "d", Ok(()), 0),
            ("a b c d", "e", Ok(()), 0),
            ("ops", "crew", Ok(()), MAX_PER_WINDOW),
        ] {
            let got = match check(&chain(from), target, policy, recent) {
                Ok(()) => "goes".to_owned(),
                Err(e) => format!("refused: {e}"),
            };
            writeln!(table, "{from:<8} → {target:<5} {got}").unwrap();
        }
        expect![[r#"
            ops      → crew  goes
            ops      → crew  refused: no policy lets the agents of 'ops' inject 'crew'
            crew ops → crew  refused: a loop: 'crew' is already on the way this work came (crew → ops)
            ops      → ops   goes
            a b c    → d     goes
            a b c d  → e     refused: too deep: this work came through 4 fleets (a → b → c → d), the most is 3
            ops      → crew  refused: 'ops' delegated 30 times in the last 60 s, the most it may
        "#]]
        .assert_eq(&table);
    }
}
