//! The offer view: free resources per agent, which agents may be offered at
//! all, which framework may be offered which agent, and the rescinds that a
//! change (agent lost, framework gone, maintenance) implies.

use orrery_proto::events as pb;

use crate::decide::Event;
use crate::ids::{AgentId, FrameworkId};
use crate::projections::domains;
use crate::state::{Agent, Cluster, Framework};

/// Whether the agent's resources may be offered now: registered with the
/// current leader, and its host accepting work (UP).
pub fn offerable(c: &Cluster, agent: &Agent) -> bool {
    agent.is_active()
        && agent.reregistered_term == c.term()
        && c.host_of(agent).is_none_or(|h| h.state.accepts_work())
}

/// Whether a decline filter keeps `framework` from `agent` at `now_ms`.
pub fn filtered(c: &Cluster, framework: &FrameworkId, agent: &AgentId, now_ms: u64) -> bool {
    c.filters
        .get(&(framework.clone(), agent.clone()))
        .is_some_and(|&until| until > now_ms)
}

/// Whether `framework` may be offered `agent` at `now_ms` (the agent itself
/// being offerable is checked separately, once per agent).
pub fn eligible(c: &Cluster, framework: &Framework, agent: &Agent, now_ms: u64) -> bool {
    framework.wants_offers()
        && domains::may_offer(c, framework, agent)
        && !filtered(c, &framework.id, &agent.id, now_ms)
}

fn rescind(ids: Vec<String>, reason: pb::RescindReason) -> Vec<Event> {
    if ids.is_empty() {
        return Vec::new();
    }
    vec![Event::OffersRescinded(pb::OffersRescinded {
        offer_ids: ids,
        reason: reason as i32,
    })]
}

/// Rescinds every outstanding offer of an agent.
pub fn rescind_on_agent(c: &Cluster, agent_id: &AgentId, reason: pb::RescindReason) -> Vec<Event> {
    let ids = c
        .offers_by_agent
        .get(agent_id)
        .into_iter()
        .flatten()
        .map(|id| id.0.clone())
        .collect();
    rescind(ids, reason)
}

/// Rescinds every outstanding offer made to a framework.
pub fn rescind_for_framework(
    c: &Cluster,
    framework_id: &FrameworkId,
    reason: pb::RescindReason,
) -> Vec<Event> {
    let ids = c
        .offers
        .values()
        .filter(|o| o.framework_id == *framework_id)
        .map(|o| o.id.0.clone())
        .collect();
    rescind(ids, reason)
}
