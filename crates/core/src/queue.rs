//! The queue's rules: which waiting item goes to which idle agent, and what becomes of an item
//! whose fleet shrank under it. Items go oldest first; an item for one agent waits for that
//! agent, one for any agent takes the lowest idle one, so no agent gets two at once and no
//! item is passed over by a younger one that wants the same agent.

/// The same work from the same source, queued both by a delegation the control plane read
/// from an answer and by a client that read the same answer (codeswarm's web backend routes
/// directives itself), within this many seconds of each other, is one item.
pub const JOIN_WINDOW_SECONDS: u64 = 60;

/// Whom a waiting item is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// The fleet's first idle agent.
    Any,
    /// This agent, when it is idle.
    Agent(u32),
}

impl Wants {
    /// The agent it waits for; none: the fleet's first idle one.
    pub fn agent(self) -> Option<u32> {
        match self {
            Wants::Any => None,
            Wants::Agent(slot) => Some(slot),
        }
    }
}

/// Places waiting items (oldest first) on free agents (idle, holding nothing): each result
/// is `(item index, agent)`, at most one item an agent.
pub fn place(waiting: &[Wants], free: &[u32]) -> Vec<(usize, u32)> {
    let mut free: Vec<u32> = free.to_vec();
    free.sort_unstable();
    free.dedup();
    let mut placed = Vec::new();
    for (i, wants) in waiting.iter().enumerate() {
        if free.is_empty() {
            break;
        }
        let at = match wants {
            Wants::Any => Some(0),
            Wants::Agent(slot) => free.iter().position(|s| s == slot),
        };
        if let Some(at) = at {
            placed.push((i, free.remove(at)));
        }
    }
    placed
}

/// Why a waiting item can never be dispatched, if it cannot: its agent is beyond the fleet's
/// `replicas` (the fleet was scaled down under it).
pub fn stranded(wants: Wants, fleet: &str, replicas: u32) -> Option<String> {
    match wants {
        Wants::Agent(slot) if slot >= replicas => Some(format!("fleet '{fleet}' has no agent {slot} (it has {replicas})")),
        _ => None,
    }
}

/// The items one enqueue makes, for a fleet of `replicas` agents: one for any idle agent, one
/// for each agent named, or one for each of the fleet's agents. An agent the fleet does not
/// have, or the same agent twice, is refused.
pub fn items(agents: Option<&[u32]>, all: bool, replicas: u32, fleet: &str) -> Result<Vec<Wants>, String> {
    match (agents, all) {
        (Some(_), true) => Err("give agents or all, not both".to_owned()),
        (None, true) if replicas == 0 => Err(format!("fleet '{fleet}' has no agents")),
        (None, true) => Ok((0..replicas).map(Wants::Agent).collect()),
        (None, false) => Ok(vec![Wants::Any]),
        (Some([]), false) => Err("agents is empty: name at least one agent, or leave it out for the first idle one".to_owned()),
        (Some(list), false) => {
            if let Some(bad) = list.iter().find(|s| **s >= replicas) {
                return Err(format!("fleet '{fleet}' has no agent {bad} (it has {replicas})"));
            }
            if let Some((_, twice)) = list.iter().enumerate().find(|(i, s)| list[..*i].contains(s)) {
                return Err(format!("agent {twice} is named twice"));
            }
            Ok(list.iter().copied().map(Wants::Agent).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;

    fn wants(s: &str) -> Vec<Wants> {
        s.split_whitespace().map(|w| if w == "*" { Wants::Any } else { Wants::Agent(w.parse().unwrap()) }).collect()
    }

    #[test]
    fn items_go_oldest_first_one_an_agent() {
        let mut table = String::new();
        for (waiting, free) in [
            ("* * *", vec![2, 0]),
            ("1 * 1", vec![0, 1]),
            ("* 1", vec![1]),
            ("3 3 *", vec![3, 4]),
            ("* *", vec![]),
            ("2", vec![0, 1]),
            ("", vec![0]),
            ("* 0 *", vec![0, 0]),
        ] {
            let placed: Vec<String> = place(&wants(waiting), &free).iter().map(|(i, s)| format!("#{i}→{s}")).collect();
            writeln!(table, "{waiting:<8} free {:<8} {}", format!("{free:?}"), placed.join(" ")).unwrap();
        }
        expect![[r#"
            * * *    free [2, 0]   #0→0 #1→2
            1 * 1    free [0, 1]   #0→1 #1→0
            * 1      free [1]      #0→1
            3 3 *    free [3, 4]   #0→3 #2→4
            * *      free []       
            2        free [0, 1]   
                     free [0]      
            * 0 *    free [0, 0]   #0→0
        "#]]
        .assert_eq(&table);
    }

    #[test]
    fn an_enqueue_makes_one_item_an_agent() {
        let mut table = String::new();
        for (agents, all, replicas) in [
            (None, false, 3),
            (None, true, 3),
            (Some(vec![2, 0]), false, 3),
            (Some(vec![3]), false, 3),
            (Some(vec![1, 1]), false, 3),
            (Some(vec![]), false, 3),
            (Some(vec![0]), true, 3),
            (None, true, 0),
        ] {
            let got = match items(agents.as_deref(), all, replicas, "web") {
                Ok(w) => format!("{w:?}"),
                Err(e) => format!("error: {e}"),
            };
            writeln!(table, "{:<14} all={all:<5} of {replicas}: {got}", format!("{agents:?}")).unwrap();
        }
        expect![[r#"
            None           all=false of 3: [Any]
            None           all=true  of 3: [Agent(0), Agent(1), Agent(2)]
            Some([2, 0])   all=false of 3: [Agent(2), Agent(0)]
            Some([3])      all=false of 3: error: fleet 'web' has no agent 3 (it has 3)
            Some([1, 1])   all=false of 3: error: agent 1 is named twice
            Some([])       all=false of 3: error: agents is empty: name at least one agent, or leave it out for the first idle one
            Some([0])      all=true  of 3: error: give agents or all, not both
            None           all=true  of 0: error: fleet 'web' has no agents
        "#]]
        .assert_eq(&table);
        assert_eq!(stranded(Wants::Agent(2), "web", 2).as_deref(), Some("fleet 'web' has no agent 2 (it has 2)"));
        assert_eq!(stranded(Wants::Agent(1), "web", 2), None);
        assert_eq!(stranded(Wants::Any, "web", 0), None);
    }
}
