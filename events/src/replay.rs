//! The pure half of `orrery replay`: which entities an event touches, the
//! state at a point of the log, what changed between two points, replay
//! with the invariants after every event, and why a job waits.
//!
//! The shell (ops/src/replay.rs) reads a data dir, a running master or an
//! exported log, and prints; everything it shows is computed here from the
//! events alone, so it is the same on every machine and years later.

use std::collections::{BTreeMap, BTreeSet};

use orrery_proto::events::{self as pb, envelope::Payload};

use crate::apply::try_apply;
use crate::invariants::{self, Violation};
use crate::state::{Cluster, JobKey};

/// Every id an event names: agents, frameworks, tasks (`FW/TASK` and the
/// bare task id), hosts, jobs (`ROLE/ENV/NAME`) and offers.
pub fn mentions(payload: &Payload) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let task = |fw: &str, task: &str, out: &mut BTreeSet<String>| {
        out.insert(fw.to_owned());
        out.insert(task.to_owned());
        out.insert(format!("{fw}/{task}"));
    };
    let machine = |m: &Option<pb::MachineId>, out: &mut BTreeSet<String>| {
        if let Some(m) = m {
            out.insert(m.hostname.clone());
            if !m.ip.is_empty() {
                out.insert(m.ip.clone());
            }
        }
    };
    let job = |k: Option<&pb::JobKey>, out: &mut BTreeSet<String>| {
        out.insert(JobKey::from_proto(k).to_string());
    };
    match payload {
        Payload::LeaderElected(e) => {
            out.insert(format!("master-{}", e.leader_id));
        }
        Payload::RoleWeightsSet(e) => out.extend(e.weights.iter().map(|w| w.role.clone())),
        Payload::AgentRegistered(e) => {
            out.extend([e.agent_id.clone(), e.hostname.clone()]);
        }
        Payload::AgentReregistered(e) => {
            out.extend([e.agent_id.clone(), e.hostname.clone()]);
        }
        Payload::AgentDisconnected(e) => {
            out.insert(e.agent_id.clone());
        }
        Payload::AgentUnreachable(e) => {
            out.insert(e.agent_id.clone());
        }
        Payload::AgentGone(e) => {
            out.insert(e.agent_id.clone());
        }
        Payload::FrameworkSubscribed(e) => {
            out.extend([e.framework_id.clone(), e.role.clone()]);
        }
        Payload::FrameworkDisconnected(e) => {
            out.insert(e.framework_id.clone());
        }
        Payload::FrameworkRemoved(e) => {
            out.insert(e.framework_id.clone());
        }
        Payload::FrameworkSuppressed(e) => {
            out.insert(e.framework_id.clone());
        }
        Payload::FrameworkRevived(e) => {
            out.insert(e.framework_id.clone());
        }
        Payload::OffersMade(e) => {
            for o in &e.offers {
                out.extend([
                    o.offer_id.clone(),
                    o.framework_id.clone(),
                    o.agent_id.clone(),
                ]);
            }
        }
        Payload::OffersRescinded(e) => out.extend(e.offer_ids.iter().cloned()),
        Payload::OffersDeclined(e) => {
            out.insert(e.framework_id.clone());
            out.extend(e.offer_ids.iter().cloned());
        }
        Payload::OffersAccepted(e) => {
            out.insert(e.framework_id.clone());
            out.extend(e.offer_ids.iter().cloned());
        }
        Payload::DeclineFiltersExpired(e) => {
            for k in &e.filters {
                out.extend([k.framework_id.clone(), k.agent_id.clone()]);
            }
        }
        Payload::InverseOffersMade(e) => {
            for o in &e.inverse_offers {
                out.extend([
                    o.offer_id.clone(),
                    o.framework_id.clone(),
                    o.agent_id.clone(),
                    o.hostname.clone(),
                ]);
            }
        }
        Payload::InverseOffersAnswered(e) => {
            out.insert(e.framework_id.clone());
            out.extend(e.offer_ids.iter().cloned());
        }
        Payload::InverseOffersRescinded(e) => out.extend(e.offer_ids.iter().cloned()),
        Payload::TaskLaunched(e) => {
            task(&e.framework_id, &e.task_id, &mut out);
            out.insert(e.agent_id.clone());
            if e.job.is_some() {
                job(e.job.as_ref(), &mut out);
            }
        }
        Payload::TaskStatusUpdated(e) => {
            task(&e.framework_id, &e.task_id, &mut out);
            out.insert(e.agent_id.clone());
        }
        Payload::TaskStatusAcknowledged(e) => task(&e.framework_id, &e.task_id, &mut out),
        Payload::TaskKillRequested(e) => task(&e.framework_id, &e.task_id, &mut out),
        Payload::MaintenanceScheduleUpdated(e) => {
            for w in &e.windows {
                for m in &w.machines {
                    machine(&Some(m.clone()), &mut out);
                }
            }
        }
        Payload::HostDrainStarted(e) => machine(&e.machine, &mut out),
        Payload::HostDrained(e) => machine(&e.machine, &mut out),
        Payload::HostDown(e) => machine(&e.machine, &mut out),
        Payload::HostUp(e) => machine(&e.machine, &mut out),
        Payload::JobCreated(e) => job(e.spec.as_ref().and_then(|s| s.key.as_ref()), &mut out),
        Payload::JobUpdated(e) => job(e.spec.as_ref().and_then(|s| s.key.as_ref()), &mut out),
        Payload::JobKilled(e) => job(e.key.as_ref(), &mut out),
        Payload::JobUpdateFinished(e) => job(e.key.as_ref(), &mut out),
        Payload::MastersChangeRequested(e) => {
            out.insert(format!("master-{}", e.node_id));
        }
        Payload::MastersChanged(e) => {
            out.extend(e.members.iter().map(|m| format!("master-{}", m.node_id)));
        }
    }
    out.remove("");
    out
}

