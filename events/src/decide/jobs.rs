//! Jobs as records: create, update, kill, and the end or rollback of a
//! rolling update. Keeping N instances running is the job scheduler's work
//! (`crate::jobs::plan`); this file validates specs.

use orrery_proto::events::{self as pb, TaskReason};

use super::{check_count, limits, Event};
use crate::rejection::Rejection;
use crate::resources::Resources;
use crate::state::{Cluster, JobKey};

/// Marathon's constraint operators, and whether each takes a value.
const OPERATORS: &[(&str, ValueRule)] = &[
    ("IS", ValueRule::Required),
    ("LIKE", ValueRule::Required),
    ("UNLIKE", ValueRule::Required),
    ("UNIQUE", ValueRule::None),
    ("CLUSTER", ValueRule::Optional),
    ("GROUP_BY", ValueRule::OptionalCount),
    ("MAX_PER", ValueRule::Count),
];

#[derive(Clone, Copy)]
enum ValueRule {
    None,
    Required,
    Optional,
    OptionalCount,
    Count,
}

fn check_constraints(constraints: &[pb::Constraint]) -> Result<(), Rejection> {
    check_count("constraints", constraints.len(), limits::CONSTRAINTS_MAX)?;
    for (i, con) in constraints.iter().enumerate() {
        let position = i + 1;
        let err = |problem: String| Rejection::InvalidConstraint {
            position,
            constraint: format!("[{:?}, {:?}, {:?}]", con.field, con.operator, con.value),
            problem,
        };
        if con.field.is_empty() || con.field.len() > limits::NAME_LEN_MAX {
            return Err(err("the field is empty or too long".to_owned()));
        }
        let Some((_, rule)) = OPERATORS.iter().find(|(op, _)| *op == con.operator) else {
            return Err(err(format!(
                "unknown operator {:?} (known: IS, LIKE, UNLIKE, UNIQUE, CLUSTER, GROUP_BY, MAX_PER)",
                con.operator
            )));
        };
        let count_ok = |v: &str| v.parse::<u32>().is_ok_and(|n| n >= 1);
        match rule {
            ValueRule::None if !con.value.is_empty() => {
                return Err(err(format!("{} takes no value", con.operator)))
            }
            ValueRule::Required if con.value.is_empty() => {
                return Err(err(format!("{} needs a value", con.operator)))
            }
            ValueRule::Count if !count_ok(&con.value) => {
                return Err(err(format!(
                    "{} needs a positive whole number",
                    con.operator
                )))
            }
            ValueRule::OptionalCount if !con.value.is_empty() && !count_ok(&con.value) => {
                return Err(err(format!(
                    "{} takes an optional positive whole number",
                    con.operator
                )))
            }
            _ => {}
        }
        if con.value.len() > limits::NAME_LEN_MAX {
            return Err(err("the value is too long".to_owned()));
        }
        // Compiled as placement will compile it: a bad pattern is refused
        // here, not found at every placement (PENDING for ever).
        if matches!(con.operator.as_str(), "LIKE" | "UNLIKE") {
            if let Err(e) = regex::Regex::new(&format!("^(?:{})$", con.value)) {
                return Err(err(format!(
                    "{:?} is not a regular expression: {e}",
                    con.value
                )));
            }
        }
    }
    Ok(())
}

fn check_health_check(hc: &pb::HealthCheck) -> Result<(), Rejection> {
    let bad = |problem: String| Rejection::InvalidField {
        field: "health_check",
        problem,
    };
    match hc.kind.as_str() {
        "command" if hc.command.is_empty() => {
            return Err(bad("a command check needs a command".into()))
        }
        "command" | "http" | "tcp" => {}
        other => {
            return Err(bad(format!(
                "kind {:?} is not command, http or tcp",
                crate::ids::truncate_for_message(other)
            )))
        }
    }
    if hc.interval_ms == 0 || hc.timeout_ms == 0 {
        return Err(bad("interval and timeout must be longer than zero".into()));
    }
    if hc.consecutive_failures == 0 {
        return Err(bad("consecutive_failures must be at least 1".into()));
    }
    for (what, ms) in [
        ("interval", hc.interval_ms),
        ("timeout", hc.timeout_ms),
        ("grace_period", hc.grace_period_ms),
    ] {
        if ms > limits::DURATION_MS_MAX {
            return Err(bad(format!("{what} is longer than one year")));
        }
    }
    if hc.command.len() > limits::TEXT_LEN_MAX || hc.path.len() > limits::NAME_LEN_MAX {
        return Err(bad("the command or path is too long".into()));
    }
    Ok(())
}

