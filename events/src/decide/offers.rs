//! Offers: the allocation cycle, offer expiry, accept (with launches) and
//! decline.
//!
//! Accept re-checks everything the offer promised (the agent still active,
//! its host still UP, the region still allowed) because time passed between
//! the offer and the accept — Nomad's "the leader re-checks a plan before
//! committing it".

use std::collections::BTreeSet;

use orrery_proto::events as pb;

use super::frameworks::connected;
use super::{check_count, check_name, limits, require_leader, seconds_to_ms, Event, NowMs};
use crate::allocator;
use crate::command::TaskSpec;
use crate::ids::{AgentId, FrameworkId, OfferId, TaskKey};
use crate::projections::domains;
use crate::rejection::Rejection;
use crate::resources::Resources;
use crate::state::{Cluster, Offer};

pub(super) fn allocate(c: &Cluster, now_ms: NowMs) -> Result<Vec<Event>, Rejection> {
    require_leader(c)?;
    let mut events = allocator::allocate(c, now_ms);
    // Inverse offers continue the offer sequence after the regular ones.
    let minted: u64 = events
        .iter()
        .map(|e| match e {
            Event::OffersMade(m) => m.offers.len() as u64,
            _ => 0,
        })
        .sum();
    let inverse = crate::projections::maintenance::inverse_offers_due(c, c.seq.next_offer + minted);
    if !inverse.is_empty() {
        events.push(Event::InverseOffersMade(pb::InverseOffersMade {
            inverse_offers: inverse,
        }));
    }
    Ok(events)
}

pub(super) fn expire(c: &Cluster, now_ms: NowMs) -> Result<Vec<Event>, Rejection> {
    let expired: Vec<String> = c
        .offers
        .values()
        .filter(|o| o.expires_at_ms != 0 && o.expires_at_ms <= now_ms)
        .map(|o| o.id.0.clone())
        .collect();
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Event::OffersRescinded(pb::OffersRescinded {
        offer_ids: expired,
        reason: pb::RescindReason::RescindOfferTimeout as i32,
    })])
}

