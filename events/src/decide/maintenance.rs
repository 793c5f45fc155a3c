//! Host maintenance: the schedule (Mesos), and Peloton's host states
//! UP → DRAINING → DRAINED → DOWN → UP.
//!
//! This file decides the state transitions, refuses the invalid ones, stops
//! offers from a host the moment it starts draining, makes and records
//! Mesos' inverse offers, and drains frameworks' tasks: on a DRAINING host a
//! framework's task is killed (TASK_KILLED, reason HOST_MAINTENANCE) as soon
//! as its framework accepted the inverse offer for that agent, and in any
//! case once the master's drain grace (`--drain-grace`) has passed since the
//! drain started. A job's tasks are not killed here: the job scheduler moves
//! them within each job's SLA (`jobs::plan`).

use std::collections::BTreeSet;

use orrery_proto::events::{self as pb, TaskReason};

use super::agents::retire;
use super::{check_count, check_hostname, check_ip, limits, Event, NowMs};
use crate::ids::{FrameworkId, OfferId};
use crate::projections::{maintenance, offers};
use crate::rejection::Rejection;
use crate::state::{AgentState, Cluster, HostState, InverseAnswer, MachineId, Window};

fn schedule_event(windows: &[Window]) -> Event {
    Event::MaintenanceScheduleUpdated(pb::MaintenanceScheduleUpdated {
        windows: windows.iter().map(maintenance::window_proto).collect(),
    })
}

fn check_machine(m: &MachineId) -> Result<(), Rejection> {
    if m.hostname.is_empty() && m.ip.is_empty() {
        return Err(Rejection::InvalidField {
            field: "machine_id",
            problem: "needs a hostname or an ip".to_owned(),
        });
    }
    if !m.hostname.is_empty() {
        check_hostname(&m.hostname)?;
    }
    if !m.ip.is_empty() {
        check_ip(&m.ip)?;
    }
    Ok(())
}

/// The hostname a machine id refers to: its own, or the host with its ip.
fn resolve<'c>(c: &'c Cluster, m: &'c MachineId) -> &'c str {
    if !m.hostname.is_empty() {
        return &m.hostname;
    }
    c.hosts
        .values()
        .find(|h| h.machine.ip == m.ip)
        .map_or(m.ip.as_str(), |h| h.machine.hostname.as_str())
}

/// Replaces the whole schedule, as Mesos does. Machines that are DOWN must
/// stay; machines draining that leave the schedule go back UP.
pub(super) fn update_schedule(c: &Cluster, windows: Vec<Window>) -> Result<Vec<Event>, Rejection> {
    check_count("maintenance windows", windows.len(), limits::WINDOWS_MAX)?;
    let machines: usize = windows.iter().map(|w| w.machines.len()).sum();
    check_count("machines in the schedule", machines, limits::MACHINES_MAX)?;
    let mut hostnames = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for w in &windows {
        if w.machines.is_empty() {
            return Err(Rejection::InvalidField {
                field: "window",
                problem: "a maintenance window lists no machine".to_owned(),
            });
        }
        if let Some(d) = w.unavailability.duration_ns {
            if w.unavailability.start_ns.checked_add(d).is_none() {
                return Err(Rejection::InvalidField {
                    field: "unavailability",
                    problem: "start + duration overflows".to_owned(),
                });
            }
        }
        for m in &w.machines {
            check_machine(m)?;
            let twice = (!m.hostname.is_empty()
                && !hostnames.insert(m.hostname.to_ascii_lowercase()))
                || (!m.ip.is_empty() && !ips.insert(m.ip.clone()));
            if twice {
                return Err(Rejection::MachineListedTwice {
                    hostname: m.hostname.clone(),
                    ip: m.ip.clone(),
                });
            }
        }
    }
    let scheduled: BTreeSet<&str> = windows
        .iter()
        .flat_map(|w| w.machines.iter())
        .map(|m| resolve(c, m))
        .collect();
    // Inverse offers that no longer match the machine's unavailability are
    // withdrawn first (the invariants hold after every event), and the next
    // allocation cycle makes new ones.
    let new_unavailability = |hostname: &str| {
        windows
            .iter()
            .find(|w| w.machines.iter().any(|m| resolve(c, m) == hostname))
            .map(|w| w.unavailability)
    };
    let mut events: Vec<Event> = maintenance::rescind_inverse(c, |o| {
        new_unavailability(&o.hostname) != Some(o.unavailability)
    })
    .into_iter()
    .collect();
    events.push(schedule_event(&windows));
    for host in c.hosts.values() {
        let stays = scheduled.contains(host.machine.hostname.as_str());
        match host.state {
            HostState::Down if !stays => {
                return Err(Rejection::DownMachineUnscheduled {
                    hostname: host.machine.hostname.clone(),
                })
            }
            HostState::Draining | HostState::Drained if !stays => {
                events.push(Event::HostUp(pb::HostUp {
                    machine: Some(maintenance::machine_proto(&host.machine)),
                }));
            }
            _ => {}
        }
    }
    // Offers made before the schedule do not carry the new unavailability.
    for hostname in &scheduled {
        for agent_id in c.agents_by_host.get(*hostname).into_iter().flatten() {
            events.extend(offers::rescind_on_agent(
                c,
                agent_id,
                pb::RescindReason::RescindHostMaintenance,
            ));
        }
    }
    Ok(events)
}

