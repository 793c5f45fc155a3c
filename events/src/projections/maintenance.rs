//! Maintenance views: which window holds a machine, a host's state, how many
//! live tasks a host still runs.

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

/// Hosts in the given states, in hostname order (`orrery host query`).
pub fn hosts_in<'c>(
    c: &'c Cluster,
    states: &'c [HostState],
) -> impl Iterator<Item = &'c crate::state::Host> + 'c {
    c.hosts
        .values()
        .filter(move |h| states.is_empty() || states.contains(&h.state))
}
