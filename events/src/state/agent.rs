//! The master's record of one agent: identity, resources, fault domain and
//! liveness. Owns `Agent` and `AgentState`; changed only by `apply`.

use std::collections::BTreeMap;

use crate::ids::AgentId;
use crate::resources::Resources;

/// A fault domain: a region and a zone within it (Mesos 1.4+).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain {
    pub region: String,
    pub zone: String,
}

impl Domain {
    pub fn to_proto(&self) -> orrery_proto::events::Domain {
        orrery_proto::events::Domain {
            region: self.region.clone(),
            zone: self.zone.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentState {
    /// Connected to the current leader (or not yet known to be otherwise).
    Registered,
    /// The connection dropped; tasks are presumed running.
    Disconnected,
    /// Silent past the ping budget; tasks reported LOST or UNREACHABLE.
    Unreachable,
    /// Will never come back; its id is retired.
    Gone,
}

impl AgentState {
    /// Known to the cluster and maybe still running work: connected or
    /// only disconnected, not yet unreachable or gone (the agents a new
    /// leader waits for, and those the removal limit counts).
    pub fn is_known(self) -> bool {
        matches!(self, AgentState::Registered | AgentState::Disconnected)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Registered => "REGISTERED",
            AgentState::Disconnected => "DISCONNECTED",
            AgentState::Unreachable => "UNREACHABLE",
            AgentState::Gone => "GONE",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub id: AgentId,
    pub hostname: String,
    pub ip: String,
    /// What the agent declared.
    pub total: Resources,
    pub attributes: BTreeMap<String, String>,
    pub domain: Option<Domain>,
    pub state: AgentState,
    /// The leader term in which the agent last (re)registered: after a
    /// leader change, agents with an older term have not come back yet.
    pub reregistered_term: u64,
    pub state_since_ms: u64,
    /// Derived: resources of the agent's non-terminal tasks.
    pub used: Resources,
    /// Derived: resources in outstanding offers.
    pub offered: Resources,
}

impl Agent {
    /// What is neither used nor offered.
    pub fn free(&self) -> Resources {
        self.total.minus(&self.used).minus(&self.offered)
    }

    pub fn is_active(&self) -> bool {
        self.state == AgentState::Registered
    }
}
