//! Maintenance views: which window holds a machine, a host's state, how many
//! live tasks a host still runs.

use std::collections::BTreeMap;

use orrery_proto::events as pb;

use crate::state::{Cluster, HostState, MachineId, Unavailability, Window};

pub fn machine_proto(m: &MachineId) -> pb::MachineId {
    pb::MachineId {
        hostname: m.hostname.clone(),
        ip: m.ip.clone(),
    }
}

/// A maintenance window as the log (and the operator API) encodes it.
pub fn window_proto(w: &Window) -> pb::MaintenanceWindow {
    pb::MaintenanceWindow {
        machines: w.machines.iter().map(machine_proto).collect(),
        unavailability: Some(pb::Unavailability {
            start_ns: w.unavailability.start_ns,
            duration_ns: w.unavailability.duration_ns,
        }),
    }
}

/// The window that schedules `hostname` (by hostname, or by the ip of the
/// host record), if any.
pub fn window_of<'c>(c: &'c Cluster, hostname: &str) -> Option<&'c Window> {
    let ip = c.hosts.get(hostname).map(|h| h.machine.ip.as_str());
    c.schedule.iter().find(|w| {
        w.machines
            .iter()
            .any(|m| m.hostname == hostname || (m.hostname.is_empty() && Some(m.ip.as_str()) == ip))
    })
}

pub fn unavailability_of(c: &Cluster, hostname: &str) -> Option<Unavailability> {
    window_of(c, hostname).map(|w| w.unavailability)
}

/// UP for a host never seen in maintenance.
pub fn host_state(c: &Cluster, hostname: &str) -> HostState {
    c.hosts.get(hostname).map_or(HostState::Up, |h| h.state)
}

/// Non-terminal tasks on every agent of the host.
pub fn live_tasks_on_host(c: &Cluster, hostname: &str) -> usize {
    c.agents_by_host
        .get(hostname)
        .into_iter()
        .flatten()
        .map(|a| c.tasks_on_agent(a).filter(|t| !t.is_terminal()).count())
        .sum()
}

/// Whether a task is the master's to drain: a framework's task (a job's
/// tasks are moved by the job scheduler, within the job's SLA).
pub fn drained_by_master(t: &crate::state::Task) -> bool {
    t.job.is_none() && !t.is_terminal()
}

/// The inverse offers the master owes: one per (framework, agent) where the
/// framework runs a task of its own on an agent whose machine is scheduled
/// and not DOWN, the framework is connected to hear it, and none was made.
/// Ids continue `seq.next_offer` from `next`.
pub fn inverse_offers_due(c: &Cluster, mut next: u64) -> Vec<pb::InverseOffer> {
    let mut out = Vec::new();
    if c.schedule.is_empty() {
        return out;
    }
    // The scheduled hosts, from the schedule (not a scan of every host
    // against every window: this runs each allocation cycle).
    let mut scheduled: BTreeMap<&str, Unavailability> = BTreeMap::new();
    let by_ip: BTreeMap<&str, &str> = if c
        .schedule
        .iter()
        .any(|w| w.machines.iter().any(|m| m.hostname.is_empty()))
    {
        c.hosts
            .values()
            .map(|h| (h.machine.ip.as_str(), h.machine.hostname.as_str()))
            .collect()
    } else {
        BTreeMap::new()
    };
    for w in &c.schedule {
        for m in &w.machines {
            let hostname = if m.hostname.is_empty() {
                by_ip.get(m.ip.as_str()).copied()
            } else {
                Some(m.hostname.as_str())
            };
            if let Some(h) = hostname {
                scheduled.entry(h).or_insert(w.unavailability);
            }
        }
    }
    for (hostname, u) in scheduled {
        let Some(host) = c.hosts.get(hostname) else {
            continue;
        };
        if host.state == HostState::Down {
            continue;
        }
        for agent_id in c
            .agents_by_host
            .get(&host.machine.hostname)
            .into_iter()
            .flatten()
        {
            let Some(agent) = c.agents.get(agent_id) else {
                continue;
            };
            if agent.state == crate::state::AgentState::Gone {
                continue;
            }
            let mut frameworks: Vec<&crate::ids::FrameworkId> = c
                .tasks_on_agent(agent_id)
                .filter(|t| drained_by_master(t))
                .map(|t| &t.key.framework_id)
                .collect();
            frameworks.dedup();
            frameworks.sort();
            frameworks.dedup();
            for fid in frameworks {
                let Some(fw) = c.frameworks.get(fid) else {
                    continue;
                };
                let made = c
                    .inverse_offers
                    .values()
                    .any(|o| o.framework_id == *fid && o.agent_id == *agent_id);
                if fw.removed || !fw.connected || made {
                    continue;
                }
                next += 1;
                out.push(pb::InverseOffer {
                    offer_id: format!("I{next}"),
                    framework_id: fid.0.clone(),
                    agent_id: agent_id.0.clone(),
                    hostname: host.machine.hostname.clone(),
                    unavailability: Some(pb::Unavailability {
                        start_ns: u.start_ns,
                        duration_ns: u.duration_ns,
                    }),
                });
            }
        }
    }
    out
}

/// Rescinds the inverse offers `which` picks (none: no event).
pub fn rescind_inverse(
    c: &Cluster,
    which: impl Fn(&crate::state::InverseOffer) -> bool,
) -> Option<pb::envelope::Payload> {
    let ids: Vec<String> = c
        .inverse_offers
        .values()
        .filter(|o| which(o))
        .map(|o| o.id.0.clone())
        .collect();
    if ids.is_empty() {
        return None;
    }
    Some(pb::envelope::Payload::InverseOffersRescinded(
        pb::InverseOffersRescinded { offer_ids: ids },
    ))
}

/// Hosts in the given states, in hostname order (`orrery host query`).
pub fn hosts_in<'c>(
    c: &'c Cluster,
    states: &'c [HostState],
) -> impl Iterator<Item = &'c crate::state::Host> + 'c {
    c.hosts
        .values()
        .filter(move |h| states.is_empty() || states.contains(&h.state))
}
