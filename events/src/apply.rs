//! `apply`: the one place a `Cluster` changes.
//!
//! Sits at the end of the data flow (DESIGN.md): committed envelopes arrive
//! here, on every replica, in log order. Apply is mechanical: one exhaustive
//! `match` with no `_ =>` (a new event variant is a compile error here), no
//! business rule, no validation (decide did that before the event was
//! written), no clock (time is the envelope's `proposed_at_ms`).
//!
//! A log that breaks apply's preconditions (a gap, an event about an entity
//! that does not exist) cannot come from a correct leader: `apply` asserts.
//! `try_apply` reports the same conditions as an `ApplyError`, for `orrery
//! replay check` and for storage replaying a log from disk, which must stop
//! with a message rather than a panic.

use orrery_proto::events::{self as pb, envelope::Payload};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

use crate::ids::{AgentId, FrameworkId, OfferId, TaskKey};
use crate::resources::Resources;
use crate::state::task::is_terminal;
use crate::state::{
    Agent, AgentState, Cluster, Domain, Framework, Host, HostState, InverseAnswer, InverseOffer,
    Job, JobKey, Leader, MachineId, MasterConfig, Offer, Task, Unavailability, Window,
};

/// Why an envelope could not be applied: the log is not one a correct
/// leader writes. Fatal for the replica.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ApplyError {
    #[error("log gap: expected event index {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("event {index} has no payload (written by a newer Orrery?)")]
    NoPayload { index: u64 },
    #[error("event {index} ({event}) names unknown {kind} {id}")]
    Dangling {
        index: u64,
        event: &'static str,
        kind: &'static str,
        id: String,
    },
}

/// Applies one committed envelope. Panics on a log no correct leader writes;
/// see [`try_apply`]. In debug builds the invariants run after every event.
pub fn apply(cluster: &mut Cluster, envelope: &pb::Envelope) {
    if let Err(e) = try_apply(cluster, envelope) {
        panic!("apply: {e}");
    }
    #[cfg(debug_assertions)]
    if let Err(v) = crate::invariants::check(cluster) {
        panic!("invariant broken after event {}: {v}", envelope.index);
    }
}

/// Applies one envelope, or says why the log is broken.
pub fn try_apply(cluster: &mut Cluster, envelope: &pb::Envelope) -> Result<(), ApplyError> {
    let expected = cluster.applied_index + 1;
    if envelope.index != expected {
        return Err(ApplyError::Gap {
            expected,
            found: envelope.index,
        });
    }
    let payload = envelope.payload.as_ref().ok_or(ApplyError::NoPayload {
        index: envelope.index,
    })?;
    let mut cx = Cx {
        c: cluster,
        index: envelope.index,
        term: envelope.term,
        now_ms: envelope.proposed_at_ms,
        event: crate::codec::event_name(payload),
    };
    cx.payload(payload)?;
    if !envelope.idempotency_key.is_empty() {
        cluster.remember_key(&envelope.idempotency_key, envelope.index);
    }
    cluster.applied_index = envelope.index;
    cluster.applied_term = envelope.term;
    cluster.last_proposed_at_ms = envelope.proposed_at_ms;
    Ok(())
}

fn dangling(index: u64, event: &'static str, kind: &'static str, id: impl ToString) -> ApplyError {
    ApplyError::Dangling {
        index,
        event,
        kind,
        id: id.to_string(),
    }
}

struct Cx<'a> {
    c: &'a mut Cluster,
    index: u64,
    term: u64,
    now_ms: u64,
    event: &'static str,
}

pub(crate) fn domain_from(p: Option<&pb::Domain>) -> Option<Domain> {
    p.map(|d| Domain {
        region: d.region.clone(),
        zone: d.zone.clone(),
    })
}

pub(crate) fn attributes_from(p: &[pb::Attribute]) -> std::collections::BTreeMap<String, String> {
    p.iter()
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect()
}

