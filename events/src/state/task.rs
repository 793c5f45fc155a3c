//! The master's record of one task and the task state machine.
//!
//! Owns `Task` and the rules of Mesos' task states that everything else
//! uses: which states are terminal, and which transitions are forward.

use orrery_proto::events::{CommandInfo, TaskReason, TaskState};

use crate::ids::{AgentId, TaskKey};
use crate::resources::Resources;
use crate::state::job::JobKey;

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub key: TaskKey,
    pub agent_id: AgentId,
    pub name: String,
    pub resources: Resources,
    pub command: CommandInfo,
    pub job: Option<JobKey>,
    pub instance: u32,
    /// The job version it was launched for.
    pub job_version: u64,
    pub state: TaskState,
    /// The uuid of the latest status update ("" before the first).
    pub status_uuid: String,
    /// Whether the framework acknowledged the latest update.
    pub acknowledged: bool,
    pub reason: TaskReason,
    pub message: String,
    pub exit_code: Option<i32>,
    pub healthy: Option<bool>,
    pub kill_requested: bool,
    pub launched_at_ms: u64,
    pub updated_at_ms: u64,
    pub update_count: u32,
    /// Set once the task reached a terminal state; the invariants check that
    /// it never leaves it.
    pub was_terminal: bool,
}

/// Mesos' terminal states: once there, a task stays there.
pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::TaskFinished
            | TaskState::TaskFailed
            | TaskState::TaskKilled
            | TaskState::TaskError
            | TaskState::TaskLost
            | TaskState::TaskDropped
            | TaskState::TaskGone
    )
}

/// The order of the task state machine: an update may not move a task to a
/// lower rank, except that an UNREACHABLE task may come back to RUNNING when
/// its agent reregisters (PARTITION_AWARE semantics).
pub fn rank(state: TaskState) -> u8 {
    match state {
        TaskState::Unspecified => 0,
        TaskState::TaskStaging => 1,
        TaskState::TaskStarting => 2,
        TaskState::TaskRunning | TaskState::TaskUnreachable | TaskState::TaskUnknown => 3,
        TaskState::TaskKilling => 4,
        TaskState::TaskFinished
        | TaskState::TaskFailed
        | TaskState::TaskKilled
        | TaskState::TaskError
        | TaskState::TaskLost
        | TaskState::TaskDropped
        | TaskState::TaskGone => 5,
    }
}

/// Whether `from -> to` is a legal transition.
pub fn may_transition(from: TaskState, to: TaskState) -> bool {
    if is_terminal(from) || to == TaskState::TaskStaging || to == TaskState::TaskUnknown {
        return false;
    }
    if to == TaskState::Unspecified {
        return false;
    }
    rank(to) >= rank(from)
}

/// The name Mesos users know (`TASK_RUNNING`).
pub fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "TASK_STATE_UNSPECIFIED",
        TaskState::TaskStaging => "TASK_STAGING",
        TaskState::TaskStarting => "TASK_STARTING",
        TaskState::TaskRunning => "TASK_RUNNING",
        TaskState::TaskKilling => "TASK_KILLING",
        TaskState::TaskFinished => "TASK_FINISHED",
        TaskState::TaskFailed => "TASK_FAILED",
        TaskState::TaskKilled => "TASK_KILLED",
        TaskState::TaskError => "TASK_ERROR",
        TaskState::TaskLost => "TASK_LOST",
        TaskState::TaskDropped => "TASK_DROPPED",
        TaskState::TaskUnreachable => "TASK_UNREACHABLE",
        TaskState::TaskGone => "TASK_GONE",
        TaskState::TaskUnknown => "TASK_UNKNOWN",
    }
}

impl Task {
    pub fn is_terminal(&self) -> bool {
        is_terminal(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final() {
        let all = [
            TaskState::TaskStaging,
            TaskState::TaskStarting,
            TaskState::TaskRunning,
            TaskState::TaskKilling,
            TaskState::TaskFinished,
            TaskState::TaskFailed,
            TaskState::TaskKilled,
            TaskState::TaskError,
            TaskState::TaskLost,
            TaskState::TaskDropped,
            TaskState::TaskUnreachable,
            TaskState::TaskGone,
            TaskState::TaskUnknown,
        ];
        for from in all {
            for to in all {
                if is_terminal(from) {
                    assert!(!may_transition(from, to), "{from:?} -> {to:?}");
                }
            }
        }
        assert!(may_transition(
            TaskState::TaskUnreachable,
            TaskState::TaskRunning
        ));
        assert!(may_transition(
            TaskState::TaskRunning,
            TaskState::TaskRunning
        ));
        assert!(!may_transition(
            TaskState::TaskRunning,
            TaskState::TaskStarting
        ));
        assert!(!may_transition(
            TaskState::TaskKilling,
            TaskState::TaskRunning
        ));
    }
}
