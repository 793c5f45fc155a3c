//! One human line per event, for `orrery dev`, `orrery replay log` and
//! `replay history`. Pure formatting: it reads only the event itself.

use orrery_proto::events::{self as pb, envelope::Payload};

use crate::resources::Resources;
use crate::state::task::state_name;

fn res(r: Option<&pb::Resources>) -> String {
    Resources::from_logged(r).to_string()
}

fn machine(m: Option<&pb::MachineId>) -> String {
    match m {
        Some(m) if !m.ip.is_empty() => format!("{} ({})", m.hostname, m.ip),
        Some(m) => m.hostname.clone(),
        None => "?".into(),
    }
}

fn domain(d: Option<&pb::Domain>) -> String {
    d.map_or_else(
        || "no fault domain".into(),
        |d| format!("region {} zone {}", d.region, d.zone),
    )
}

fn reason_name(reason: i32) -> String {
    pb::TaskReason::try_from(reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REASON_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("reason {reason}"))
}

/// Explains one event in a line.
pub fn explain(payload: &Payload) -> String {
    match payload {
        Payload::LeaderElected(e) => format!(
            "master {} at {} leads term {} ({})",
            e.leader_id,
            e.leader_addr,
            e.term,
            domain(e.domain.as_ref())
        ),
        Payload::RoleWeightsSet(e) => format!(
            "role weights set: {}",
            e.weights
                .iter()
                .map(|w| format!("{}={}", w.role, w.weight_milli as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Payload::AgentRegistered(e) => format!(
            "agent {} registered on {} ({}) with {}, {}",
            e.agent_id,
            e.hostname,
            e.ip,
            res(e.resources.as_ref()),
            domain(e.domain.as_ref())
        ),
        Payload::AgentReregistered(e) => format!(
            "agent {} reregistered on {} with {}",
            e.agent_id,
            e.hostname,
            res(e.resources.as_ref())
        ),
        Payload::AgentDisconnected(e) => format!("agent {} disconnected", e.agent_id),
        Payload::AgentUnreachable(e) => {
            format!("agent {} is unreachable: {}", e.agent_id, e.reason)
        }
        Payload::AgentGone(e) => format!("agent {} is gone: {}", e.agent_id, e.reason),
        Payload::FrameworkSubscribed(e) => format!(
            "framework {} ({}) {} in role {}{}",
            e.framework_id,
            e.name,
            if e.failover {
                "failed over"
            } else {
                "subscribed"
            },
            e.role,
            if e.capabilities.is_empty() {
                String::new()
            } else {
                format!(
                    " [{}]",
                    e.capabilities
                        .iter()
                        .map(|&c| pb::FrameworkCapability::try_from(c)
                            .map(|c| c.as_str_name().to_owned())
                            .unwrap_or_else(|_| c.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        Payload::FrameworkDisconnected(e) => format!("framework {} disconnected", e.framework_id),
        Payload::FrameworkRemoved(e) => format!(
            "framework {} removed ({})",
            e.framework_id,
            pb::FrameworkRemovalReason::try_from(e.reason)
                .map(|r| r.as_str_name())
                .unwrap_or("?")
        ),
        Payload::FrameworkSuppressed(e) => {
            format!("framework {} suppressed offers", e.framework_id)
        }
        Payload::FrameworkRevived(e) => format!("framework {} revived offers", e.framework_id),
        Payload::OffersMade(e) => {
            let shown: Vec<String> = e
                .offers
                .iter()
                .take(3)
                .map(|o| {
                    format!(
                        "{}: {} of {} to {}",
                        o.offer_id,
                        res(o.resources.as_ref()),
                        o.agent_id,
                        o.framework_id
                    )
                })
                .collect();
            let more = e.offers.len().saturating_sub(3);
            format!(
                "{} offer(s): {}{}",
                e.offers.len(),
                shown.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            )
        }
        Payload::OffersRescinded(e) => format!(
            "offer(s) {} rescinded ({})",
            e.offer_ids.join(", "),
            pb::RescindReason::try_from(e.reason)
                .map(|r| r.as_str_name())
                .unwrap_or("?")
        ),
        Payload::OffersDeclined(e) => format!(
            "framework {} declined {} until {} ms",
            e.framework_id,
            e.offer_ids.join(", "),
            e.refuse_until_ms
        ),
        Payload::OffersAccepted(e) => format!(
            "framework {} accepted {}",
            e.framework_id,
            e.offer_ids.join(", ")
        ),
        Payload::DeclineFiltersExpired(e) => {
            format!("{} decline filter(s) expired", e.filters.len())
        }
        Payload::InverseOffersMade(e) => {
            let shown: Vec<String> = e
                .inverse_offers
                .iter()
                .map(|o| {
                    format!(
                        "{} asks framework {} to vacate agent {} on {}",
                        o.offer_id, o.framework_id, o.agent_id, o.hostname
                    )
                })
                .collect();
            format!("inverse offer(s): {}", shown.join("; "))
        }
        Payload::InverseOffersAnswered(e) => format!(
            "framework {} {} inverse offer(s) {}",
            e.framework_id,
            if e.accepted { "accepted" } else { "declined" },
            e.offer_ids.join(", ")
        ),
        Payload::InverseOffersRescinded(e) => {
            format!("inverse offer(s) {} rescinded", e.offer_ids.join(", "))
        }
        Payload::TaskLaunched(e) => format!(
            "task {}/{} launched on agent {} with {}",
            e.framework_id,
            e.task_id,
            e.agent_id,
            res(e.resources.as_ref())
        ),
        Payload::TaskStatusUpdated(e) => {
            let state = pb::TaskState::try_from(e.state).map_or("?", state_name);
            let mut line = format!("task {}/{} is {}", e.framework_id, e.task_id, state);
            if e.reason != 0 {
                line.push_str(&format!(" ({})", reason_name(e.reason)));
            }
            if let Some(code) = e.exit_code {
                line.push_str(&format!(", exit code {code}"));
            }
            if !e.message.is_empty() {
                line.push_str(&format!(": {}", e.message));
            }
            line
        }
        Payload::TaskStatusAcknowledged(e) => format!(
            "framework {} acknowledged update {} of task {}",
            e.framework_id, e.uuid, e.task_id
        ),
        Payload::TaskKillRequested(e) => format!(
            "kill of task {}/{} requested ({})",
            e.framework_id,
            e.task_id,
            reason_name(e.reason)
        ),
        Payload::MaintenanceScheduleUpdated(e) => format!(
            "maintenance schedule set: {} window(s), {} machine(s)",
            e.windows.len(),
            e.windows.iter().map(|w| w.machines.len()).sum::<usize>()
        ),
        Payload::HostDrainStarted(e) => format!("host {} is DRAINING", machine(e.machine.as_ref())),
        Payload::HostDrained(e) => format!("host {} is DRAINED", machine(e.machine.as_ref())),
        Payload::HostDown(e) => format!("host {} is DOWN", machine(e.machine.as_ref())),
        Payload::HostUp(e) => format!("host {} is UP", machine(e.machine.as_ref())),
        Payload::JobCreated(e) => job_line("created", e.spec.as_ref()),
        Payload::JobUpdated(e) if e.rollback => job_line("rolled back", e.spec.as_ref()),
        Payload::JobUpdated(e) => job_line("updated", e.spec.as_ref()),
        Payload::JobUpdateFinished(e) => format!(
            "job {}: every instance runs version {}; the update is finished",
            crate::state::JobKey::from_proto(e.key.as_ref()),
            e.version
        ),
        Payload::JobKilled(e) => format!(
            "job {} killed",
            crate::state::JobKey::from_proto(e.key.as_ref())
        ),
        Payload::MastersChangeRequested(e) => {
            match pb::MastersChange::try_from(e.change).unwrap_or_default() {
                pb::MastersChange::AddLearner => {
                    format!(
                        "master {} at {} asked to join as a learner",
                        e.node_id, e.addr
                    )
                }
                pb::MastersChange::Promote => {
                    format!("master {} to become a voter", e.node_id)
                }
                pb::MastersChange::Remove => format!("master {} to leave the group", e.node_id),
                pb::MastersChange::Unspecified => format!("master {}: no change named", e.node_id),
            }
        }
        Payload::MastersChanged(e) => {
            let list = |voter: bool| {
                let ids: Vec<String> = e
                    .members
                    .iter()
                    .filter(|m| m.voter == voter)
                    .map(|m| m.node_id.to_string())
                    .collect();
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(",")
                }
            };
            let group = format!("masters: voters {}, learners {}", list(true), list(false));
            if e.outcome.is_empty() {
                group
            } else {
                format!("{group} ({})", e.outcome)
            }
        }
    }
}

fn job_line(verb: &str, spec: Option<&pb::JobSpec>) -> String {
    let spec = spec.cloned().unwrap_or_default();
    format!(
        "job {} {verb}: {} instance(s) of {}",
        crate::state::JobKey::from_proto(spec.key.as_ref()),
        spec.instances,
        res(spec.resources.as_ref())
    )
}