/// Whether the event touches `entity` (an id as `mentions` lists them).
/// A task event also touches the host its agent runs on, given the state
/// before it (for `replay history HOST`).
pub fn touches(before: &Cluster, payload: &Payload, entity: &str) -> bool {
    let named = mentions(payload);
    if named.contains(entity) {
        return true;
    }
    // An agent's host: events naming one of its agents touch it.
    named.iter().any(|id| {
        before
            .agents
            .get(id.as_str())
            .is_some_and(|a| a.hostname == entity)
    })
}

/// A replay that stopped: the event could not be applied, or an invariant
/// broke after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckFailure {
    pub index: u64,
    pub event: &'static str,
    pub problem: String,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {} ({}): {}", self.index, self.event, self.problem)
    }
}

/// Applies `events` to `c`, checking every invariant after each one.
pub fn check(c: &mut Cluster, events: &[pb::Envelope]) -> Result<(), CheckFailure> {
    for env in events {
        let event = env
            .payload
            .as_ref()
            .map_or("(no payload)", crate::codec::event_name);
        try_apply(c, env).map_err(|e| CheckFailure {
            index: env.index,
            event,
            problem: e.to_string(),
        })?;
        invariants::check(c).map_err(|v: Violation| CheckFailure {
            index: env.index,
            event,
            problem: format!("invariant broken: {v}"),
        })?;
    }
    Ok(())
}

/// One difference between two states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// agent, framework, task, host, job, offers, schedule.
    pub kind: &'static str,
    pub id: String,
    pub before: String,
    pub after: String,
}

fn compare<K: Ord + ToString, V>(
    kind: &'static str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    show: impl Fn(&V) -> String,
    out: &mut Vec<Change>,
) {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let before = a.get(k).map(&show).unwrap_or_else(|| "-".into());
        let after = b.get(k).map(&show).unwrap_or_else(|| "-".into());
        if before != after {
            out.push(Change {
                kind,
                id: k.to_string(),
                before,
                after,
            });
        }
    }
}