pub(crate) fn machine_from(p: Option<&pb::MachineId>) -> MachineId {
    p.map_or_else(
        || MachineId {
            hostname: String::new(),
            ip: String::new(),
        },
        |m| MachineId {
            hostname: m.hostname.clone(),
            ip: m.ip.clone(),
        },
    )
}

pub(crate) fn unavailability_from(p: Option<&pb::Unavailability>) -> Unavailability {
    p.map_or(
        Unavailability {
            start_ns: 0,
            duration_ns: None,
        },
        |u| Unavailability {
            start_ns: u.start_ns,
            duration_ns: u.duration_ns,
        },
    )
}

pub(crate) fn windows_from(p: &[pb::MaintenanceWindow]) -> Vec<Window> {
    p.iter()
        .map(|w| Window {
            machines: w.machines.iter().map(|m| machine_from(Some(m))).collect(),
            unavailability: unavailability_from(w.unavailability.as_ref()),
        })
        .collect()
}

pub(crate) fn config_from(p: Option<&pb::MasterConfig>) -> MasterConfig {
    p.map_or_else(MasterConfig::default, |c| MasterConfig {
        offer_timeout_ms: c.offer_timeout_ms,
        default_refuse_ms: c.default_refuse_ms,
        agent_reregister_timeout_ms: c.agent_reregister_timeout_ms,
        drain_grace_ms: c.drain_grace_ms,
        offers_per_framework_max: c.offers_per_framework_max,
    })
}

