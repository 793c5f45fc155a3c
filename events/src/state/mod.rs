//! The cluster as the event log says it is.
//!
//! Owns `Cluster`: every entity of DESIGN.md (master, agents, frameworks,
//! tasks, offers, hosts, jobs) in ordered maps, plus a few derived indexes
//! that `apply` keeps in step so that hot paths (a status update, an
//! allocation cycle) need no scan. Only `apply` mutates a `Cluster`; the
//! invariants recompute every derived field and compare.

pub mod agent;
pub mod framework;
pub mod host;
pub mod job;
pub mod offer;
pub mod task;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{AgentId, FrameworkId, OfferId, TaskKey};

pub use agent::{Agent, AgentState, Domain};
pub use framework::Framework;
pub use host::{Host, HostState, MachineId, Unavailability, Window};
pub use job::{Job, JobKey};
pub use offer::{InverseAnswer, InverseOffer, Offer};
pub use orrery_proto::events::TaskState;
pub use task::Task;
pub use tasks::TaskTable;

/// Settings the leader decided with (recorded in `LeaderElected`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MasterConfig {
    pub offer_timeout_ms: u64,
    pub default_refuse_ms: u64,
    pub agent_reregister_timeout_ms: u64,
    pub drain_grace_ms: u64,
    /// Outstanding offers a framework may hold (0: no cap).
    pub offers_per_framework_max: u64,
}

impl MasterConfig {
    pub fn to_proto(&self) -> orrery_proto::events::MasterConfig {
        orrery_proto::events::MasterConfig {
            offer_timeout_ms: self.offer_timeout_ms,
            default_refuse_ms: self.default_refuse_ms,
            agent_reregister_timeout_ms: self.agent_reregister_timeout_ms,
            drain_grace_ms: self.drain_grace_ms,
            offers_per_framework_max: self.offers_per_framework_max,
        }
    }
}

/// The active master, as of the latest `LeaderElected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub term: u64,
    pub leader_id: u64,
    pub addr: String,
    /// The leader's HTTP admin address ("" for none).
    pub http_addr: String,
    pub domain: Option<Domain>,
    pub config: MasterConfig,
    pub elected_at_ms: u64,
}

/// The masters' group (raft membership) as `MastersChanged` recorded it.
/// Raft's own membership entries decide who votes; this is the audit trail
/// and what the leader checks a new change against.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MastersGroup {
    /// id → member; empty until the first recorded change (the group is
    /// then as bootstrapped from `--peers`).
    pub members: BTreeMap<u64, MasterMember>,
    /// Ids removed from the group: never used again (a removed master's
    /// old disk could otherwise vote in terms it already voted in).
    pub retired: BTreeSet<u64>,
    /// A change asked for and not yet recorded as settled.
    pub pending: Option<orrery_proto::events::MastersChangeRequested>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterMember {
    pub addr: String,
    pub voter: bool,
}

/// Counters from which the master mints ids; replay mints the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Sequences {
    pub next_agent: u64,
    pub next_framework: u64,
    pub next_offer: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    /// The index of the last applied event (0 = none).
    pub applied_index: u64,
    pub applied_term: u64,
    /// The `proposed_at_ms` of the last applied event.
    pub last_proposed_at_ms: u64,
    pub leader: Option<Leader>,
    /// Weighted DRF weights in thousandths; a role not listed weighs 1000.
    pub role_weights: BTreeMap<String, u64>,
    pub agents: BTreeMap<AgentId, Agent>,
    pub frameworks: BTreeMap<FrameworkId, Framework>,
    pub tasks: TaskTable,
    pub offers: BTreeMap<OfferId, Offer>,
    /// Decline filters: (framework, agent) → refused until (ms).
    pub filters: BTreeMap<(FrameworkId, AgentId), u64>,
    /// Inverse offers (maintenance), by id; minted from `seq.next_offer`.
    pub inverse_offers: BTreeMap<OfferId, InverseOffer>,
    pub schedule: Vec<Window>,
    /// Keyed by hostname.
    pub hosts: BTreeMap<String, Host>,
    pub jobs: BTreeMap<JobKey, Job>,
    pub seq: Sequences,
    /// Idempotency keys (`PRINCIPAL|KEY`) → the last event index of the
    /// command that carried them; the newest `IDEMPOTENCY_KEYS_MAX` kept.
    pub idempotency: BTreeMap<String, u64>,
    /// The same keys by index, oldest first (to forget the oldest).
    pub idempotency_by_index: BTreeMap<u64, String>,
    /// The masters' group as the log records it.
    pub masters: MastersGroup,

    // --- derived indexes (not in snapshots; rebuilt on load) ---------------
    /// Non-terminal and terminal tasks by agent.
    pub tasks_by_agent: BTreeMap<AgentId, BTreeSet<TaskKey>>,
    /// Agents (any state) by hostname.
    pub agents_by_host: BTreeMap<String, BTreeSet<AgentId>>,
    /// Outstanding offers by agent.
    pub offers_by_agent: BTreeMap<AgentId, BTreeSet<OfferId>>,
}