/// The longest role, env or name: a task id (`ROLE.ENV.NAME.I.N`) stays
/// well within the 256 bytes of an id.
pub const JOB_PART_LEN_MAX: usize = 64;

/// A job key's part (Aurora's rule): ASCII letters, digits, `_`, `-` and
/// `.`, not `.` or `..`, at most [`JOB_PART_LEN_MAX`] bytes. The parts name
/// task ids, and task ids name sandbox directories on agents: a space, a
/// `/`, `..` or a non-ASCII letter would be refused at every launch (and
/// once stalled the job scheduler), so they are refused here.
fn check_job_part(field: &'static str, v: &str) -> Result<(), Rejection> {
    let problem = if v.is_empty() {
        Some("is empty".to_owned())
    } else if v.len() > JOB_PART_LEN_MAX {
        Some(format!("is longer than {JOB_PART_LEN_MAX} bytes"))
    } else if v == "." || v == ".." {
        Some(format!("{v:?} is not a name"))
    } else {
        v.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map(|c| {
                format!(
                    "{:?} holds {c:?}: only ASCII letters, digits, '_', '-' and '.' are allowed",
                    crate::ids::truncate_for_message(v)
                )
            })
    };
    match problem {
        Some(problem) => Err(Rejection::InvalidField { field, problem }),
        None => Ok(()),
    }
}

fn validate(spec: &pb::JobSpec) -> Result<JobKey, Rejection> {
    let key = spec.key.as_ref().ok_or(Rejection::InvalidField {
        field: "job key",
        problem: "is missing".to_owned(),
    })?;
    for (field, v) in [("role", &key.role), ("env", &key.env), ("name", &key.name)] {
        check_job_part(field, v)?;
    }
    if spec.instances == 0 || spec.instances > limits::JOB_INSTANCES_MAX {
        return Err(Rejection::InvalidField {
            field: "instances",
            problem: format!(
                "{} is not between 1 and {}",
                spec.instances,
                limits::JOB_INSTANCES_MAX
            ),
        });
    }
    let cmd = spec.command.clone().unwrap_or_default();
    if cmd.shell.is_empty() == cmd.argv.is_empty() {
        return Err(Rejection::InvalidField {
            field: "command",
            problem: "needs exactly one of a shell line or an argv".to_owned(),
        });
    }
    let resources = Resources::from_proto(&spec.resources.clone().unwrap_or_default())?;
    if resources.cpus_milli == 0 && resources.mem_mb == 0 {
        return Err(Rejection::InvalidResources {
            problem: "a job's task must ask for cpus or mem".to_owned(),
        });
    }
    if spec.max_unavailable > spec.instances {
        return Err(Rejection::InvalidField {
            field: "sla.max_unavailable",
            problem: format!(
                "{} is more than the {} instances",
                spec.max_unavailable, spec.instances
            ),
        });
    }
    check_constraints(&spec.constraints)?;
    // The task every instance will launch, held to the launch's own rules
    // now (its longest id: the last instance, the largest task count), so
    // that nothing is found only at launch.
    let key_now = JobKey::from_proto(Some(key));
    let probe = crate::jobs::task_spec(&key_now, spec, 0, spec.instances - 1, u32::MAX, &resources);
    super::offers::validate_task(
        &crate::ids::TaskKey::new(
            crate::ids::FrameworkId::new(crate::jobs::FRAMEWORK_NAME.to_owned()),
            probe.task_id.clone(),
        ),
        &probe,
    )
    .map_err(|e| Rejection::InvalidField {
        field: "task",
        problem: format!("every launch would be refused: {e}"),
    })?;
    if let Some(hc) = &spec.health_check {
        check_health_check(hc)?;
    }
    if let Some(p) = &spec.restart_policy {
        if p.initial_backoff_ms > p.max_backoff_ms || p.max_backoff_ms > limits::DURATION_MS_MAX {
            return Err(Rejection::InvalidField {
                field: "restart_policy",
                problem: format!(
                    "initial backoff {} ms must not exceed the max backoff {} ms (at most one year)",
                    p.initial_backoff_ms, p.max_backoff_ms
                ),
            });
        }
    }
    Ok(JobKey::from_proto(Some(key)))
}