/// What changed from `a` to `b`, entity by entity ("-": absent).
pub fn diff(a: &Cluster, b: &Cluster) -> Vec<Change> {
    let mut out = Vec::new();
    compare(
        "agent",
        &a.agents,
        &b.agents,
        |x| format!("{} used {}", x.state.as_str(), x.used),
        &mut out,
    );
    compare(
        "framework",
        &a.frameworks,
        &b.frameworks,
        |f| {
            if f.removed {
                "removed".into()
            } else if f.connected {
                format!(
                    "connected{}",
                    if f.suppressed { ", suppressed" } else { "" }
                )
            } else {
                "disconnected".into()
            }
        },
        &mut out,
    );
    let tasks_a: BTreeMap<String, &crate::state::Task> =
        a.tasks.values().map(|t| (t.key.to_string(), t)).collect();
    let tasks_b: BTreeMap<String, &crate::state::Task> =
        b.tasks.values().map(|t| (t.key.to_string(), t)).collect();
    compare(
        "task",
        &tasks_a,
        &tasks_b,
        |t| {
            format!(
                "{} on {}",
                crate::state::task::state_name(t.state),
                t.agent_id
            )
        },
        &mut out,
    );
    compare(
        "host",
        &a.hosts,
        &b.hosts,
        |h| h.state.as_str().to_owned(),
        &mut out,
    );
    let jobs = |c: &Cluster| -> BTreeMap<String, String> {
        c.jobs
            .iter()
            .map(|(k, j)| {
                (
                    k.to_string(),
                    format!("version {}, {} instance(s)", j.version, j.spec.instances),
                )
            })
            .collect()
    };
    compare("job", &jobs(a), &jobs(b), |s| s.clone(), &mut out);
    if a.offers.len() != b.offers.len() {
        out.push(Change {
            kind: "offers",
            id: "outstanding".into(),
            before: a.offers.len().to_string(),
            after: b.offers.len().to_string(),
        });
    }
    if a.schedule != b.schedule {
        let machines = |c: &Cluster| c.schedule.iter().map(|w| w.machines.len()).sum::<usize>();
        out.push(Change {
            kind: "schedule",
            id: "maintenance".into(),
            before: format!("{} window(s), {} machine(s)", a.schedule.len(), machines(a)),
            after: format!("{} window(s), {} machine(s)", b.schedule.len(), machines(b)),
        });
    }
    out
}

/// Why a job's instances wait at time `now_ms` of state `c`: the job
/// scheduler's own reasons (constraints, resources, backoff, no offers),
/// then what stood around it (offers it held, its decline filters, hosts
/// in maintenance, agents not active).
pub fn why_pending_job(c: &Cluster, key: &JobKey, now_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    let Some(job) = c.jobs.get(key) else {
        out.push(format!("job {key} does not exist at this point"));
        return out;
    };
    let fw = c
        .frameworks
        .values()
        .find(|f| f.name == crate::jobs::FRAMEWORK_NAME && !f.removed);
    let Some(fw) = fw else {
        out.push("the job scheduler had not subscribed yet".into());
        return out;
    };
    let hist = crate::jobs::histories(c);
    let plan = crate::jobs::plan(c, &fw.id, now_ms);
    for instance in 0..job.spec.instances {
        let h = hist.get(&(key.clone(), instance));
        match crate::jobs::instance_state(&job.spec, h, now_ms) {
            crate::jobs::InstanceState::Running(task) => {
                out.push(format!("instance {instance}: placed (task {task})"))
            }
            crate::jobs::InstanceState::Finished => {
                out.push(format!("instance {instance}: finished"))
            }
            crate::jobs::InstanceState::GaveUp(n) => {
                out.push(format!("instance {instance}: given up after {n} failures"))
            }
            _ => {
                let reason = plan
                    .pending
                    .get(&(key.clone(), instance))
                    .cloned()
                    .unwrap_or_else(|| "placeable on the offers held now".into());
                out.push(format!("instance {instance}: pending: {reason}"));
            }
        }
    }
    let held = c
        .offers
        .values()
        .filter(|o| o.framework_id == fw.id)
        .count();
    out.push(format!(
        "the job scheduler held {held} offer(s){}",
        if fw.suppressed {
            " and was suppressed (it revives when a job or one of its tasks changes)"
        } else {
            ""
        }
    ));
    let filters: Vec<String> = c
        .filters
        .iter()
        .filter(|((f, _), &until)| *f == fw.id && until > now_ms)
        .map(|((_, a), until)| format!("{a} for {} ms more", until - now_ms))
        .collect();
    if !filters.is_empty() {
        out.push(format!("decline filters: {}", filters.join(", ")));
    }
    let maintenance: Vec<String> = c
        .hosts
        .values()
        .filter(|h| !h.state.accepts_work())
        .map(|h| format!("{} {}", h.machine.hostname, h.state.as_str()))
        .collect();
    if !maintenance.is_empty() {
        out.push(format!(
            "hosts taking no work (maintenance): {}",
            maintenance.join(", ")
        ));
    }
    let inactive: Vec<String> = c
        .agents
        .values()
        .filter(|a| !a.is_active())
        .map(|a| format!("{} ({}) {}", a.id, a.hostname, a.state.as_str()))
        .collect();
    if !inactive.is_empty() {
        out.push(format!("agents not active: {}", inactive.join(", ")));
    }
    out
}
