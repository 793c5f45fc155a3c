//! Snapshots: a whole `Cluster` to protobuf and back.
//!
//! Storage takes snapshots to purge its log; `orrery replay` uses them as
//! checkpoints; the digest hashes their encoding. Everything primary is
//! written; derived indexes are rebuilt on load. Loading validates (a
//! snapshot file can be corrupt) and says what is wrong.

use orrery_proto::events as pb;
use prost::Message;
use thiserror::Error;

use crate::apply::{
    attributes_from, config_from, domain_from, machine_from, unavailability_from, windows_from,
};
use crate::ids::{AgentId, FrameworkId, OfferId, TaskKey};
use crate::resources::Resources;
use crate::state::{
    Agent, AgentState, Cluster, Framework, Host, HostState, InverseAnswer, InverseOffer, Job,
    JobKey, Leader, Offer, Sequences, Task,
};

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("snapshot is not valid protobuf: {0}")]
    Protobuf(String),
    #[error("snapshot {what} {id}: {problem}")]
    Invalid {
        what: &'static str,
        id: String,
        problem: String,
    },
}

fn domain_proto(d: &Option<crate::state::Domain>) -> Option<pb::Domain> {
    d.as_ref().map(crate::state::Domain::to_proto)
}

pub fn to_proto(c: &Cluster) -> pb::Snapshot {
    pb::Snapshot {
        applied_index: c.applied_index,
        applied_term: c.applied_term,
        leader: c.leader.as_ref().map(|l| pb::LeaderElected {
            term: l.term,
            leader_id: l.leader_id,
            leader_addr: l.addr.clone(),
            http_addr: l.http_addr.clone(),
            domain: domain_proto(&l.domain),
            config: Some(l.config.to_proto()),
        }),
        leader_elected_at_ms: c.leader.as_ref().map_or(0, |l| l.elected_at_ms),
        role_weights: c
            .role_weights
            .iter()
            .map(|(role, &weight_milli)| pb::RoleWeight {
                role: role.clone(),
                weight_milli,
            })
            .collect(),
        agents: c
            .agents
            .values()
            .map(|a| pb::SnapshotAgent {
                agent_id: a.id.0.clone(),
                hostname: a.hostname.clone(),
                ip: a.ip.clone(),
                resources: Some(a.total.to_proto()),
                attributes: a
                    .attributes
                    .iter()
                    .map(|(name, value)| pb::Attribute {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                domain: domain_proto(&a.domain),
                state: match a.state {
                    AgentState::Registered => pb::AgentStateCode::AgentRegistered,
                    AgentState::Disconnected => pb::AgentStateCode::AgentDisconnected,
                    AgentState::Unreachable => pb::AgentStateCode::AgentUnreachable,
                    AgentState::Gone => pb::AgentStateCode::AgentGone,
                } as i32,
                reregistered_term: a.reregistered_term,
                state_since_ms: a.state_since_ms,
            })
            .collect(),
        frameworks: c
            .frameworks
            .values()
            .map(|f| {
                let capabilities = f.capabilities_proto();
                pb::SnapshotFramework {
                    info: Some(pb::FrameworkSubscribed {
                        framework_id: f.id.0.clone(),
                        name: f.name.clone(),
                        role: f.role.clone(),
                        capabilities,
                        checkpoint: f.checkpoint,
                        failover_timeout_ms: f.failover_timeout_ms,
                        principal: f.principal.clone(),
                        failover: false,
                    }),
                    connected: f.connected,
                    suppressed: f.suppressed,
                    disconnected_at_ms: f.disconnected_at_ms,
                    removed: f.removed,
                    subscribed_term: f.subscribed_term,
                }
            })
            .collect(),
        tasks: c
            .tasks
            .values()
            .map(|t| pb::SnapshotTask {
                launch: Some(pb::TaskLaunched {
                    framework_id: t.key.framework_id.0.clone(),
                    task_id: t.key.task_id.0.clone(),
                    agent_id: t.agent_id.0.clone(),
                    name: t.name.clone(),
                    resources: Some(t.resources.to_proto()),
                    command: Some(t.command.clone()),
                    job: t.job.as_ref().map(JobKey::to_proto),
                    instance: t.instance,
                    job_version: t.job_version,
                }),
                state: t.state as i32,
                status_uuid: t.status_uuid.clone(),
                acknowledged: t.acknowledged,
                reason: t.reason as i32,
                message: t.message.clone(),
                exit_code: t.exit_code,
                kill_requested: t.kill_requested,
                launched_at_ms: t.launched_at_ms,
                updated_at_ms: t.updated_at_ms,
                update_count: t.update_count,
                was_terminal: t.was_terminal,
                healthy: t.healthy,
            })
            .collect(),
        offers: c
            .offers
            .values()
            .map(|o| pb::Offer {
                offer_id: o.id.0.clone(),
                framework_id: o.framework_id.0.clone(),
                agent_id: o.agent_id.0.clone(),
                resources: Some(o.resources.to_proto()),
                expires_at_ms: o.expires_at_ms,
                unavailability: o.unavailability.map(|u| pb::Unavailability {
                    start_ns: u.start_ns,
                    duration_ns: u.duration_ns,
                }),
            })
            .collect(),
        inverse_offers: c
            .inverse_offers
            .values()
            .map(|o| pb::SnapshotInverseOffer {
                offer: Some(o.to_proto()),
                answer: o.answer.code(),
                answered_at_ms: o.answered_at_ms,
            })
            .collect(),
        filters: c
            .filters
            .iter()
            .map(|((f, a), &refuse_until_ms)| pb::SnapshotFilter {
                key: Some(pb::DeclineFilterKey {
                    framework_id: f.0.clone(),
                    agent_id: a.0.clone(),
                }),
                refuse_until_ms,
            })
            .collect(),
        schedule: c
            .schedule
            .iter()
            .map(crate::projections::maintenance::window_proto)
            .collect(),
        hosts: c
            .hosts
            .values()
            .map(|h| pb::SnapshotHost {
                machine: Some(crate::projections::maintenance::machine_proto(&h.machine)),
                state: match h.state {
                    HostState::Up => pb::HostStateCode::HostStateUp,
                    HostState::Draining => pb::HostStateCode::HostStateDraining,
                    HostState::Drained => pb::HostStateCode::HostStateDrained,
                    HostState::Down => pb::HostStateCode::HostStateDown,
                } as i32,
                state_since_ms: h.state_since_ms,
            })
            .collect(),
        jobs: c
            .jobs
            .values()
            .map(|j| pb::SnapshotJob {
                spec: Some(j.spec.clone()),
                created_at_ms: j.created_at_ms,
                version: j.version,
                previous_spec: j.previous.clone(),
            })
            .collect(),
        next_agent_seq: c.seq.next_agent,
        next_framework_seq: c.seq.next_framework,
        next_offer_seq: c.seq.next_offer,
        last_proposed_at_ms: c.last_proposed_at_ms,
        idempotency_keys: c
            .idempotency_by_index
            .iter()
            .map(|(&index, key)| pb::IdempotencyKey {
                key: key.clone(),
                index,
            })
            .collect(),
        masters: c
            .masters
            .members
            .iter()
            .map(|(&node_id, m)| pb::MasterMember {
                node_id,
                addr: m.addr.clone(),
                voter: m.voter,
            })
            .collect(),
        retired_masters: c.masters.retired.iter().copied().collect(),
        pending_masters_change: c.masters.pending.clone(),
    }
}

pub fn encode(c: &Cluster) -> Vec<u8> {
    to_proto(c).encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<Cluster, SnapshotError> {
    let p = pb::Snapshot::decode(bytes).map_err(|e| SnapshotError::Protobuf(e.to_string()))?;
    from_proto(p)
}

fn invalid(what: &'static str, id: &str, problem: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        what,
        id: id.to_owned(),
        problem: problem.into(),
    }
}

pub fn from_proto(p: pb::Snapshot) -> Result<Cluster, SnapshotError> {
    let mut c = Cluster::new();
    c.applied_index = p.applied_index;
    c.applied_term = p.applied_term;
    c.last_proposed_at_ms = p.last_proposed_at_ms;
    c.leader = p.leader.as_ref().map(|l| Leader {
        term: l.term,
        leader_id: l.leader_id,
        addr: l.leader_addr.clone(),
        http_addr: l.http_addr.clone(),
        domain: domain_from(l.domain.as_ref()),
        config: config_from(l.config.as_ref()),
        elected_at_ms: p.leader_elected_at_ms,
    });
    c.role_weights = p
        .role_weights
        .iter()
        .map(|w| (w.role.clone(), w.weight_milli))
        .collect();
    c.seq = Sequences {
        next_agent: p.next_agent_seq,
        next_framework: p.next_framework_seq,
        next_offer: p.next_offer_seq,
    };
    for k in &p.idempotency_keys {
        if k.key.is_empty() || k.index > p.applied_index {
            return Err(SnapshotError::Invalid {
                what: "idempotency key",
                id: k.key.clone(),
                problem: format!(
                    "at event {}, empty or past the snapshot's end (event {})",
                    k.index, p.applied_index
                ),
            });
        }
        c.remember_key(&k.key, k.index);
    }
    for m in &p.masters {
        if m.node_id == 0
            || c.masters
                .members
                .insert(
                    m.node_id,
                    crate::state::MasterMember {
                        addr: m.addr.clone(),
                        voter: m.voter,
                    },
                )
                .is_some()
        {
            return Err(invalid(
                "master",
                &m.node_id.to_string(),
                "id 0 or listed twice in the masters' group",
            ));
        }
    }
    c.masters.retired = p.retired_masters.iter().copied().collect();
    c.masters.pending = p.pending_masters_change.clone();
    for a in p.agents {
        let state = match pb::AgentStateCode::try_from(a.state) {
            Ok(pb::AgentStateCode::AgentRegistered) => AgentState::Registered,
            Ok(pb::AgentStateCode::AgentDisconnected) => AgentState::Disconnected,
            Ok(pb::AgentStateCode::AgentUnreachable) => AgentState::Unreachable,
            Ok(pb::AgentStateCode::AgentGone) => AgentState::Gone,
            _ => {
                return Err(invalid(
                    "agent",
                    &a.agent_id,
                    format!("unknown state {}", a.state),
                ))
            }
        };
        let id = AgentId::from(a.agent_id.as_str());
        let agent = Agent {
            id: id.clone(),
            hostname: a.hostname,
            ip: a.ip,
            total: Resources::from_logged(a.resources.as_ref()),
            attributes: attributes_from(&a.attributes),
            domain: domain_from(a.domain.as_ref()),
            state,
            reregistered_term: a.reregistered_term,
            state_since_ms: a.state_since_ms,
            used: Resources::default(),
            offered: Resources::default(),
        };
        if c.agents.insert(id, agent).is_some() {
            return Err(invalid("agent", &a.agent_id, "appears twice"));
        }
    }
    for f in p.frameworks {
        let info = f.info.unwrap_or_default();
        let id = FrameworkId::from(info.framework_id.as_str());
        let fw = Framework {
            id: id.clone(),
            name: info.name,
            role: info.role,
            region_aware: info
                .capabilities
                .contains(&(pb::FrameworkCapability::RegionAware as i32)),
            partition_aware: info
                .capabilities
                .contains(&(pb::FrameworkCapability::PartitionAware as i32)),
            checkpoint: info.checkpoint,
            failover_timeout_ms: info.failover_timeout_ms,
            principal: info.principal,
            connected: f.connected,
            suppressed: f.suppressed,
            disconnected_at_ms: f.disconnected_at_ms,
            removed: f.removed,
            subscribed_term: f.subscribed_term,
            allocated: Resources::default(),
        };
        if c.frameworks.insert(id.clone(), fw).is_some() {
            return Err(invalid("framework", id.as_str(), "appears twice"));
        }
    }
    for t in p.tasks {
        let l = t.launch.clone().unwrap_or_default();
        let key = TaskKey::new(l.framework_id.as_str(), l.task_id.as_str());
        let state = match pb::TaskState::try_from(t.state) {
            Ok(pb::TaskState::Unspecified) | Err(_) => {
                return Err(invalid(
                    "task",
                    &key.to_string(),
                    format!("unknown state {}", t.state),
                ))
            }
            Ok(s) => s,
        };
        let task = Task {
            key: key.clone(),
            agent_id: AgentId::from(l.agent_id.as_str()),
            name: l.name,
            resources: Resources::from_logged(l.resources.as_ref()),
            command: l.command.unwrap_or_default(),
            job: l.job.as_ref().map(|k| JobKey::from_proto(Some(k))),
            instance: l.instance,
            job_version: l.job_version,
            state,
            status_uuid: t.status_uuid.clone(),
            acknowledged: t.acknowledged,
            reason: t.reason(),
            message: t.message.clone(),
            exit_code: t.exit_code,
            healthy: t.healthy,
            kill_requested: t.kill_requested,
            launched_at_ms: t.launched_at_ms,
            updated_at_ms: t.updated_at_ms,
            update_count: t.update_count,
            was_terminal: t.was_terminal,
        };
        if c.tasks.insert(key.clone(), task).is_some() {
            return Err(invalid("task", &key.to_string(), "appears twice"));
        }
    }
    for o in p.offers {
        let id = OfferId::from(o.offer_id.as_str());
        let offer = Offer {
            id: id.clone(),
            framework_id: FrameworkId::from(o.framework_id.as_str()),
            agent_id: AgentId::from(o.agent_id.as_str()),
            resources: Resources::from_logged(o.resources.as_ref()),
            expires_at_ms: o.expires_at_ms,
            unavailability: o
                .unavailability
                .as_ref()
                .map(|u| unavailability_from(Some(u))),
        };
        if c.offers.insert(id, offer).is_some() {
            return Err(invalid("offer", &o.offer_id, "appears twice"));
        }
    }
    for s in p.inverse_offers {
        let o = s.offer.unwrap_or_default();
        let answer = InverseAnswer::from_code(s.answer).ok_or_else(|| {
            invalid(
                "inverse offer",
                &o.offer_id,
                format!("unknown answer {}", s.answer),
            )
        })?;
        let id = OfferId::from(o.offer_id.as_str());
        let inverse = InverseOffer {
            id: id.clone(),
            framework_id: FrameworkId::from(o.framework_id.as_str()),
            agent_id: AgentId::from(o.agent_id.as_str()),
            hostname: o.hostname.clone(),
            unavailability: unavailability_from(o.unavailability.as_ref()),
            answer,
            answered_at_ms: s.answered_at_ms,
        };
        if c.inverse_offers.insert(id, inverse).is_some() {
            return Err(invalid("inverse offer", &o.offer_id, "appears twice"));
        }
    }
    for f in p.filters {
        let k = f.key.unwrap_or_default();
        c.filters.insert(
            (
                FrameworkId::from(k.framework_id.as_str()),
                AgentId::from(k.agent_id.as_str()),
            ),
            f.refuse_until_ms,
        );
    }
    c.schedule = windows_from(&p.schedule);
    for h in p.hosts {
        let machine = machine_from(h.machine.as_ref());
        let state = match pb::HostStateCode::try_from(h.state) {
            Ok(pb::HostStateCode::HostStateUp) => HostState::Up,
            Ok(pb::HostStateCode::HostStateDraining) => HostState::Draining,
            Ok(pb::HostStateCode::HostStateDrained) => HostState::Drained,
            Ok(pb::HostStateCode::HostStateDown) => HostState::Down,
            _ => {
                return Err(invalid(
                    "host",
                    &machine.hostname,
                    format!("unknown state {}", h.state),
                ))
            }
        };
        c.hosts.insert(
            machine.hostname.clone(),
            Host {
                machine,
                state,
                state_since_ms: h.state_since_ms,
            },
        );
    }
    for j in p.jobs {
        let spec = j.spec.unwrap_or_default();
        let key = JobKey::from_proto(spec.key.as_ref());
        c.jobs.insert(
            key.clone(),
            Job {
                key,
                spec,
                created_at_ms: j.created_at_ms,
                version: j.version,
                previous: j.previous_spec,
            },
        );
    }
    c.rebuild_derived();
    Ok(c)
}
