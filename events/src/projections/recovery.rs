//! What a new leader must reconcile after a failover (DESIGN.md: "effects
//! are idempotent and can be derived again from state"). The actors read
//! these lists when they become leader and re-drive each item.

use crate::ids::{AgentId, TaskKey};
use crate::state::{Cluster, TaskState};

/// Agents known to the log that have not reregistered with the current
/// leader; they are marked unreachable if the reregistration timeout passes.
pub fn awaiting_reregistration(c: &Cluster) -> Vec<AgentId> {
    let term = c.term();
    c.agents
        .values()
        .filter(|a| a.state.is_known() && a.reregistered_term < term)
        .map(|a| a.id.clone())
        .collect()
}

/// Agents known to the cluster (see [`AgentState::is_known`]): what the
/// removal limit is a fraction of.
pub fn known_agents(c: &Cluster) -> usize {
    c.agents.values().filter(|a| a.state.is_known()).count()
}

/// The fraction of recoverable agents that are back, in thousandths
/// (1000 when there is none to wait for). An agent is back once it
/// registered or reregistered in this term, even if it disconnected since:
/// the allocation pause waits for the agents expected after a leader change
/// (Mesos' rule), not for every agent to be connected at once — a normal
/// disconnect early in a term must not stop offers to everyone else.
pub fn reregistered_milli(c: &Cluster) -> u64 {
    let term = c.term();
    let (mut back, mut total) = (0u64, 0u64);
    for a in c.agents.values() {
        if a.state.is_known() {
            total += 1;
            if a.reregistered_term == term {
                back += 1;
            }
        }
    }
    (back * 1000).checked_div(total).unwrap_or(1000)
}

/// Launches the agent has not confirmed yet (still STAGING): the leader
/// re-sends them; agents ignore a second launch of a live task id.
pub fn unconfirmed_launches(c: &Cluster) -> Vec<TaskKey> {
    c.tasks
        .values()
        .filter(|t| t.state == TaskState::TaskStaging && !t.kill_requested)
        .map(|t| t.key.clone())
        .collect()
}

/// Status updates the framework has not acknowledged: re-sent until it does.
pub fn unacknowledged_updates(c: &Cluster) -> Vec<TaskKey> {
    c.tasks
        .values()
        .filter(|t| !t.acknowledged && !t.status_uuid.is_empty())
        .map(|t| t.key.clone())
        .collect()
}

/// Kills requested and not yet confirmed by a terminal update: re-sent.
pub fn pending_kills(c: &Cluster) -> Vec<TaskKey> {
    c.tasks
        .values()
        .filter(|t| t.kill_requested && !t.is_terminal())
        .map(|t| t.key.clone())
        .collect()
}