/// The offers named by a call: known, owned by the framework, listed once.
fn owned_offers<'c>(
    c: &'c Cluster,
    framework_id: &FrameworkId,
    offer_ids: &[OfferId],
) -> Result<Vec<&'c Offer>, Rejection> {
    check_count("offer ids", offer_ids.len(), limits::OFFERS_PER_CALL_MAX)?;
    if offer_ids.is_empty() {
        return Err(Rejection::InvalidField {
            field: "offer_ids",
            problem: "no offer given".to_owned(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut offers = Vec::with_capacity(offer_ids.len());
    for id in offer_ids {
        id.validate()?;
        // One offer (the common case) cannot repeat; skip the set.
        if offer_ids.len() > 1 && !seen.insert(id) {
            return Err(Rejection::DuplicateOffer {
                offer_id: id.clone(),
            });
        }
        let offer = c.offers.get(id).ok_or_else(|| Rejection::UnknownOffer {
            offer_id: id.clone(),
        })?;
        if offer.framework_id != *framework_id {
            return Err(Rejection::OfferNotOwned {
                offer_id: id.clone(),
                owner: offer.framework_id.clone(),
                framework_id: framework_id.clone(),
            });
        }
        offers.push(offer);
    }
    Ok(offers)
}

fn refuse_ms(c: &Cluster, refuse_seconds: Option<f64>) -> Result<u64, Rejection> {
    match refuse_seconds {
        Some(s) => seconds_to_ms("refuse_seconds", s),
        None => Ok(require_leader(c)?.config.default_refuse_ms),
    }
}

pub(super) fn accept(
    c: &Cluster,
    framework_id: FrameworkId,
    offer_ids: Vec<OfferId>,
    launches: Vec<TaskSpec>,
    refuse_seconds: Option<f64>,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    framework_id.validate()?;
    let fw = connected(c, &framework_id)?;
    check_count("tasks", launches.len(), limits::TASKS_PER_ACCEPT_MAX)?;
    let offers = owned_offers(c, &framework_id, &offer_ids)?;
    let agent_id: AgentId = offers[0].agent_id.clone();
    if let Some(other) = offers.iter().find(|o| o.agent_id != agent_id) {
        return Err(Rejection::OffersSpanAgents {
            first: agent_id,
            second: other.agent_id.clone(),
        });
    }
    let refuse = refuse_ms(c, refuse_seconds)?;
    // Re-check what the offer promised.
    let agent = super::agents::known(c, &agent_id)?;
    if !agent.is_active() {
        return Err(Rejection::AgentNotActive {
            agent_id,
            state: agent.state.as_str(),
        });
    }
    if let Some(host) = c.host_of(agent) {
        if !host.state.accepts_work() && !launches.is_empty() {
            return Err(Rejection::HostInMaintenance {
                hostname: host.machine.hostname.clone(),
                state: host.state.as_str(),
            });
        }
    }
    if !domains::may_offer(c, fw, agent) {
        return Err(domains::remote_rejection(c, fw, agent));
    }

    let mut offered = Resources::default();
    for o in &offers {
        offered.add(&o.resources);
    }
    let mut requested = Resources::default();
    let mut ids = BTreeSet::new();
    let mut events = Vec::with_capacity(launches.len() + 1);
    events.push(Event::OffersAccepted(pb::OffersAccepted {
        framework_id: framework_id.0.clone(),
        offer_ids: offer_ids.iter().map(|id| id.0.clone()).collect(),
        refuse_until_ms: if refuse == 0 {
            0
        } else {
            now_ms.saturating_add(refuse)
        },
    }));
    for spec in launches {
        let key = TaskKey::new(framework_id.clone(), spec.task_id.clone());
        validate_task(&key, &spec)?;
        if !ids.insert(spec.task_id.clone()) || c.tasks.contains_key(&key) {
            return Err(Rejection::DuplicateTaskId { task: key });
        }
        if requested.ports.intersects(&spec.resources.ports) {
            return Err(Rejection::InvalidTask {
                task: key,
                problem: "its ports overlap another task's in the same accept".to_owned(),
            });
        }
        requested.add(&spec.resources);
        if !offered.contains(&requested) {
            return Err(Rejection::ResourcesExceedOffer {
                requested: requested.to_string(),
                offered: offered.to_string(),
            });
        }
        events.push(Event::TaskLaunched(pb::TaskLaunched {
            framework_id: framework_id.0.clone(),
            task_id: spec.task_id.0,
            agent_id: agent_id.0.clone(),
            name: if spec.name.is_empty() {
                key.task_id.0.clone()
            } else {
                spec.name
            },
            resources: Some(spec.resources.to_proto()),
            command: Some(spec.command),
            job: spec.job.map(|k| k.to_proto()),
            instance: spec.instance,
            job_version: spec.job_version,
        }));
    }
    Ok(events)
}

/// The rules every launch is held to (the job scheduler checks its own
/// with them before it places, and `job create` before it accepts a job).
pub(crate) fn validate_task(key: &TaskKey, spec: &TaskSpec) -> Result<(), Rejection> {
    spec.task_id.validate()?;
    check_name("task name", &spec.name, true)?;
    spec.resources.validate()?;
    let invalid = |problem: &str| Rejection::InvalidTask {
        task: key.clone(),
        problem: problem.to_owned(),
    };
    if spec.resources.cpus_milli == 0 && spec.resources.mem_mb == 0 {
        return Err(invalid("it asks for neither cpus nor mem"));
    }
    let cmd = &spec.command;
    if cmd.shell.is_empty() == cmd.argv.is_empty() {
        return Err(invalid(
            "its command needs exactly one of a shell line or an argv",
        ));
    }
    if cmd.shell.len() > limits::TEXT_LEN_MAX
        || cmd.argv.len() > 1024
        || cmd.argv.iter().any(|a| a.len() > limits::TEXT_LEN_MAX)
        || cmd.environment.len() > 1024
    {
        return Err(invalid("its command is too large"));
    }
    for v in &cmd.environment {
        if v.name.is_empty()
            || v.name.contains('=')
            || v.name.contains('\0')
            || v.value.contains('\0')
        {
            return Err(invalid(
                "an environment variable name is empty or holds '=' or NUL",
            ));
        }
    }
    Ok(())
}

pub(super) fn decline(
    c: &Cluster,
    framework_id: FrameworkId,
    offer_ids: Vec<OfferId>,
    refuse_seconds: Option<f64>,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    framework_id.validate()?;
    connected(c, &framework_id)?;
    owned_offers(c, &framework_id, &offer_ids)?;
    let refuse = refuse_ms(c, refuse_seconds)?;
    Ok(vec![Event::OffersDeclined(pb::OffersDeclined {
        framework_id: framework_id.0,
        offer_ids: offer_ids.into_iter().map(|id| id.0).collect(),
        refuse_until_ms: now_ms.saturating_add(refuse),
    })])
}
