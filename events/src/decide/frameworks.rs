//! Framework lifecycle: subscribe (or fail over), disconnect, failover
//! expiry, teardown, suppress and revive.

use orrery_proto::events::{self as pb, FrameworkCapability, TaskReason};

use super::{check_name, limits, require_leader, Event, NowMs};
use crate::command::FrameworkSubscription;
use crate::ids::FrameworkId;
use crate::projections::offers;
use crate::rejection::Rejection;
use crate::state::{Cluster, Framework};

pub(super) fn subscribe(c: &Cluster, sub: FrameworkSubscription) -> Result<Vec<Event>, Rejection> {
    require_leader(c)?;
    check_name("framework name", &sub.name, false)?;
    check_name("role", &sub.role, false)?;
    if sub.role.contains('/') || sub.role.starts_with('.') {
        return Err(Rejection::InvalidField {
            field: "role",
            problem: format!("role {:?} may not contain '/' or start with '.'", sub.role),
        });
    }
    check_name("principal", &sub.principal, true)?;
    if sub.failover_timeout_ms > limits::DURATION_MS_MAX {
        return Err(Rejection::InvalidField {
            field: "failover_timeout",
            problem: "is longer than one year".to_owned(),
        });
    }
    let mut capabilities = Vec::new();
    if sub.region_aware {
        capabilities.push(FrameworkCapability::RegionAware as i32);
    }
    if sub.partition_aware {
        capabilities.push(FrameworkCapability::PartitionAware as i32);
    }
    let mut events = Vec::new();
    let (framework_id, failover) = match sub.framework_id {
        None => (format!("F{}", c.seq.next_framework + 1), false),
        Some(id) => {
            id.validate()?;
            let fw = known(c, &id)?;
            if fw.principal != sub.principal {
                return Err(Rejection::PrincipalMismatch {
                    framework_id: id,
                    bound: fw.principal.clone(),
                    given: sub.principal,
                });
            }
            // Offers made to the previous scheduler instance are void.
            events.extend(offers::rescind_for_framework(
                c,
                &id,
                pb::RescindReason::RescindFrameworkGone,
            ));
            (id.0, true)
        }
    };
    events.insert(
        0,
        Event::FrameworkSubscribed(pb::FrameworkSubscribed {
            framework_id,
            name: sub.name,
            role: sub.role,
            capabilities,
            checkpoint: sub.checkpoint,
            failover_timeout_ms: sub.failover_timeout_ms,
            principal: sub.principal,
            failover,
        }),
    );
    Ok(events)
}

pub(super) fn disconnect(c: &Cluster, framework_id: FrameworkId) -> Result<Vec<Event>, Rejection> {
    let fw = known(c, &framework_id)?;
    if !fw.connected {
        return Ok(Vec::new());
    }
    let mut events = vec![Event::FrameworkDisconnected(pb::FrameworkDisconnected {
        framework_id: framework_id.0.clone(),
    })];
    events.extend(offers::rescind_for_framework(
        c,
        &framework_id,
        pb::RescindReason::RescindFrameworkGone,
    ));
    Ok(events)
}

/// The failover timeout passed with no new scheduler instance: the
/// framework is removed and its tasks are killed (Mesos semantics).
pub(super) fn expire(
    c: &Cluster,
    framework_id: FrameworkId,
    now_ms: NowMs,
) -> Result<Vec<Event>, Rejection> {
    let fw = known(c, &framework_id)?;
    if fw.connected {
        return Err(Rejection::FrameworkConnected { framework_id });
    }
    let deadline = fw.disconnected_at_ms.saturating_add(fw.failover_timeout_ms);
    if now_ms < deadline {
        return Err(Rejection::FailoverNotExpired {
            framework_id,
            remaining_ms: deadline - now_ms,
        });
    }
    Ok(remove(
        c,
        fw,
        pb::FrameworkRemovalReason::RemovalFailoverTimeout,
    ))
}

pub(super) fn teardown(c: &Cluster, framework_id: FrameworkId) -> Result<Vec<Event>, Rejection> {
    let fw = known(c, &framework_id)?;
    Ok(remove(c, fw, pb::FrameworkRemovalReason::RemovalTeardown))
}

fn remove(c: &Cluster, fw: &Framework, reason: pb::FrameworkRemovalReason) -> Vec<Event> {
    let mut events =
        offers::rescind_for_framework(c, &fw.id, pb::RescindReason::RescindFrameworkGone);
    events.extend(crate::projections::maintenance::rescind_inverse(c, |o| {
        o.framework_id == fw.id
    }));
    events.push(Event::FrameworkRemoved(pb::FrameworkRemoved {
        framework_id: fw.id.0.clone(),
        reason: reason as i32,
    }));
    for task in c
        .tasks
        .of_framework(&fw.id)
        .filter(|t| !t.is_terminal() && !t.kill_requested)
    {
        events.push(Event::TaskKillRequested(pb::TaskKillRequested {
            framework_id: task.key.framework_id.0.clone(),
            task_id: task.key.task_id.0.clone(),
            reason: TaskReason::ReasonFrameworkRemoved as i32,
        }));
    }
    events
}

pub(super) fn suppress(c: &Cluster, framework_id: FrameworkId) -> Result<Vec<Event>, Rejection> {
    let fw = known(c, &framework_id)?;
    if fw.suppressed {
        return Ok(Vec::new());
    }
    Ok(vec![Event::FrameworkSuppressed(pb::FrameworkSuppressed {
        framework_id: framework_id.0,
    })])
}

/// Revive clears the suppression and every decline filter of the framework.
pub(super) fn revive(c: &Cluster, framework_id: FrameworkId) -> Result<Vec<Event>, Rejection> {
    let fw = known(c, &framework_id)?;
    let has_filters = c.filters.keys().any(|(f, _)| *f == framework_id);
    if !fw.suppressed && !has_filters {
        return Ok(Vec::new());
    }
    Ok(vec![Event::FrameworkRevived(pb::FrameworkRevived {
        framework_id: framework_id.0,
    })])
}

/// A framework that exists and has not been removed.
pub(super) fn known<'c>(c: &'c Cluster, id: &FrameworkId) -> Result<&'c Framework, Rejection> {
    let fw = c
        .frameworks
        .get(id)
        .ok_or_else(|| Rejection::UnknownFramework {
            framework_id: id.clone(),
        })?;
    if fw.removed {
        return Err(Rejection::FrameworkRemoved {
            framework_id: id.clone(),
        });
    }
    Ok(fw)
}

/// A framework that may make calls now: known and connected.
pub(super) fn connected<'c>(c: &'c Cluster, id: &FrameworkId) -> Result<&'c Framework, Rejection> {
    let fw = known(c, id)?;
    if !fw.connected {
        return Err(Rejection::FrameworkNotConnected {
            framework_id: id.clone(),
        });
    }
    Ok(fw)
}