fn check_hostnames(c: &Cluster, hostnames: &[String]) -> Result<(), Rejection> {
    check_count("hosts", hostnames.len(), limits::HOSTS_PER_CALL_MAX)?;
    if hostnames.is_empty() {
        return Err(Rejection::InvalidField {
            field: "hosts",
            problem: "no host given".to_owned(),
        });
    }
    let mut seen = BTreeSet::new();
    for h in hostnames {
        check_hostname(h)?;
        if !seen.insert(h) {
            return Err(Rejection::InvalidField {
                field: "hosts",
                problem: format!("host {h} is given twice"),
            });
        }
        if !c.hosts.contains_key(h) {
            return Err(Rejection::UnknownHost {
                hostname: h.clone(),
            });
        }
    }
    Ok(())
}

/// `orrery host maintenance start`: the hosts join the schedule (starting
/// now, unbounded) if they are not in it, and start draining.
pub(super) fn start(
    c: &Cluster,
    hostnames: Vec<String>,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    check_hostnames(c, &hostnames)?;
    for h in &hostnames {
        let host = &c.hosts[h];
        if host.state != HostState::Up {
            return Err(Rejection::InvalidHostTransition {
                hostname: h.clone(),
                state: host.state.as_str(),
                expected: "HOST_STATE_UP",
            });
        }
    }
    let mut events = Vec::new();
    let unscheduled: Vec<MachineId> = hostnames
        .iter()
        .filter(|h| maintenance::window_of(c, h).is_none())
        .map(|h| c.hosts[h].machine.clone())
        .collect();
    if !unscheduled.is_empty() {
        let mut windows = c.schedule.clone();
        windows.push(Window {
            machines: unscheduled,
            unavailability: crate::state::Unavailability {
                start_ns: now_ms.saturating_mul(1_000_000),
                duration_ns: None,
            },
        });
        events.push(schedule_event(&windows));
    }
    for h in &hostnames {
        let machine = Some(maintenance::machine_proto(&c.hosts[h].machine));
        // Rescind first: no state in the log may show an offer of a
        // draining host (the invariants check after every event).
        for agent_id in c.agents_by_host.get(h).into_iter().flatten() {
            events.extend(offers::rescind_on_agent(
                c,
                agent_id,
                pb::RescindReason::RescindHostMaintenance,
            ));
        }
        events.push(Event::HostDrainStarted(pb::HostDrainStarted {
            machine: machine.clone(),
        }));
        if maintenance::live_tasks_on_host(c, h) == 0 {
            events.push(Event::HostDrained(pb::HostDrained { machine }));
        }
    }
    Ok(events)
}

