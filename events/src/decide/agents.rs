//! Agent lifecycle: register, reregister (with reconciliation of the tasks
//! it reports), disconnect, unreachable, gone.

use std::collections::BTreeSet;

use orrery_proto::events::{self as pb, TaskReason, TaskState};

use super::tasks::master_status;
use super::{
    check_count, check_hostname, check_ip, check_name, clip_text, limits, require_leader, Event,
    NowMs,
};
use crate::command::{AgentRegistration, ReportedTask};
use crate::ids::{AgentId, TaskKey};
use crate::projections::offers;
use crate::rejection::Rejection;
use crate::state::task::is_terminal;
use crate::state::{Agent, AgentState, Cluster, HostState, Task};

fn validate(c: &Cluster, reg: &AgentRegistration) -> Result<(), Rejection> {
    check_hostname(&reg.hostname)?;
    check_ip(&reg.ip)?;
    reg.resources.validate()?;
    check_count("attributes", reg.attributes.len(), limits::ATTRIBUTES_MAX)?;
    let mut names = BTreeSet::new();
    for (name, value) in &reg.attributes {
        check_name("attribute name", name, false)?;
        check_name("attribute value", value, true)?;
        if !names.insert(name) {
            return Err(Rejection::InvalidField {
                field: "attributes",
                problem: format!("attribute {name:?} is given twice"),
            });
        }
    }
    let leader = require_leader(c)?;
    if let Some(d) = &reg.domain {
        check_name("domain region", &d.region, false)?;
        check_name("domain zone", &d.zone, false)?;
        // Mesos: an agent with a domain may not join a master without one.
        if leader.domain.is_none() {
            return Err(Rejection::AgentDomainWithoutMasterDomain {
                region: d.region.clone(),
            });
        }
    }
    if let Some(h) = c.hosts.get(&reg.hostname) {
        if h.state == HostState::Down {
            return Err(Rejection::HostInMaintenance {
                hostname: reg.hostname.clone(),
                state: h.state.as_str(),
            });
        }
    }
    Ok(())
}

