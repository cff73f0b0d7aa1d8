//! Who leads a fleet (clawbucket's MANAGER): one agent at a time, chosen by rule, with an epoch
//! (a fencing token) that grows on every change and that every leader action carries.
//!
//! The rule, applied on every liveness tick: the leader stays while it is healthy (a leader that
//! comes back from a partition has been replaced, and stays replaced); when there is none, or it
//! is no longer healthy, or the operator's override names another healthy agent, the override
//! (if healthy) leads, else the lowest healthy slot. No healthy agent: no leader, and the next
//! one to lead gets a new epoch. The control plane refuses an action whose epoch is not the
//! current one ([`Leadership::fence`]), so a leader that lost its place cannot act, whatever it
//! believes.

/// A fleet's leader: its slot and the epoch it leads in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub slot: u32,
    pub epoch: u64,
}

/// What the control plane keeps of a fleet's leadership.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Option<Leader>,
    /// The highest epoch ever given (a new leader gets the next), kept when there is none.
    pub epoch: u64,
    /// The slot the operator wants to lead, while it is healthy.
    pub preferred: Option<u32>,
}

/// Why a leader action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    #[error("the fleet has no leader now")]
    NoLeader,
    #[error("agent {slot} is not the leader (agent {leader} is, in epoch {epoch})")]
    NotLeader { slot: u32, leader: u32, epoch: u64 },
    #[error("epoch {got} is stale: agent {leader} leads in epoch {epoch}")]
    Stale { got: u64, leader: u32, epoch: u64 },
}

impl Leadership {
    /// The leadership after a tick where `healthy` (ascending, the fleet's wanted slots only) are
    /// the healthy agents; `Some` when the leader changed (a new slot, a new epoch, or none).
    pub fn elect(&mut self, healthy: &[u32]) -> Option<Option<Leader>> {
        let is_healthy = |s: u32| healthy.binary_search(&s).is_ok();
        let wanted = match (self.preferred.filter(|p| is_healthy(*p)), self.leader) {
            (Some(p), _) => Some(p),
            (None, Some(l)) if is_healthy(l.slot) => Some(l.slot),
            (None, _) => healthy.first().copied(),
        };
        if wanted == self.leader.map(|l| l.slot) {
            return None;
        }
        self.leader = wanted.map(|slot| {
            self.epoch += 1;
            Leader { slot, epoch: self.epoch }
        });
        Some(self.leader)
    }

    /// Accepts an action of agent `slot` in `epoch` only from the current leader, in its epoch.
    pub fn fence(&self, slot: u32, epoch: u64) -> Result<Leader, Fenced> {
        let leader = self.leader.ok_or(Fenced::NoLeader)?;
        if slot != leader.slot {
            return Err(Fenced::NotLeader { slot, leader: leader.slot, epoch: leader.epoch });
        }
        if epoch != leader.epoch {
            return Err(Fenced::Stale { got: epoch, leader: leader.slot, epoch: leader.epoch });
        }
        Ok(leader)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::{Expect, expect};

    use super::*;

    /// Runs ticks (`healthy` slots, and the override set before it) and prints the leader after each.
    fn ticks(steps: &[(&[u32], Option<Option<u32>>)], expected: Expect) {
        let mut l = Leadership::default();
        let mut out = String::new();
        for (healthy, preferred) in steps {
            if let Some(p) = preferred {
                l.preferred = *p;
            }
            let changed = l.elect(healthy).is_some();
            let now = l.leader.map_or("none".to_owned(), |l| format!("{}@{}", l.slot, l.epoch));
            writeln!(out, "{healthy:?} -> {now}{}", if changed { " (changed)" } else { "" }).unwrap();
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn the_lowest_healthy_leads_and_stays_while_healthy() {
        ticks(
            &[(&[], None), (&[1, 2], None), (&[0, 1, 2], None), (&[0, 2], None), (&[0], None), (&[], None), (&[2], None)],
            expect![[r#"
                [] -> none
                [1, 2] -> 1@1 (changed)
                [0, 1, 2] -> 1@1
                [0, 2] -> 0@2 (changed)
                [0] -> 0@2
                [] -> none (changed)
                [2] -> 2@3 (changed)
            "#]],
        );
    }

    #[test]
    fn an_override_leads_while_healthy() {
        ticks(
            &[
                (&[0, 1, 2], None),
                (&[0, 1, 2], Some(Some(2))),
                (&[0, 1], None),
                (&[0, 1, 2], None),
                (&[0, 1, 2], Some(None)),
                (&[1, 2], None),
            ],
            expect![[r#"
                [0, 1, 2] -> 0@1 (changed)
                [0, 1, 2] -> 2@2 (changed)
                [0, 1] -> 0@3 (changed)
                [0, 1, 2] -> 2@4 (changed)
                [0, 1, 2] -> 2@4
                [1, 2] -> 2@4
            "#]],
        );
    }

    #[test]
    fn only_the_leader_in_its_epoch_may_act() {
        let mut l = Leadership::default();
        assert_eq!(l.fence(0, 0), Err(Fenced::NoLeader));
        l.elect(&[0, 1]);
        assert_eq!(l.fence(0, 1), Ok(Leader { slot: 0, epoch: 1 }));
        assert_eq!(l.fence(1, 1).unwrap_err().to_string(), "agent 1 is not the leader (agent 0 is, in epoch 1)");
        // Agent 0 is lost, then comes back: agent 1 leads in epoch 2, and 0's epoch is stale.
        l.elect(&[1]);
        l.elect(&[0, 1]);
        assert_eq!(l.leader, Some(Leader { slot: 1, epoch: 2 }));
        assert_eq!(l.fence(0, 1).unwrap_err().to_string(), "agent 0 is not the leader (agent 1 is, in epoch 2)");
        assert_eq!(l.fence(1, 1).unwrap_err().to_string(), "epoch 1 is stale: agent 1 leads in epoch 2");
    }
}
