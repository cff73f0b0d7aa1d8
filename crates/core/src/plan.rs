//! The reconcile plan: which slots to start and which to stop so that what runs matches
//! what is desired. Level-triggered: computed afresh from the two sets each time.

use std::collections::BTreeSet;

/// What to do to bring the running slots to `0..replicas`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub start: Vec<u32>,
    pub stop: Vec<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

/// Plans for `replicas` desired agents given the slots that run (or are being started).
pub fn plan(replicas: u32, running: impl IntoIterator<Item = u32>) -> Plan {
    let running: BTreeSet<u32> = running.into_iter().collect();
    Plan { start: (0..replicas).filter(|s| !running.contains(s)).collect(), stop: running.into_iter().filter(|&s| s >= replicas).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan(3, []), Plan { start: vec![0, 1, 2], stop: vec![] });
        assert_eq!(plan(3, [0, 2]), Plan { start: vec![1], stop: vec![] });
        assert_eq!(plan(1, [0, 1, 5]), Plan { start: vec![], stop: vec![1, 5] });
        assert!(plan(2, [1, 0]).is_empty());
        assert_eq!(plan(0, [0]), Plan { start: vec![], stop: vec![0] });
    }
}