pub(super) fn create(c: &Cluster, spec: pb::JobSpec) -> Result<Vec<Event>, Rejection> {
    let key = validate(&spec)?;
    if c.jobs.contains_key(&key) {
        return Err(Rejection::JobExists {
            key: key.to_string(),
        });
    }
    Ok(vec![Event::JobCreated(pb::JobCreated { spec: Some(spec) })])
}

pub(super) fn update(c: &Cluster, spec: pb::JobSpec) -> Result<Vec<Event>, Rejection> {
    let key = validate(&spec)?;
    if !c.jobs.contains_key(&key) {
        return Err(Rejection::UnknownJob {
            key: key.to_string(),
        });
    }
    Ok(vec![Event::JobUpdated(pb::JobUpdated {
        spec: Some(spec),
        rollback: false,
    })])
}

fn job_at<'a>(
    c: &'a Cluster,
    key: &JobKey,
    version: u64,
) -> Result<&'a crate::state::Job, Rejection> {
    let job = c.jobs.get(key).ok_or_else(|| Rejection::UnknownJob {
        key: key.to_string(),
    })?;
    if job.version != version || job.previous.is_none() {
        return Err(Rejection::InvalidField {
            field: "job version",
            problem: format!(
                "job {key} is at version {} {}; the request was for version {version}",
                job.version,
                if job.previous.is_some() {
                    "(updating)"
                } else {
                    "(no update in progress)"
                }
            ),
        });
    }
    Ok(job)
}

/// The rolling update reached every instance.
pub(super) fn finish_update(
    c: &Cluster,
    key: JobKey,
    version: u64,
) -> Result<Vec<Event>, Rejection> {
    job_at(c, &key, version)?;
    Ok(vec![Event::JobUpdateFinished(pb::JobUpdateFinished {
        key: Some(key.to_proto()),
        version,
    })])
}

/// The new version failed during its update: back to the previous spec.
pub(super) fn rollback(c: &Cluster, key: JobKey, version: u64) -> Result<Vec<Event>, Rejection> {
    let job = job_at(c, &key, version)?;
    Ok(vec![Event::JobUpdated(pb::JobUpdated {
        spec: job.previous.clone(),
        rollback: true,
    })])
}

/// Killing a job removes it and asks for every live task of it to be killed.
pub(super) fn kill(c: &Cluster, key: JobKey) -> Result<Vec<Event>, Rejection> {
    if !c.jobs.contains_key(&key) {
        return Err(Rejection::UnknownJob {
            key: key.to_string(),
        });
    }
    let mut events = vec![Event::JobKilled(pb::JobKilled {
        key: Some(key.to_proto()),
    })];
    for t in c
        .tasks
        .values()
        .filter(|t| t.job.as_ref() == Some(&key) && !t.is_terminal() && !t.kill_requested)
    {
        events.push(Event::TaskKillRequested(pb::TaskKillRequested {
            framework_id: t.key.framework_id.0.clone(),
            task_id: t.key.task_id.0.clone(),
            reason: TaskReason::ReasonKilledByFramework as i32,
        }));
    }
    Ok(events)
}