/// Mesos' /machine/down: scheduled machines go DOWN; their agents are shut
/// out (retired; their tasks, if any are left, are LOST).
pub(super) fn down(
    c: &Cluster,
    machines: Vec<MachineId>,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    check_count("machines", machines.len(), limits::HOSTS_PER_CALL_MAX)?;
    if machines.is_empty() {
        return Err(Rejection::InvalidField {
            field: "machines",
            problem: "no machine given".to_owned(),
        });
    }
    let mut events = Vec::new();
    let mut seen = BTreeSet::new();
    for m in &machines {
        check_machine(m)?;
        let hostname = resolve(c, m).to_owned();
        if !seen.insert(hostname.clone()) {
            return Err(Rejection::MachineListedTwice {
                hostname: m.hostname.clone(),
                ip: m.ip.clone(),
            });
        }
        let host = c
            .hosts
            .get(&hostname)
            .ok_or_else(|| Rejection::UnknownHost {
                hostname: hostname.clone(),
            })?;
        if maintenance::window_of(c, &hostname).is_none() || host.state == HostState::Down {
            return Err(Rejection::InvalidHostTransition {
                hostname,
                state: host.state.as_str(),
                expected: "a machine in the maintenance schedule that is not DOWN",
            });
        }
        for agent in c
            .agents_by_host
            .get(&hostname)
            .into_iter()
            .flatten()
            .filter_map(|id| c.agents.get(id))
            .filter(|a| a.state != AgentState::Gone)
        {
            events.extend(retire(
                c,
                agent,
                "the host is down for maintenance",
                TaskReason::ReasonHostMaintenance,
                now_ms,
            ));
        }
        events.push(Event::HostDown(pb::HostDown {
            machine: Some(maintenance::machine_proto(&host.machine)),
        }));
    }
    Ok(events)
}

/// `orrery host maintenance complete` / Mesos' /machine/up: back UP, and out
/// of the schedule.
pub(super) fn complete(c: &Cluster, hostnames: Vec<String>) -> Result<Vec<Event>, Rejection> {
    check_hostnames(c, &hostnames)?;
    for h in &hostnames {
        let host = &c.hosts[h];
        if host.state == HostState::Up {
            return Err(Rejection::InvalidHostTransition {
                hostname: h.clone(),
                state: host.state.as_str(),
                expected: "HOST_STATE_DRAINING, HOST_STATE_DRAINED or HOST_STATE_DOWN",
            });
        }
    }
    let done: BTreeSet<&str> = hostnames.iter().map(String::as_str).collect();
    let windows: Vec<Window> = c
        .schedule
        .iter()
        .map(|w| Window {
            machines: w
                .machines
                .iter()
                .filter(|m| !done.contains(resolve(c, m)))
                .cloned()
                .collect(),
            unavailability: w.unavailability,
        })
        .filter(|w| !w.machines.is_empty())
        .collect();
    let mut events = Vec::new();
    events.extend(maintenance::rescind_inverse(c, |o| {
        done.contains(o.hostname.as_str())
    }));
    for h in &hostnames {
        events.push(Event::HostUp(pb::HostUp {
            machine: Some(maintenance::machine_proto(&c.hosts[h].machine)),
        }));
    }
    events.push(schedule_event(&windows));
    Ok(events)
}

