//! No task vanishes silently.
//!
//! - Every status that ends or strands a task (LOST, GONE, DROPPED,
//!   UNREACHABLE) carries a reason.
//! - At the end, every task the master holds live runs on its agent,
//!   and every executor an agent runs is a live task of the master: an
//!   accepted launch ends in a terminal state or is running where the
//!   master says.

use orrery_events::pb::{envelope::Payload, TaskReason, TaskState};
use orrery_events::{pb, Cluster};

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "no task vanishes silently";

#[derive(Debug)]
pub struct NoSilentLoss;

impl Oracle for NoSilentLoss {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, _before: &Cluster, env: &pb::Envelope) -> Result<(), String> {
        if let Some(Payload::TaskStatusUpdated(u)) = &env.payload {
            let state = TaskState::try_from(u.state).unwrap_or(TaskState::Unspecified);
            let stranding = matches!(
                state,
                TaskState::TaskLost
                    | TaskState::TaskGone
                    | TaskState::TaskDropped
                    | TaskState::TaskUnreachable
            );
            if stranding && u.reason == TaskReason::Unspecified as i32 {
                return Err(format!(
                    "task {} became {} without a reason",
                    u.task_id,
                    state.as_str_name()
                ));
            }
        }
        Ok(())
    }

    fn at_end(&mut self, sim: &Sim) -> Result<(), String> {
        let c = &sim.truth.cluster;
        let by_id: std::collections::BTreeMap<_, _> = sim
            .agents
            .iter()
            .filter_map(|a| a.agent_id.as_ref().map(|id| (id.clone(), a)))
            .collect();
        for t in c.tasks.values() {
            if t.is_terminal() {
                continue;
            }
            let runs = by_id.get(&t.agent_id).is_some_and(|a| {
                a.executors
                    .get(&t.key)
                    .is_some_and(|e| e.state == TaskState::TaskRunning)
            });
            if !runs {
                return Err(format!(
                    "task {} is {} on {} for the master, but no agent runs it",
                    t.key,
                    t.state.as_str_name(),
                    t.agent_id
                ));
            }
        }
        for a in &sim.agents {
            for e in a.executors.values() {
                if e.state != TaskState::TaskRunning {
                    continue;
                }
                let known = c
                    .task(&e.key)
                    .is_some_and(|t| !t.is_terminal() && Some(&t.agent_id) == a.agent_id.as_ref());
                if !known {
                    return Err(format!(
                        "{} runs task {} that the master holds ended or elsewhere",
                        a.hostname, e.key
                    ));
                }
            }
        }
        Ok(())
    }
}