/// Idempotency keys remembered (a retry older than the newest this many
/// is decided again).
pub const IDEMPOTENCY_KEYS_MAX: usize = 100_000;

impl Cluster {
    /// Remembers that the command carrying `key` ended at event `index`.
    pub fn remember_key(&mut self, key: &str, index: u64) {
        if let Some(old) = self.idempotency.insert(key.to_owned(), index) {
            self.idempotency_by_index.remove(&old);
        }
        self.idempotency_by_index.insert(index, key.to_owned());
        while self.idempotency.len() > IDEMPOTENCY_KEYS_MAX {
            let Some((_, k)) = self.idempotency_by_index.pop_first() else {
                break;
            };
            self.idempotency.remove(&k);
        }
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn term(&self) -> u64 {
        self.leader.as_ref().map_or(0, |l| l.term)
    }

    pub fn task(&self, key: &TaskKey) -> Option<&Task> {
        self.tasks.get(key)
    }

    /// Tasks on an agent, in key order.
    pub fn tasks_on_agent<'a>(&'a self, agent_id: &AgentId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_agent
            .get(agent_id)
            .into_iter()
            .flatten()
            .filter_map(|k| self.tasks.get(k))
    }

    /// The host an agent runs on (every agent has one: apply creates it).
    pub fn host_of(&self, agent: &Agent) -> Option<&Host> {
        self.hosts.get(&agent.hostname)
    }

    /// The weight of a role in thousandths.
    pub fn role_weight_milli(&self, role: &str) -> u64 {
        self.role_weights.get(role).copied().unwrap_or(1000)
    }

    /// Rebuilds the derived indexes and caches from the primary maps. Used
    /// after loading a snapshot and by the invariants (which compare).
    pub fn rebuild_derived(&mut self) {
        self.tasks_by_agent.clear();
        self.agents_by_host.clear();
        self.offers_by_agent.clear();
        for agent in self.agents.values_mut() {
            agent.used = Default::default();
            agent.offered = Default::default();
        }
        for fw in self.frameworks.values_mut() {
            fw.allocated = Default::default();
        }
        for (id, agent) in &self.agents {
            self.agents_by_host
                .entry(agent.hostname.clone())
                .or_default()
                .insert(id.clone());
        }
        for (key, task) in self.tasks.iter() {
            self.tasks_by_agent
                .entry(task.agent_id.clone())
                .or_default()
                .insert(key.clone());
            if !task.is_terminal() {
                if let Some(a) = self.agents.get_mut(&task.agent_id) {
                    a.used.add(&task.resources);
                }
                if let Some(f) = self.frameworks.get_mut(&key.framework_id) {
                    f.allocated.add(&task.resources.scalars());
                }
            }
        }
        for (id, offer) in &self.offers {
            self.offers_by_agent
                .entry(offer.agent_id.clone())
                .or_default()
                .insert(id.clone());
            if let Some(a) = self.agents.get_mut(&offer.agent_id) {
                a.offered.add(&offer.resources);
            }
            if let Some(f) = self.frameworks.get_mut(&offer.framework_id) {
                f.allocated.add(&offer.resources.scalars());
            }
        }
    }
}
