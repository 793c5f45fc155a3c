//! The removal limit (`--recovery-agent-removal-limit`): an agent is marked
//! unreachable for missing the reregistration deadline only while at most
//! the limit of the known agents are late. More late than that, after a
//! leader change, is a partition or a blip, and nothing is removed until
//! agents come back or the operator retires them.
//!
//! The master judges on the state it has applied when its tick runs; an
//! agent it marks unreachable for silence in the same tick leaves the
//! count before this removal commits. So the agents removed for silence
//! in this term still count as known, as they did when the master judged.

use orrery_events::pb::envelope::Payload;
use std::collections::BTreeSet;

use orrery_events::{pb, AgentId, Cluster};

use super::Oracle;

pub const NAME: &str = "agent removal limit";

#[derive(Debug)]
pub struct RemovalLimit {
    pub limit_pct: f64,
    /// The term the set below is about.
    pub term: u64,
    /// Agents that reregistered in `term` and were then marked unreachable
    /// for another reason (silence).
    pub removed_in_term: BTreeSet<AgentId>,
}

impl RemovalLimit {
    pub fn new(limit_pct: f64) -> Self {
        RemovalLimit {
            limit_pct,
            term: 0,
            removed_in_term: BTreeSet::new(),
        }
    }
}

impl Oracle for RemovalLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, before: &Cluster, env: &pb::Envelope) -> Result<(), String> {
        let Some(Payload::AgentUnreachable(u)) = &env.payload else {
            return Ok(());
        };
        let term = before.term();
        if term != self.term {
            self.term = term;
            self.removed_in_term.clear();
        }
        let away = |a: &&orrery_events::state::Agent| a.state.is_known();
        if !u.reason.contains("did not reregister") {
            if let Some(a) = before.agents.get(u.agent_id.as_str()) {
                if away(&a) && a.reregistered_term == term {
                    self.removed_in_term.insert(a.id.clone());
                }
            }
            return Ok(());
        }
        let removed = self
            .removed_in_term
            .iter()
            .filter(|id| before.agents.get(*id).is_none_or(|a| !away(&a)))
            .count();
        let known = before.agents.values().filter(away).count() + removed;
        let late = before
            .agents
            .values()
            .filter(away)
            .filter(|a| a.reregistered_term < term)
            .count();
        let pct = late as f64 * 100.0 / known.max(1) as f64;
        if pct > self.limit_pct {
            return Err(format!(
                "agent {} marked unreachable at index {} with {late} of {known} agents ({pct:.0}%) late, over the limit {:.0}%",
                u.agent_id, env.index, self.limit_pct
            ));
        }
        Ok(())
    }
}
