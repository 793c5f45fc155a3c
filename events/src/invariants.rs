//! Invariants that every committed state obeys, as code that runs.
//!
//! `check` runs after every `apply` in debug builds, after every simulation
//! step, and in `orrery replay check`. A violation is a bug in decide or
//! apply (or a tampered log), never a user error. Each rule names the
//! invariant of FAULTS.md it guards.

use std::fmt;

use crate::projections::domains;
use crate::resources::Resources;
use crate::state::{AgentState, Cluster, HostState};

/// A broken invariant: which one, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

impl std::error::Error for Violation {}

fn fail(invariant: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { invariant, detail })
}

/// Checks every invariant; the first violation found is returned.
pub fn check(c: &Cluster) -> Result<(), Violation> {
    derived_fields_match(c)?;
    agents_not_overcommitted(c)?;
    tasks_reference_known_entities(c)?;
    terminal_is_final(c)?;
    offers_respect_maintenance_and_domains(c)?;
    inverse_offers_stand(c)?;
    Ok(())
}

/// An inverse offer stands only for a live framework on an agent that is
/// not gone, on a machine in the schedule that is not DOWN, once per
/// (framework, agent).
fn inverse_offers_stand(c: &Cluster) -> Result<(), Violation> {
    let mut pairs = std::collections::BTreeSet::new();
    for o in c.inverse_offers.values() {
        let live_framework = c
            .frameworks
            .get(&o.framework_id)
            .is_some_and(|f| !f.removed);
        let problem = if !live_framework {
            Some(format!(
                "framework {} is unknown or removed",
                o.framework_id
            ))
        } else if !c
            .agents
            .get(&o.agent_id)
            .is_some_and(|a| a.state != AgentState::Gone && a.hostname == o.hostname)
        {
            Some(format!(
                "agent {} is unknown, gone or not on {}",
                o.agent_id, o.hostname
            ))
        } else if crate::projections::maintenance::window_of(c, &o.hostname).is_none() {
            Some(format!("{} is not in the maintenance schedule", o.hostname))
        } else if c
            .hosts
            .get(&o.hostname)
            .is_some_and(|h| h.state == HostState::Down)
        {
            Some(format!("{} is DOWN", o.hostname))
        } else if !pairs.insert((&o.framework_id, &o.agent_id)) {
            Some(format!(
                "a second inverse offer to {} for agent {}",
                o.framework_id, o.agent_id
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return fail(
                "inverse offers stand",
                format!("inverse offer {}: {p}", o.id),
            );
        }
    }
    Ok(())
}

/// The caches apply maintains equal a recomputation from the primary maps.
fn derived_fields_match(c: &Cluster) -> Result<(), Violation> {
    let mut fresh = c.clone();
    fresh.rebuild_derived();
    for (id, a) in &c.agents {
        let f = &fresh.agents[id];
        if a.used != f.used || a.offered != f.offered {
            return fail(
                "derived agent resources",
                format!(
                    "agent {id}: used {} / offered {} but tasks and offers sum to {} / {}",
                    a.used, a.offered, f.used, f.offered
                ),
            );
        }
    }
    for (id, fw) in &c.frameworks {
        if fw.allocated != fresh.frameworks[id].allocated {
            return fail(
                "derived framework allocation",
                format!(
                    "framework {id}: allocated {} but recomputed {}",
                    fw.allocated, fresh.frameworks[id].allocated
                ),
            );
        }
    }
    if c.tasks_by_agent != fresh.tasks_by_agent
        || c.agents_by_host != fresh.agents_by_host
        || c.offers_by_agent != fresh.offers_by_agent
    {
        return fail(
            "derived indexes",
            "an index differs from its recomputation".into(),
        );
    }
    Ok(())
}

/// I5: Σ allocated ≤ agent total; a port is used or offered at most once.
fn agents_not_overcommitted(c: &Cluster) -> Result<(), Violation> {
    for (id, a) in &c.agents {
        let committed = a.used.plus(&a.offered);
        if !a.total.contains(&committed) {
            return fail(
                "I5 agent over-committed",
                format!(
                    "agent {id}: used {} + offered {} > total {}",
                    a.used, a.offered, a.total
                ),
            );
        }
        if a.used.ports.count() + a.offered.ports.count() != committed.ports.count() {
            return fail(
                "I5 port used twice",
                format!(
                    "agent {id}: used ports {} overlap offered {}",
                    a.used.ports, a.offered.ports
                ),
            );
        }
    }
    // Ports of live tasks on one agent are disjoint.
    for (agent_id, keys) in &c.tasks_by_agent {
        let mut seen = Resources::default();
        let mut count = 0;
        for k in keys {
            let t = &c.tasks[k];
            if !t.is_terminal() {
                count += t.resources.ports.count();
                seen.add(&t.resources);
            }
        }
        if seen.ports.count() != count {
            return fail(
                "I3/I5 port shared by two tasks",
                format!("agent {agent_id}"),
            );
        }
    }
    Ok(())
}

/// A task names an agent and a framework the log knows (I3: by
/// construction a task key maps to exactly one agent).
fn tasks_reference_known_entities(c: &Cluster) -> Result<(), Violation> {
    for (key, t) in c.tasks.iter() {
        if *key != t.key {
            return fail(
                "task key",
                format!("task stored under {key} says {}", t.key),
            );
        }
        if !c.agents.contains_key(&t.agent_id) {
            return fail(
                "task agent",
                format!("task {key} is on unknown agent {}", t.agent_id),
            );
        }
        if !c.frameworks.contains_key(&key.framework_id) {
            return fail(
                "task framework",
                format!("task {key} has an unknown framework"),
            );
        }
    }
    Ok(())
}

/// I6: a task that reached a terminal state stays terminal.
fn terminal_is_final(c: &Cluster) -> Result<(), Violation> {
    for (key, t) in c.tasks.iter() {
        if t.was_terminal && !t.is_terminal() {
            return fail(
                "I6 terminal state is final",
                format!("task {key} left a terminal state for {:?}", t.state),
            );
        }
    }
    Ok(())
}

/// No offer of a host in maintenance, of an inactive agent, to a removed
/// framework, or of a remote region to a framework that is not REGION_AWARE.
fn offers_respect_maintenance_and_domains(c: &Cluster) -> Result<(), Violation> {
    for (id, o) in &c.offers {
        let Some(agent) = c.agents.get(&o.agent_id) else {
            return fail(
                "offer agent",
                format!("offer {id} is of unknown agent {}", o.agent_id),
            );
        };
        let Some(fw) = c.frameworks.get(&o.framework_id) else {
            return fail(
                "offer framework",
                format!("offer {id} is to unknown framework"),
            );
        };
        if agent.state != AgentState::Registered {
            return fail(
                "offer of inactive agent",
                format!(
                    "offer {id} of agent {} which is {}",
                    agent.id,
                    agent.state.as_str()
                ),
            );
        }
        if let Some(h) = c.host_of(agent) {
            if matches!(
                h.state,
                HostState::Draining | HostState::Drained | HostState::Down
            ) {
                return fail(
                    "offer of host in maintenance",
                    format!(
                        "offer {id} of host {} which is {}",
                        h.machine.hostname,
                        h.state.as_str()
                    ),
                );
            }
        }
        if fw.removed {
            return fail(
                "offer to removed framework",
                format!("offer {id} to {}", fw.id),
            );
        }
        if !domains::may_offer(c, fw, agent) {
            return fail(
                "remote offer to framework without REGION_AWARE",
                format!("offer {id} of agent {} to {}", agent.id, fw.id),
            );
        }
    }
    Ok(())
}
