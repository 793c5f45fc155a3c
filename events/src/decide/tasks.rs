//! Tasks: kill, status updates (from agents) and acknowledgements (from
//! frameworks).
//!
//! Status updates are at-least-once: a duplicate of the latest update is
//! accepted with no events (idempotent), so the agent's retry loop stops.
//! An update that would move a task backwards is refused by name.

use orrery_proto::events::{self as pb, TaskReason, TaskState};

use super::frameworks::known;
use super::{clip_text, Event, NowMs};
use crate::command::StatusUpdate;
use crate::ids::{FrameworkId, TaskId, TaskKey};
use crate::rejection::Rejection;
use crate::state::task::{is_terminal, may_transition, state_name};
use crate::state::{Cluster, HostState, Task};

/// The uuid of an update the master itself produces (agent lost, ...):
/// deterministic, and unique per task because the update count grows.
pub fn master_update_uuid(task: &Task, now_ms: NowMs) -> String {
    format!("master-{}-{}", now_ms, task.update_count + 1)
}

/// A status update the master produces on the agent's behalf.
pub(super) fn master_status(
    task: &Task,
    state: TaskState,
    reason: TaskReason,
    message: &str,
    now_ms: NowMs,
) -> Event {
    Event::TaskStatusUpdated(pb::TaskStatusUpdated {
        framework_id: task.key.framework_id.0.clone(),
        task_id: task.key.task_id.0.clone(),
        agent_id: task.agent_id.0.clone(),
        state: state as i32,
        uuid: master_update_uuid(task, now_ms),
        reason: reason as i32,
        message: message.to_owned(),
        source: pb::StatusSource::SourceMaster as i32,
        exit_code: None,
        healthy: None,
    })
}

fn task<'c>(c: &'c Cluster, key: &TaskKey) -> Result<&'c Task, Rejection> {
    c.tasks
        .get(key)
        .ok_or_else(|| Rejection::UnknownTask { task: key.clone() })
}

/// A framework's call about one of its tasks: valid ids, a framework that
/// exists and was not removed, a task it owns.
fn framework_task(
    c: &Cluster,
    framework_id: FrameworkId,
    task_id: TaskId,
) -> Result<(TaskKey, &Task), Rejection> {
    framework_id.validate()?;
    task_id.validate()?;
    known(c, &framework_id)?;
    let key = TaskKey::new(framework_id, task_id);
    let t = task(c, &key)?;
    Ok((key, t))
}

/// Kill is idempotent: a task already terminal or already being killed
/// gives no new event.
pub(super) fn kill(
    c: &Cluster,
    framework_id: FrameworkId,
    task_id: TaskId,
) -> Result<Vec<Event>, Rejection> {
    let (key, t) = framework_task(c, framework_id, task_id)?;
    if t.is_terminal() || t.kill_requested {
        return Ok(Vec::new());
    }
    Ok(vec![Event::TaskKillRequested(pb::TaskKillRequested {
        framework_id: key.framework_id.0,
        task_id: key.task_id.0,
        reason: TaskReason::ReasonKilledByFramework as i32,
    })])
}

pub(super) fn update_status(c: &Cluster, u: StatusUpdate) -> Result<Vec<Event>, Rejection> {
    u.agent_id.validate()?;
    u.framework_id.validate()?;
    u.task_id.validate()?;
    let key = TaskKey::new(u.framework_id.clone(), u.task_id.clone());
    let invalid = |problem: String| Rejection::InvalidStatus {
        task: key.clone(),
        problem,
    };
    if u.uuid.is_empty() || u.uuid.len() > 128 {
        return Err(invalid(
            "the uuid is empty or longer than 128 bytes".to_owned(),
        ));
    }
    if u.source == pb::StatusSource::Unspecified {
        return Err(invalid("the source is unspecified".to_owned()));
    }
    let t = task(c, &key)?;
    if t.agent_id != u.agent_id {
        return Err(Rejection::TaskOnOtherAgent {
            task: key,
            actual: t.agent_id.clone(),
            claimed: u.agent_id,
        });
    }
    // A retry of the update the master already has: nothing new.
    if t.status_uuid == u.uuid {
        return Ok(Vec::new());
    }
    if is_terminal(t.state) {
        return Err(Rejection::TaskTerminal {
            task: key,
            state: state_name(t.state),
        });
    }
    if !may_transition(t.state, u.state) {
        return Err(Rejection::StatusRegression {
            task: key,
            from: state_name(t.state),
            to: state_name(u.state),
        });
    }
    let mut events = vec![Event::TaskStatusUpdated(pb::TaskStatusUpdated {
        framework_id: key.framework_id.0.clone(),
        task_id: key.task_id.0.clone(),
        agent_id: u.agent_id.0.clone(),
        state: u.state as i32,
        uuid: u.uuid,
        reason: u.reason as i32,
        message: clip_text(&u.message),
        source: u.source as i32,
        exit_code: u.exit_code,
        healthy: u.healthy,
    })];
    // The last live task of a draining host just ended: the host is drained.
    if is_terminal(u.state) {
        if let Some(agent) = c.agents.get(&u.agent_id) {
            if let Some(host) = c.host_of(agent) {
                if host.state == HostState::Draining
                    && crate::projections::maintenance::live_tasks_on_host(
                        c,
                        &host.machine.hostname,
                    ) == 1
                {
                    events.push(Event::HostDrained(pb::HostDrained {
                        machine: Some(crate::projections::maintenance::machine_proto(
                            &host.machine,
                        )),
                    }));
                }
            }
        }
    }
    Ok(events)
}

/// Acknowledging the latest update again is idempotent; acknowledging any
/// other uuid is refused (Mesos ignores it; we name it).
pub(super) fn acknowledge(
    c: &Cluster,
    framework_id: FrameworkId,
    task_id: TaskId,
    uuid: String,
) -> Result<Vec<Event>, Rejection> {
    let (key, t) = framework_task(c, framework_id, task_id)?;
    if t.status_uuid != uuid || uuid.is_empty() {
        return Err(Rejection::UnexpectedAcknowledgement {
            task: key,
            uuid,
            expected: t.status_uuid.clone(),
        });
    }
    if t.acknowledged {
        return Ok(Vec::new());
    }
    Ok(vec![Event::TaskStatusAcknowledged(
        pb::TaskStatusAcknowledged {
            framework_id: key.framework_id.0,
            task_id: key.task_id.0,
            uuid,
        },
    )])
}
