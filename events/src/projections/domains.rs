//! Fault domains (Mesos 1.4+): an agent is *local* when it has no domain or
//! shares the master's region, *remote* otherwise; remote agents are offered
//! only to REGION_AWARE frameworks.

use crate::rejection::Rejection;
use crate::state::{Agent, Cluster, Framework};

/// The master's region, if it has a fault domain.
pub fn master_region(c: &Cluster) -> Option<&str> {
    c.leader
        .as_ref()
        .and_then(|l| l.domain.as_ref())
        .map(|d| d.region.as_str())
}

/// Whether the agent is in a region other than the master's.
pub fn is_remote(c: &Cluster, agent: &Agent) -> bool {
    match (&agent.domain, master_region(c)) {
        (Some(d), Some(region)) => d.region != region,
        _ => false,
    }
}

/// Whether `framework` may be offered (and may launch on) `agent`.
pub fn may_offer(c: &Cluster, framework: &Framework, agent: &Agent) -> bool {
    framework.region_aware || !is_remote(c, agent)
}

pub fn remote_rejection(c: &Cluster, framework: &Framework, agent: &Agent) -> Rejection {
    Rejection::RemoteRegionNotAllowed {
        framework_id: framework.id.clone(),
        agent_id: agent.id.clone(),
        region: agent
            .domain
            .as_ref()
            .map(|d| d.region.clone())
            .unwrap_or_default(),
        master_region: master_region(c).unwrap_or_default().to_owned(),
    }
}
