//! The dry-run calls (`PlanMaintenance`, `PlanJobUpdate`): the request's
//! assumptions checked, the committed state copied, the core's `whatif` run
//! off the async threads (a long horizon over a large cluster is real CPU
//! work), and its report turned into the operator API's message.

use std::time::{SystemTime, UNIX_EPOCH};

use orrery_actors::master::{Log, MasterError};
use orrery_events::whatif::{self, Assumptions, Change, Report, HORIZON_MS_MAX};
use orrery_proto::operator as op;
use orrery_storage::StateAccess;
use tonic::Status;

/// The request's assumptions, defaults filled in; a bad number is refused
/// naming its field.
pub fn assumptions(a: Option<&op::DryRunAssumptions>) -> Result<Assumptions, Status> {
    let d = Assumptions::default();
    let Some(a) = a else {
        return Ok(d);
    };
    let ms = |field: &str, s: f64, default: u64| -> Result<u64, Status> {
        if !s.is_finite() || s < 0.0 || s * 1_000.0 > HORIZON_MS_MAX as f64 {
            return Err(Status::invalid_argument(format!(
                "assumptions.{field} must be between 0 and {} seconds, not {s}",
                HORIZON_MS_MAX / 1_000
            )));
        }
        Ok(if s == 0.0 {
            default
        } else {
            (s * 1_000.0).round() as u64
        })
    };
    Ok(Assumptions {
        task_start_ms: ms("task_start_seconds", a.task_start_seconds, d.task_start_ms)?,
        horizon_ms: ms("horizon_seconds", a.horizon_seconds, d.horizon_ms)?,
        frameworks_accept_inverse_offers: a.frameworks_accept_inverse_offers,
    })
}

/// Runs `change` on a copy of `log`'s committed state.
pub async fn run(
    log: &Log,
    change: Change,
    assume: Assumptions,
) -> Result<op::DryRunReport, Status> {
    let cluster = log.with_state(|m| m.cluster.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let a = assume.clone();
    let report = tokio::task::spawn_blocking(move || whatif::dry_run(&cluster, change, &a, now))
        .await
        .map_err(|e| Status::internal(format!("the dry run stopped: {e}")))?
        .map_err(|r| crate::grpc::status_of(MasterError::Rejected(r)))?;
    Ok(proto(report, &assume))
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1_000.0
}

fn proto(r: Report, a: &Assumptions) -> op::DryRunReport {
    op::DryRunReport {
        from_index: r.from_index,
        moves: r
            .moves
            .into_iter()
            .map(|m| {
                let (job, instance) = m.job.unwrap_or_default();
                let (to_task_id, to_host) = m.to.unwrap_or_default();
                op::PlannedMove {
                    framework_id: m.framework_id,
                    task_id: m.task_id,
                    job,
                    instance,
                    from_host: m.from_host,
                    to_task_id,
                    to_host,
                    stopped_after_seconds: secs(m.stopped_after_ms),
                    running_after_seconds: m.running_after_ms.map_or(-1.0, secs),
                    why: m.why,
                }
            })
            .collect(),
        below_sla: r
            .below_sla
            .into_iter()
            .map(|b| op::SlaBreach {
                job: b.job,
                instances: b.instances,
                max_unavailable: b.max_unavailable,
                fewest_available: b.fewest_available,
                after_seconds: secs(b.after_ms),
                already_before: b.already_before,
            })
            .collect(),
        hosts: r
            .hosts
            .into_iter()
            .map(|h| op::PlannedHost {
                hostname: h.hostname,
                state: h.state.to_owned(),
                drained_after_seconds: h.drained_after_ms.map_or(-1.0, secs),
            })
            .collect(),
        done: r.done_after_ms.is_some(),
        done_after_seconds: r.done_after_ms.map_or(0.0, secs),
        outcome: r.outcome,
        waiting: r.waiting,
        simulated_seconds: secs(r.simulated_ms),
        assumptions: Some(op::DryRunAssumptions {
            task_start_seconds: secs(a.task_start_ms),
            horizon_seconds: secs(a.horizon_ms),
            frameworks_accept_inverse_offers: a.frameworks_accept_inverse_offers,
        }),
    }
}
