//! Liveness: once the faults stop (partitions healed, crashed nodes
//! restarted, clocks right), the cluster converges — a leader serves,
//! every agent is registered with no update waiting, every job runs its
//! desired number of instances, every drain has finished (no host DRAINING
//! or DRAINED), frameworks' tasks have run out (frameworks launch nothing
//! once the faults stop), and no task is stuck STAGING, STARTING, KILLING or
//! UNREACHABLE. The run fails if that does not happen within
//! `liveness_ms`.

use orrery_events::pb::TaskState;
use orrery_events::state::{AgentState, HostState};

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "liveness";

#[derive(Debug)]
pub struct Liveness;

impl Oracle for Liveness {
    fn name(&self) -> &'static str {
        NAME
    }

    fn at_end(&mut self, sim: &Sim) -> Result<(), String> {
        match unconverged(sim) {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }
}

/// Why the cluster has not converged, or None.
pub fn unconverged(sim: &Sim) -> Option<String> {
    let Some(leader) = sim.masters.iter().find(|m| m.up && m.is_leader()) else {
        return Some("no leader".into());
    };
    if !leader.is_serving() {
        return Some(format!("master {} leads but does not serve yet", leader.id));
    }
    let c = &sim.truth.cluster;
    if let Some(a) = sim.agents.iter().find(|a| !a.up || a.session == 0) {
        return Some(format!("{} is not registered", a.hostname));
    }
    if let Some(a) = sim.agents.iter().find(|a| a.has_queued_updates()) {
        return Some(format!("{} has status updates waiting", a.hostname));
    }
    if let Some(a) = c
        .agents
        .values()
        .find(|a| a.state == AgentState::Disconnected || a.state == AgentState::Unreachable)
        .filter(|a| {
            sim.agents
                .iter()
                .any(|s| s.agent_id.as_ref() == Some(&a.id))
        })
    {
        return Some(format!("agent {} is {}", a.id, a.state.as_str()));
    }
    if let Some(h) = c
        .hosts
        .values()
        .find(|h| matches!(h.state, HostState::Draining | HostState::Drained))
    {
        return Some(format!(
            "host {} is still {}",
            h.machine.hostname,
            h.state.as_str()
        ));
    }
    if let Some(t) = c.tasks.values().find(|t| {
        matches!(
            t.state,
            TaskState::TaskStaging
                | TaskState::TaskStarting
                | TaskState::TaskKilling
                | TaskState::TaskUnreachable
        )
    }) {
        return Some(format!("task {} is {}", t.key, t.state.as_str_name()));
    }
    for a in &sim.agents {
        for e in a.executors.values() {
            let live = c
                .task(&e.key)
                .is_some_and(|t| !t.is_terminal() && Some(&t.agent_id) == a.agent_id.as_ref());
            if e.state == TaskState::TaskRunning && !live {
                return Some(format!(
                    "{} still runs {}, which the master holds ended",
                    a.hostname, e.key
                ));
            }
        }
    }
    // Frameworks stop launching when the faults stop: their tasks run out.
    if let Some(t) = c
        .tasks
        .values()
        .find(|t| t.job.is_none() && !t.is_terminal())
    {
        return Some(format!(
            "framework task {} is still {}",
            t.key,
            t.state.as_str_name()
        ));
    }
    let mut running = std::collections::BTreeMap::new();
    for t in c.tasks.values() {
        if let Some(key) = &t.job {
            if t.state == TaskState::TaskRunning && !t.kill_requested {
                *running.entry(key).or_insert(0u32) += 1;
            }
        }
    }
    for (key, job) in &c.jobs {
        let n = running.get(key).copied().unwrap_or(0);
        if n != job.spec.instances {
            return Some(format!(
                "job {key} runs {n} of {} instances",
                job.spec.instances
            ));
        }
    }
    if sim.operator_jobs_pending() {
        return Some("the operator's jobs are not all created".into());
    }
    None
}