impl Cx<'_> {
    fn dangling(&self, kind: &'static str, id: impl ToString) -> ApplyError {
        dangling(self.index, self.event, kind, id)
    }

    fn agent_mut(&mut self, id: &str) -> Result<&mut Agent, ApplyError> {
        let (index, event) = (self.index, self.event);
        self.c
            .agents
            .get_mut(id)
            .ok_or_else(|| dangling(index, event, "agent", id))
    }

    fn framework_mut(&mut self, id: &str) -> Result<&mut Framework, ApplyError> {
        let (index, event) = (self.index, self.event);
        self.c
            .frameworks
            .get_mut(id)
            .ok_or_else(|| dangling(index, event, "framework", id))
    }

    /// Looks a task up without allocating a key (the hot path of apply).
    fn task_mut(&mut self, framework_id: &str, task_id: &str) -> Result<&mut Task, ApplyError> {
        let (index, event) = (self.index, self.event);
        self.c
            .tasks
            .get_mut_by(framework_id, task_id)
            .ok_or_else(|| dangling(index, event, "task", format!("{framework_id}/{task_id}")))
    }

    fn host_mut(&mut self, m: Option<&pb::MachineId>) -> &mut Host {
        let machine = machine_from(m);
        ensure_host(self.c, &machine, self.now_ms)
    }

    fn payload(&mut self, payload: &Payload) -> Result<(), ApplyError> {
        let now_ms = self.now_ms;
        match payload {
            Payload::LeaderElected(e) => {
                self.c.leader = Some(Leader {
                    term: e.term,
                    leader_id: e.leader_id,
                    addr: e.leader_addr.clone(),
                    http_addr: e.http_addr.clone(),
                    domain: domain_from(e.domain.as_ref()),
                    config: config_from(e.config.as_ref()),
                    elected_at_ms: now_ms,
                });
            }
            Payload::RoleWeightsSet(e) => {
                self.c.role_weights = e
                    .weights
                    .iter()
                    .map(|w| (w.role.clone(), w.weight_milli))
                    .collect();
            }
            Payload::AgentRegistered(e) => {
                let id = AgentId::from(e.agent_id.as_str());
                self.c.seq.next_agent += 1;
                let agent = Agent {
                    id: id.clone(),
                    hostname: e.hostname.clone(),
                    ip: e.ip.clone(),
                    total: Resources::from_logged(e.resources.as_ref()),
                    attributes: attributes_from(&e.attributes),
                    domain: domain_from(e.domain.as_ref()),
                    state: AgentState::Registered,
                    reregistered_term: self.term,
                    state_since_ms: now_ms,
                    used: Resources::default(),
                    offered: Resources::default(),
                };
                let machine = MachineId {
                    hostname: e.hostname.clone(),
                    ip: e.ip.clone(),
                };
                ensure_host(self.c, &machine, now_ms);
                self.c
                    .agents_by_host
                    .entry(e.hostname.clone())
                    .or_default()
                    .insert(id.clone());
                self.c.agents.insert(id, agent);
            }
            Payload::AgentReregistered(e) => {
                let term = self.term;
                let a = self.agent_mut(&e.agent_id)?;
                a.ip = e.ip.clone();
                a.total = Resources::from_logged(e.resources.as_ref());
                a.attributes = attributes_from(&e.attributes);
                a.domain = domain_from(e.domain.as_ref());
                a.state = AgentState::Registered;
                a.reregistered_term = term;
                a.state_since_ms = now_ms;
            }
            Payload::AgentDisconnected(e) => {
                self.set_agent_state(&e.agent_id, AgentState::Disconnected)?
            }
            Payload::AgentUnreachable(e) => {
                self.set_agent_state(&e.agent_id, AgentState::Unreachable)?
            }
            Payload::AgentGone(e) => self.set_agent_state(&e.agent_id, AgentState::Gone)?,
            Payload::FrameworkSubscribed(e) => {
                let id = FrameworkId::from(e.framework_id.as_str());
                let region_aware = e
                    .capabilities
                    .contains(&(pb::FrameworkCapability::RegionAware as i32));
                let partition_aware = e
                    .capabilities
                    .contains(&(pb::FrameworkCapability::PartitionAware as i32));
                if !e.failover {
                    self.c.seq.next_framework += 1;
                }
                let term = self.term;
                let fw = self
                    .c
                    .frameworks
                    .entry(id.clone())
                    .or_insert_with(|| Framework {
                        id,
                        name: String::new(),
                        role: String::new(),
                        region_aware: false,
                        partition_aware: false,
                        checkpoint: false,
                        failover_timeout_ms: 0,
                        principal: e.principal.clone(),
                        connected: false,
                        suppressed: false,
                        disconnected_at_ms: 0,
                        removed: false,
                        subscribed_term: term,
                        allocated: Resources::default(),
                    });
                fw.name = e.name.clone();
                fw.role = e.role.clone();
                fw.region_aware = region_aware;
                fw.partition_aware = partition_aware;
                fw.checkpoint = e.checkpoint;
                fw.failover_timeout_ms = e.failover_timeout_ms;
                fw.connected = true;
                // Mesos: a SUBSCRIBE names its suppressed roles, and none
                // here, so a failover wants offers again. (Kept suppressed,
                // a scheduler that failed over with work pending waited
                // for a revive nobody sent: found by the simulator.)
                fw.suppressed = false;
                fw.disconnected_at_ms = 0;
                fw.subscribed_term = term;
            }
            Payload::FrameworkDisconnected(e) => {
                let fw = self.framework_mut(&e.framework_id)?;
                fw.connected = false;
                fw.disconnected_at_ms = now_ms;
            }
            Payload::FrameworkRemoved(e) => {
                let fw = self.framework_mut(&e.framework_id)?;
                fw.connected = false;
                fw.removed = true;
            }
            Payload::FrameworkSuppressed(e) => {
                self.framework_mut(&e.framework_id)?.suppressed = true;
            }
            Payload::FrameworkRevived(e) => {
                self.framework_mut(&e.framework_id)?.suppressed = false;
                let fid = FrameworkId::from(e.framework_id.as_str());
                self.c.filters.retain(|(f, _), _| *f != fid);
            }
            Payload::OffersMade(e) => {
                for o in &e.offers {
                    self.add_offer(o)?;
                }
            }
            Payload::OffersRescinded(e) => {
                for id in &e.offer_ids {
                    self.remove_offer(id)?;
                }
            }
            Payload::OffersDeclined(e) => {
                for id in &e.offer_ids {
                    let offer = self.remove_offer(id)?;
                    self.add_filter(offer, e.refuse_until_ms);
                }
            }
            Payload::OffersAccepted(e) => {
                for id in &e.offer_ids {
                    let offer = self.remove_offer(id)?;
                    if e.refuse_until_ms > 0 {
                        self.add_filter(offer, e.refuse_until_ms);
                    }
                }
            }
            Payload::DeclineFiltersExpired(e) => {
                for k in &e.filters {
                    self.c.filters.remove(&(
                        FrameworkId::from(k.framework_id.as_str()),
                        AgentId::from(k.agent_id.as_str()),
                    ));
                }
            }
            Payload::InverseOffersMade(e) => {
                for o in &e.inverse_offers {
                    if !self.c.agents.contains_key(o.agent_id.as_str()) {
                        return Err(self.dangling("agent", &o.agent_id));
                    }
                    if !self.c.frameworks.contains_key(o.framework_id.as_str()) {
                        return Err(self.dangling("framework", &o.framework_id));
                    }
                    self.c.seq.next_offer += 1;
                    let id = OfferId::from(o.offer_id.as_str());
                    self.c.inverse_offers.insert(
                        id.clone(),
                        InverseOffer {
                            id,
                            framework_id: FrameworkId::from(o.framework_id.as_str()),
                            agent_id: AgentId::from(o.agent_id.as_str()),
                            hostname: o.hostname.clone(),
                            unavailability: unavailability_from(o.unavailability.as_ref()),
                            answer: InverseAnswer::Outstanding,
                            answered_at_ms: 0,
                        },
                    );
                }
            }
            Payload::InverseOffersAnswered(e) => {
                let (index, event, now_ms) = (self.index, self.event, self.now_ms);
                for id in &e.offer_ids {
                    let o = self
                        .c
                        .inverse_offers
                        .get_mut(id.as_str())
                        .ok_or_else(|| dangling(index, event, "inverse offer", id))?;
                    o.answer = if e.accepted {
                        InverseAnswer::Accepted
                    } else {
                        InverseAnswer::Declined
                    };
                    o.answered_at_ms = now_ms;
                }
            }
            Payload::InverseOffersRescinded(e) => {
                for id in &e.offer_ids {
                    if self.c.inverse_offers.remove(id.as_str()).is_none() {
                        return Err(self.dangling("inverse offer", id));
                    }
                }
            }
            Payload::TaskLaunched(e) => self.launch(e)?,
            Payload::TaskStatusUpdated(e) => self.status(e)?,
            Payload::TaskStatusAcknowledged(e) => {
                let t = self.task_mut(&e.framework_id, &e.task_id)?;
                if t.status_uuid == e.uuid {
                    t.acknowledged = true;
                }
            }
            Payload::TaskKillRequested(e) => {
                self.task_mut(&e.framework_id, &e.task_id)?.kill_requested = true;
            }
            Payload::MaintenanceScheduleUpdated(e) => {
                self.c.schedule = windows_from(&e.windows);
                for w in &e.windows {
                    for m in &w.machines {
                        self.host_mut(Some(m));
                    }
                }
            }
            Payload::HostDrainStarted(e) => {
                self.set_host_state(e.machine.as_ref(), HostState::Draining)
            }
            Payload::HostDrained(e) => self.set_host_state(e.machine.as_ref(), HostState::Drained),
            Payload::HostDown(e) => self.set_host_state(e.machine.as_ref(), HostState::Down),
            Payload::HostUp(e) => self.set_host_state(e.machine.as_ref(), HostState::Up),
            Payload::JobCreated(e) => {
                let spec = e.spec.clone().unwrap_or_default();
                let key = JobKey::from_proto(spec.key.as_ref());
                self.c.jobs.insert(
                    key.clone(),
                    Job {
                        key,
                        spec,
                        created_at_ms: now_ms,
                        version: 1,
                        previous: None,
                    },
                );
            }
            Payload::JobUpdated(e) => {
                let spec = e.spec.clone().unwrap_or_default();
                let key = JobKey::from_proto(spec.key.as_ref());
                let err = self.dangling("job", &key);
                let job = self.c.jobs.get_mut(&key).ok_or(err)?;
                let old = std::mem::replace(&mut job.spec, spec);
                job.previous = if e.rollback { None } else { Some(old) };
                job.version += 1;
            }
            Payload::MastersChangeRequested(e) => {
                self.c.masters.pending = Some(e.clone());
            }
            Payload::MastersChanged(e) => {
                let g = &mut self.c.masters;
                let members: BTreeMap<u64, crate::state::MasterMember> = e
                    .members
                    .iter()
                    .map(|m| {
                        (
                            m.node_id,
                            crate::state::MasterMember {
                                addr: m.addr.clone(),
                                voter: m.voter,
                            },
                        )
                    })
                    .collect();
                // Who was in the group (or asked to leave it) and is not now
                // is gone for good.
                let mut before: BTreeSet<u64> = g.members.keys().copied().collect();
                if let Some(p) = &g.pending {
                    if p.change == pb::MastersChange::Remove as i32 {
                        before.insert(p.node_id);
                    }
                }
                g.retired
                    .extend(before.into_iter().filter(|id| !members.contains_key(id)));
                g.members = members;
                g.pending = None;
            }
            Payload::JobUpdateFinished(e) => {
                let key = JobKey::from_proto(e.key.as_ref());
                let err = self.dangling("job", &key);
                let job = self.c.jobs.get_mut(&key).ok_or(err)?;
                job.previous = None;
            }
            Payload::JobKilled(e) => {
                let key = JobKey::from_proto(e.key.as_ref());
                let err = self.dangling("job", &key);
                self.c.jobs.remove(&key).ok_or(err)?;
            }
        }
        Ok(())
    }

    fn set_agent_state(&mut self, id: &str, state: AgentState) -> Result<(), ApplyError> {
        let now_ms = self.now_ms;
        let a = self.agent_mut(id)?;
        a.state = state;
        a.state_since_ms = now_ms;
        Ok(())
    }

    fn set_host_state(&mut self, m: Option<&pb::MachineId>, state: HostState) {
        let now_ms = self.now_ms;
        let h = self.host_mut(m);
        h.state = state;
        h.state_since_ms = now_ms;
    }

    fn add_offer(&mut self, o: &pb::Offer) -> Result<(), ApplyError> {
        let id = OfferId::from(o.offer_id.as_str());
        let resources = Resources::from_logged(o.resources.as_ref());
        let scalars = resources.scalars();
        self.agent_mut(&o.agent_id)?.offered.add(&resources);
        self.framework_mut(&o.framework_id)?.allocated.add(&scalars);
        self.c.seq.next_offer += 1;
        let offer = Offer {
            id: id.clone(),
            framework_id: FrameworkId::from(o.framework_id.as_str()),
            agent_id: AgentId::from(o.agent_id.as_str()),
            resources,
            expires_at_ms: o.expires_at_ms,
            unavailability: o
                .unavailability
                .as_ref()
                .map(|u| unavailability_from(Some(u))),
        };
        self.c
            .offers_by_agent
            .entry(offer.agent_id.clone())
            .or_default()
            .insert(id.clone());
        self.c.offers.insert(id, offer);
        Ok(())
    }

    fn remove_offer(&mut self, id: &str) -> Result<Offer, ApplyError> {
        let (index, event) = (self.index, self.event);
        let offer = self
            .c
            .offers
            .remove(id)
            .ok_or_else(|| dangling(index, event, "offer", id))?;
        if let Some(set) = self.c.offers_by_agent.get_mut(&offer.agent_id) {
            set.remove(id);
            if set.is_empty() {
                self.c.offers_by_agent.remove(&offer.agent_id);
            }
        }
        if let Some(a) = self.c.agents.get_mut(&offer.agent_id) {
            a.offered.subtract(&offer.resources);
        }
        if let Some(f) = self.c.frameworks.get_mut(&offer.framework_id) {
            f.allocated.subtract(&offer.resources.scalars());
        }
        Ok(offer)
    }

    fn add_filter(&mut self, offer: Offer, until_ms: u64) {
        let e = self
            .c
            .filters
            .entry((offer.framework_id, offer.agent_id))
            .or_insert(0);
        *e = (*e).max(until_ms);
    }

    fn launch(&mut self, e: &pb::TaskLaunched) -> Result<(), ApplyError> {
        let key = TaskKey::new(e.framework_id.as_str(), e.task_id.as_str());
        let resources = Resources::from_logged(e.resources.as_ref());
        self.agent_mut(&e.agent_id)?.used.add(&resources);
        self.framework_mut(&e.framework_id)?
            .allocated
            .add(&resources.scalars());
        let agent_id = AgentId::from(e.agent_id.as_str());
        match self.c.tasks_by_agent.get_mut(e.agent_id.as_str()) {
            Some(set) => {
                set.insert(key.clone());
            }
            None => {
                self.c
                    .tasks_by_agent
                    .insert(agent_id.clone(), [key.clone()].into());
            }
        }
        let task = Task {
            key: key.clone(),
            agent_id,
            name: e.name.clone(),
            resources,
            command: e.command.clone().unwrap_or_default(),
            job: e.job.as_ref().map(|k| JobKey::from_proto(Some(k))),
            instance: e.instance,
            job_version: e.job_version,
            state: pb::TaskState::TaskStaging,
            status_uuid: String::new(),
            acknowledged: true,
            reason: pb::TaskReason::Unspecified,
            message: String::new(),
            exit_code: None,
            healthy: None,
            kill_requested: false,
            launched_at_ms: self.now_ms,
            updated_at_ms: self.now_ms,
            update_count: 0,
            was_terminal: false,
        };
        self.c.tasks.insert(key, task);
        Ok(())
    }

    fn status(&mut self, e: &pb::TaskStatusUpdated) -> Result<(), ApplyError> {
        let now_ms = self.now_ms;
        let t = self.task_mut(&e.framework_id, &e.task_id)?;
        let was = is_terminal(t.state);
        t.state = e.state();
        // clone_from reuses the buffers: status updates are the hot path.
        t.status_uuid.clone_from(&e.uuid);
        t.acknowledged = false;
        t.reason = e.reason();
        t.message.clone_from(&e.message);
        if e.exit_code.is_some() {
            t.exit_code = e.exit_code;
        }
        if e.healthy.is_some() {
            t.healthy = e.healthy;
        }
        t.updated_at_ms = now_ms;
        t.update_count = t.update_count.saturating_add(1);
        let now_terminal = is_terminal(t.state);
        t.was_terminal |= now_terminal;
        // Resources are released when the task reaches a terminal state, not
        // when the update is acknowledged (Mesos
        // ReleaseResourcesForTerminalTaskWithPendingUpdates).
        if was != now_terminal {
            let resources = t.resources.clone();
            let agent_id = t.agent_id.clone();
            let framework_id = t.key.framework_id.clone();
            let scalars = resources.scalars();
            if let Some(a) = self.c.agents.get_mut(&agent_id) {
                if now_terminal {
                    a.used.subtract(&resources)
                } else {
                    a.used.add(&resources)
                }
            }
            if let Some(f) = self.c.frameworks.get_mut(&framework_id) {
                if now_terminal {
                    f.allocated.subtract(&scalars)
                } else {
                    f.allocated.add(&scalars)
                }
            }
        }
        Ok(())
    }
}

/// The host record for a machine, created UP on first sight.
fn ensure_host<'c>(c: &'c mut Cluster, machine: &MachineId, now_ms: u64) -> &'c mut Host {
    let h = c
        .hosts
        .entry(machine.hostname.clone())
        .or_insert_with(|| Host {
            machine: machine.clone(),
            state: HostState::Up,
            state_since_ms: now_ms,
        });
    if h.machine.ip.is_empty() && !machine.ip.is_empty() {
        h.machine.ip = machine.ip.clone();
    }
    h
}
