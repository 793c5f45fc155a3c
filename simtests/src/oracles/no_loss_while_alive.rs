//! No task is lost while its agent and its process live (issue: a frozen
//! leader must not cost a single task).
//!
//! A master may take an agent for unreachable, and its tasks for LOST or
//! UNREACHABLE, only when the agent had a fault of its own: it was down,
//! or cut off from the masters in some direction, within its ping budget
//! and a reregistration deadline of the verdict. A master that froze,
//! crashed or was cut off alone is no such fault: the agent's ping timeout
//! finds the next leader in time, and the task keeps running.

use orrery_events::pb::{envelope::Payload, StatusSource, TaskReason, TaskState};
use orrery_events::{pb, Cluster, TaskKey};

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "no task lost while its agent and process live";

#[derive(Debug, Default)]
pub struct NoLossWhileAlive {
    /// Verdicts committed since the last step: (task, agent id, state).
    pending: Vec<(TaskKey, String, TaskState)>,
}

impl Oracle for NoLossWhileAlive {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, _before: &Cluster, env: &pb::Envelope) -> Result<(), String> {
        if let Some(Payload::TaskStatusUpdated(u)) = &env.payload {
            let state = TaskState::try_from(u.state).unwrap_or(TaskState::Unspecified);
            if matches!(state, TaskState::TaskLost | TaskState::TaskUnreachable)
                && u.reason == TaskReason::ReasonAgentUnreachable as i32
                && u.source == StatusSource::SourceMaster as i32
            {
                self.pending.push((
                    TaskKey::new(u.framework_id.clone(), u.task_id.clone()),
                    u.agent_id.clone(),
                    state,
                ));
            }
        }
        Ok(())
    }

    fn after_step(&mut self, sim: &mut Sim) -> Result<(), String> {
        for (key, agent_id, state) in std::mem::take(&mut self.pending) {
            let Some(a) = sim.agents.iter().find(|a| {
                a.agent_id
                    .as_ref()
                    .is_some_and(|id| id.as_str() == agent_id)
            }) else {
                continue;
            };
            let alive = a.up
                && a.executors
                    .get(&key)
                    .is_some_and(|e| !orrery_events::state::task::is_terminal(e.state));
            if alive && sim.now >= a.excused_until {
                return Err(format!(
                    "task {} became {} (agent unreachable) while agent {agent_id} ({}) was up, \
                     running it, and had no fault of its own",
                    key.task_id,
                    state.as_str_name(),
                    a.hostname
                ));
            }
        }
        Ok(())
    }
}