/// A framework's answer to inverse offers (Mesos' ACCEPT_INVERSE_OFFERS /
/// DECLINE_INVERSE_OFFERS). Answering again with the other answer changes
/// it; the same answer again is a no-op. Accepting on a DRAINING host kills
/// the framework's tasks on that agent at once.
pub(super) fn answer_inverse(
    c: &Cluster,
    framework_id: FrameworkId,
    offer_ids: Vec<OfferId>,
    accepted: bool,
) -> Result<Vec<Event>, Rejection> {
    framework_id.validate()?;
    super::frameworks::known(c, &framework_id)?;
    check_count(
        "inverse offer ids",
        offer_ids.len(),
        limits::OFFERS_PER_CALL_MAX,
    )?;
    if offer_ids.is_empty() {
        return Err(Rejection::InvalidField {
            field: "inverse_offer_ids",
            problem: "no inverse offer given".to_owned(),
        });
    }
    let answer = if accepted {
        InverseAnswer::Accepted
    } else {
        InverseAnswer::Declined
    };
    let mut seen = BTreeSet::new();
    let mut changed = Vec::new();
    for id in &offer_ids {
        id.validate()?;
        if !seen.insert(id) {
            return Err(Rejection::DuplicateOffer {
                offer_id: id.clone(),
            });
        }
        let o = c
            .inverse_offers
            .get(id)
            .ok_or_else(|| Rejection::UnknownOffer {
                offer_id: id.clone(),
            })?;
        if o.framework_id != framework_id {
            return Err(Rejection::OfferNotOwned {
                offer_id: id.clone(),
                owner: o.framework_id.clone(),
                framework_id: framework_id.clone(),
            });
        }
        if o.answer != answer {
            changed.push(o);
        }
    }
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let mut events = vec![Event::InverseOffersAnswered(pb::InverseOffersAnswered {
        framework_id: framework_id.0.clone(),
        offer_ids: changed.iter().map(|o| o.id.0.clone()).collect(),
        accepted,
    })];
    if accepted {
        for o in changed {
            if maintenance::host_state(c, &o.hostname) == HostState::Draining {
                events.extend(
                    c.tasks_on_agent(&o.agent_id)
                        .filter(|t| {
                            t.key.framework_id == framework_id
                                && maintenance::drained_by_master(t)
                                && !t.kill_requested
                        })
                        .map(maintenance_kill),
                );
            }
        }
    }
    Ok(events)
}

fn maintenance_kill(t: &crate::state::Task) -> Event {
    Event::TaskKillRequested(pb::TaskKillRequested {
        framework_id: t.key.framework_id.0.clone(),
        task_id: t.key.task_id.0.clone(),
        reason: TaskReason::ReasonHostMaintenance as i32,
    })
}

/// The leader's drain timer: on each DRAINING host, kills the frameworks'
/// tasks whose framework accepted the inverse offer, or all of them once
/// the drain grace has passed.
pub(super) fn drain(c: &Cluster, now_ms: NowMs) -> Result<Vec<Event>, Rejection> {
    let grace = super::require_leader(c)?.config.drain_grace_ms;
    let mut events = Vec::new();
    for host in c.hosts.values().filter(|h| h.state == HostState::Draining) {
        let overdue = now_ms >= host.state_since_ms.saturating_add(grace);
        for agent_id in c
            .agents_by_host
            .get(&host.machine.hostname)
            .into_iter()
            .flatten()
        {
            for t in c
                .tasks_on_agent(agent_id)
                .filter(|t| maintenance::drained_by_master(t) && !t.kill_requested)
            {
                let accepted = || {
                    c.inverse_offers.values().any(|o| {
                        o.agent_id == *agent_id
                            && o.framework_id == t.key.framework_id
                            && o.answer == InverseAnswer::Accepted
                    })
                };
                if overdue || accepted() {
                    events.push(maintenance_kill(t));
                }
            }
        }
        // Tasks also end without a status update (their agent replaced,
        // unreachable or gone): a draining host with nothing left is
        // drained here, whatever ended its last task. (Found by the
        // simulator: seed 58 left a host DRAINING for good.)
        if maintenance::live_tasks_on_host(c, &host.machine.hostname) == 0 {
            events.push(Event::HostDrained(pb::HostDrained {
                machine: Some(maintenance::machine_proto(&host.machine)),
            }));
        }
    }
    Ok(events)
}
