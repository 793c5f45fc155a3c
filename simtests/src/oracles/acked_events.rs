//! No acknowledged event is lost: an entry a leader reported committed
//! stays at its index, with its term and content, in every later leader's
//! log and in every replica that applies that index.
//!
//! Checked where it can break: when a replica wins an election (its log
//! must hold the whole committed prefix), when a follower would overwrite
//! a committed entry, when a leader reports an index committed again (it
//! must be the same entry) — see `raft.rs` and `Sim::committed` — and at
//! the end, on every replica's log.

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "no acknowledged event lost";

#[derive(Debug)]
pub struct AckedEvents;

impl Oracle for AckedEvents {
    fn name(&self) -> &'static str {
        NAME
    }

    fn at_end(&mut self, sim: &Sim) -> Result<(), String> {
        let truth = &sim.truth.log;
        for r in &sim.masters {
            let n = r.log.len().min(truth.len()).min(r.commit as usize);
            if let Some(i) = (0..n).find(|&i| r.log[i] != truth[i]) {
                return Err(format!(
                    "master {}'s entry {} differs from the committed one",
                    r.id,
                    i + 1
                ));
            }
        }
        Ok(())
    }
}