fn to_proto(reg: &AgentRegistration) -> (pb::Resources, Vec<pb::Attribute>, Option<pb::Domain>) {
    (
        reg.resources.to_proto(),
        reg.attributes
            .iter()
            .map(|(name, value)| pb::Attribute {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        reg.domain.as_ref().map(|d| pb::Domain {
            region: d.region.clone(),
            zone: d.zone.clone(),
        }),
    )
}

/// A new agent. If a live agent already holds the hostname, that agent
/// restarted without its checkpoint (or on a new machine under the same
/// name): it is retired first, so no two identities share one host.
pub(super) fn register(
    c: &Cluster,
    reg: AgentRegistration,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    validate(c, &reg)?;
    let mut events = Vec::new();
    for old in c
        .agents_by_host
        .get(&reg.hostname)
        .into_iter()
        .flatten()
        .filter_map(|id| c.agents.get(id))
        .filter(|a| a.state != AgentState::Gone)
    {
        events.extend(retire(
            c,
            old,
            "replaced by a new registration on the same host",
            TaskReason::ReasonAgentRestarted,
            now_ms,
        ));
    }
    let agent_id = format!("S{}", c.seq.next_agent + 1);
    let (resources, attributes, domain) = to_proto(&reg);
    events.push(Event::AgentRegistered(pb::AgentRegistered {
        agent_id,
        hostname: reg.hostname,
        ip: reg.ip,
        resources: Some(resources),
        attributes,
        domain,
    }));
    Ok(events)
}

/// A known agent comes back. Its identity (hostname, domain) must not have
/// changed; its resources may only grow (Mesos' additive reconfiguration
/// policy) — anything else must register as a new agent.
pub(super) fn reregister(
    c: &Cluster,
    agent_id: AgentId,
    reg: AgentRegistration,
    reported: Vec<ReportedTask>,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    agent_id.validate()?;
    validate(c, &reg)?;
    check_count("reported tasks", reported.len(), limits::REPORTED_TASKS_MAX)?;
    let agent = known(c, &agent_id)?;
    if agent.state == AgentState::Gone {
        return Err(Rejection::AgentGone { agent_id });
    }
    let mismatch = |what, was: String, now: String| Rejection::AgentIdentityMismatch {
        agent_id: agent_id.clone(),
        what,
        was,
        now,
    };
    if agent.hostname != reg.hostname {
        return Err(mismatch("hostname", agent.hostname.clone(), reg.hostname));
    }
    if agent.domain != reg.domain {
        return Err(mismatch(
            "fault domain",
            format!("{:?}", agent.domain),
            format!("{:?}", reg.domain),
        ));
    }
    if !reg.resources.contains(&agent.total) {
        return Err(mismatch(
            "resources (they may only grow)",
            agent.total.to_string(),
            reg.resources.to_string(),
        ));
    }
    let (resources, attributes, domain) = to_proto(&reg);
    let mut events = vec![Event::AgentReregistered(pb::AgentReregistered {
        agent_id: agent_id.0.clone(),
        hostname: reg.hostname,
        ip: reg.ip,
        resources: Some(resources),
        attributes,
        domain,
    })];
    // Reconcile what the master believes with what the agent reports.
    let reported: std::collections::BTreeMap<TaskKey, TaskState> = reported
        .into_iter()
        .map(|t| (TaskKey::new(t.framework_id, t.task_id), t.state))
        .collect();
    for task in c.tasks_on_agent(&agent_id) {
        if task.is_terminal() {
            continue;
        }
        match reported.get(&task.key) {
            // A STAGING task the agent does not know yet may have its launch
            // in flight; the shell re-sends unconfirmed launches instead.
            None if task.state == TaskState::TaskStaging => {}
            None => events.push(master_status(
                task,
                TaskState::TaskLost,
                TaskReason::ReasonAgentReregisteredWithoutTask,
                "the agent reregistered without this task",
                now_ms,
            )),
            // A job instance placed again while its agent was away (its
            // partition policy): this copy ends, and the shell's
            // reconciliation kills its process.
            Some(s)
                if task.state == TaskState::TaskUnreachable
                    && !is_terminal(*s)
                    && crate::jobs::replaced(c, task) =>
            {
                events.push(master_status(
                    task,
                    TaskState::TaskKilled,
                    TaskReason::ReasonReconciliation,
                    "replaced while its agent was unreachable (the job's partition policy); killed now that the agent is back",
                    now_ms,
                ))
            }
            Some(s) if task.state == TaskState::TaskUnreachable && !is_terminal(*s) => {
                events.push(master_status(
                    task,
                    TaskState::TaskRunning,
                    TaskReason::ReasonReconciliation,
                    "the agent came back with this task",
                    now_ms,
                ))
            }
            Some(_) => {}
        }
    }
    Ok(events)
}

pub(super) fn disconnect(c: &Cluster, agent_id: AgentId) -> Result<Vec<Event>, Rejection> {
    let agent = known(c, &agent_id)?;
    if agent.state != AgentState::Registered {
        return Ok(Vec::new());
    }
    // Rescind first: no committed state shows an offer of an inactive agent.
    let mut events = offers::rescind_on_agent(c, &agent_id, pb::RescindReason::RescindAgentLost);
    events.push(Event::AgentDisconnected(pb::AgentDisconnected {
        agent_id: agent_id.0.clone(),
    }));
    Ok(events)
}

/// The leader's health checker gave up on the agent. PARTITION_AWARE
/// frameworks learn TASK_UNREACHABLE (the task may come back); the others
/// TASK_LOST.
pub(super) fn mark_unreachable(
    c: &Cluster,
    agent_id: AgentId,
    reason: String,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    let agent = known(c, &agent_id)?;
    if matches!(agent.state, AgentState::Unreachable | AgentState::Gone) {
        return Ok(Vec::new());
    }
    let mut events = offers::rescind_on_agent(c, &agent_id, pb::RescindReason::RescindAgentLost);
    events.push(Event::AgentUnreachable(pb::AgentUnreachable {
        agent_id: agent_id.0.clone(),
        reason: clip_text(&reason),
    }));
    for task in c.tasks_on_agent(&agent_id).filter(|t| !t.is_terminal()) {
        let state = if partition_aware(c, task) {
            TaskState::TaskUnreachable
        } else {
            TaskState::TaskLost
        };
        if task.state == state {
            continue;
        }
        events.push(master_status(
            task,
            state,
            TaskReason::ReasonAgentUnreachable,
            "the agent is unreachable",
            now_ms,
        ));
    }
    Ok(events)
}

pub(super) fn mark_gone(
    c: &Cluster,
    agent_id: AgentId,
    reason: String,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    let agent = known(c, &agent_id)?;
    if agent.state == AgentState::Gone {
        return Ok(Vec::new());
    }
    Ok(retire(
        c,
        agent,
        &clip_text(&reason),
        TaskReason::ReasonAgentRemoved,
        now_ms,
    ))
}

/// Retires an agent: offers rescinded, live tasks GONE (PARTITION_AWARE) or
/// LOST, then `AgentGone`.
pub(crate) fn retire(
    c: &Cluster,
    agent: &Agent,
    why: &str,
    reason: TaskReason,
    now_ms: NowMs,
) -> Vec<Event> {
    let mut events = offers::rescind_on_agent(c, &agent.id, pb::RescindReason::RescindAgentLost);
    events.extend(crate::projections::maintenance::rescind_inverse(c, |o| {
        o.agent_id == agent.id
    }));
    for task in c.tasks_on_agent(&agent.id).filter(|t| !t.is_terminal()) {
        let state = if partition_aware(c, task) {
            TaskState::TaskGone
        } else {
            TaskState::TaskLost
        };
        events.push(master_status(task, state, reason, why, now_ms));
    }
    events.push(Event::AgentGone(pb::AgentGone {
        agent_id: agent.id.0.clone(),
        reason: why.to_owned(),
    }));
    events
}

/// Whether the task's framework gets UNREACHABLE/GONE rather than LOST.
fn partition_aware(c: &Cluster, task: &Task) -> bool {
    c.frameworks
        .get(&task.key.framework_id)
        .is_some_and(|f| f.partition_aware)
}

pub(super) fn known<'c>(c: &'c Cluster, agent_id: &AgentId) -> Result<&'c Agent, Rejection> {
    c.agents
        .get(agent_id)
        .ok_or_else(|| Rejection::UnknownAgent {
            agent_id: agent_id.clone(),
        })
}
