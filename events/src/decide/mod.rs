//! `decide`: every business rule of the master, as a pure function.
//!
//! Sits in the middle of the data flow (DESIGN.md): an actor builds a
//! `Command`, `decide(&Cluster, Command, now)` returns the events to append
//! or a named `Rejection`, and nothing changes until the log commits them
//! and `apply` runs. Decide reads no clock (`now` is an argument), mints ids
//! from counters in the state, and iterates ordered maps only, so the same
//! state and command always give the same events.
//!
//! One file per area: `leader`, `agents`, `frameworks`, `offers`, `tasks`,
//! `maintenance`, `jobs`. Shared validation helpers live here.

mod agents;
mod frameworks;
mod jobs;
mod leader;
mod maintenance;
pub mod masters;
mod offers;
mod tasks;

use orrery_proto::events::envelope::Payload;

use crate::command::Command;
use crate::ids::truncate_for_message;
use crate::rejection::Rejection;
use crate::state::Cluster;

pub use tasks::master_update_uuid;

/// The rules every launch is held to (see `offers::validate_task`).
pub fn validate_launch(
    key: &crate::ids::TaskKey,
    spec: &crate::command::TaskSpec,
) -> Result<(), Rejection> {
    offers::validate_task(key, spec)
}

/// An event as decide returns it: the envelope's payload. The shell wraps it
/// with index, term and time when it proposes.
pub type Event = Payload;

/// Wall-clock milliseconds since the Unix epoch, passed in by the shell.
pub type NowMs = u64;

/// Bounds on one command's size (TigerStyle: put a limit on everything).
pub mod limits {
    /// Tasks in one Accept.
    pub const TASKS_PER_ACCEPT_MAX: usize = 1_000;
    /// Offer ids in one Accept or Decline.
    pub const OFFERS_PER_CALL_MAX: usize = 1_000;
    /// Attributes on one agent.
    pub const ATTRIBUTES_MAX: usize = 128;
    /// Tasks an agent may report when it reregisters.
    pub const REPORTED_TASKS_MAX: usize = 100_000;
    /// Windows in a maintenance schedule, and machines in all of them.
    pub const WINDOWS_MAX: usize = 10_000;
    pub const MACHINES_MAX: usize = 100_000;
    /// Hostnames in one maintenance call.
    pub const HOSTS_PER_CALL_MAX: usize = 10_000;
    /// Longest hostname (RFC 1035).
    pub const HOSTNAME_LEN_MAX: usize = 253;
    /// Longest free-text field kept in the log (status messages are cut).
    pub const TEXT_LEN_MAX: usize = 4_096;
    /// Longest name, role or attribute value.
    pub const NAME_LEN_MAX: usize = 256;
    /// Longest refuse / failover duration accepted: one year.
    pub const DURATION_MS_MAX: u64 = 365 * 24 * 3_600 * 1_000;
    /// Instances of one job.
    pub const JOB_INSTANCES_MAX: u32 = 10_000;
    /// Constraints on one job.
    pub const CONSTRAINTS_MAX: usize = 64;
    /// Roles in the weight table.
    pub const ROLES_MAX: usize = 10_000;
}

/// Decides what `command` means for `cluster` at time `now_ms`.
pub fn decide(cluster: &Cluster, command: Command, now_ms: NowMs) -> Result<Vec<Event>, Rejection> {
    let c = cluster;
    match command {
        Command::ElectLeader(cmd) => leader::elect(c, cmd),
        Command::SetRoleWeights { weights } => leader::set_role_weights(c, weights),
        Command::RegisterAgent(reg) => agents::register(c, reg, now_ms),
        Command::ReregisterAgent {
            agent_id,
            registration,
            tasks,
        } => agents::reregister(c, agent_id, registration, tasks, now_ms),
        Command::DisconnectAgent { agent_id } => agents::disconnect(c, agent_id),
        Command::MarkAgentUnreachable { agent_id, reason } => {
            agents::mark_unreachable(c, agent_id, reason, now_ms)
        }
        Command::MarkAgentGone { agent_id, reason } => {
            agents::mark_gone(c, agent_id, reason, now_ms)
        }
        Command::RequestMastersChange {
            change,
            node_id,
            addr,
        } => masters::request(c, change, node_id, addr),
        Command::RecordMasters { members, outcome } => masters::record(c, members, outcome),
        Command::Subscribe(sub) => frameworks::subscribe(c, sub),
        Command::DisconnectFramework { framework_id } => frameworks::disconnect(c, framework_id),
        Command::ExpireFramework { framework_id } => frameworks::expire(c, framework_id, now_ms),
        Command::Teardown { framework_id } => frameworks::teardown(c, framework_id),
        Command::Suppress { framework_id } => frameworks::suppress(c, framework_id),
        Command::Revive { framework_id } => frameworks::revive(c, framework_id),
        Command::Allocate => offers::allocate(c, now_ms),
        Command::ExpireOffers => offers::expire(c, now_ms),
        Command::Accept {
            framework_id,
            offer_ids,
            launches,
            refuse_seconds,
        } => offers::accept(c, framework_id, offer_ids, launches, refuse_seconds, now_ms),
        Command::Decline {
            framework_id,
            offer_ids,
            refuse_seconds,
        } => offers::decline(c, framework_id, offer_ids, refuse_seconds, now_ms),
        Command::Kill {
            framework_id,
            task_id,
        } => tasks::kill(c, framework_id, task_id),
        Command::UpdateStatus(update) => tasks::update_status(c, update),
        Command::Acknowledge {
            framework_id,
            task_id,
            uuid,
        } => tasks::acknowledge(c, framework_id, task_id, uuid),
        Command::UpdateSchedule { windows } => maintenance::update_schedule(c, windows),
        Command::StartMaintenance { hostnames } => maintenance::start(c, hostnames, now_ms),
        Command::MarkMachinesDown { machines } => maintenance::down(c, machines, now_ms),
        Command::CompleteMaintenance { hostnames } => maintenance::complete(c, hostnames),
        Command::AnswerInverseOffers {
            framework_id,
            offer_ids,
            accepted,
        } => maintenance::answer_inverse(c, framework_id, offer_ids, accepted),
        Command::DrainHosts => maintenance::drain(c, now_ms),
        Command::CreateJob(spec) => jobs::create(c, spec),
        Command::UpdateJob(spec) => jobs::update(c, spec),
        Command::KillJob(key) => jobs::kill(c, key),
        Command::FinishJobUpdate { key, version } => jobs::finish_update(c, key, version),
        Command::RollbackJob { key, version } => jobs::rollback(c, key, version),
    }
}

// --- shared validation -----------------------------------------------------

pub(crate) fn check_count(what: &'static str, count: usize, limit: usize) -> Result<(), Rejection> {
    if count > limit {
        return Err(Rejection::TooMany { what, count, limit });
    }
    Ok(())
}

/// A name, role, attribute or similar: non-empty, bounded, printable.
pub(crate) fn check_name(field: &'static str, s: &str, allow_empty: bool) -> Result<(), Rejection> {
    let problem = if s.is_empty() && !allow_empty {
        Some("is empty".to_owned())
    } else if s.len() > limits::NAME_LEN_MAX {
        Some(format!("is longer than {} bytes", limits::NAME_LEN_MAX))
    } else if s.chars().any(char::is_control) {
        Some(format!(
            "{:?} contains a control character",
            truncate_for_message(s)
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Rejection::InvalidField { field, problem }),
        None => Ok(()),
    }
}

pub(crate) fn check_hostname(s: &str) -> Result<(), Rejection> {
    let ok = !s.is_empty()
        && s.len() <= limits::HOSTNAME_LEN_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Rejection::InvalidField {
            field: "hostname",
            problem: format!(
                "{:?} is not a hostname (letters, digits, '-', '.', '_'; at most 253 bytes)",
                truncate_for_message(s)
            ),
        })
    }
}

pub(crate) fn check_ip(s: &str) -> Result<(), Rejection> {
    s.parse::<std::net::IpAddr>()
        .map(|_| ())
        .map_err(|_| Rejection::InvalidField {
            field: "ip",
            problem: format!("{:?} is not an IP address", truncate_for_message(s)),
        })
}

/// Seconds as a client gives them (Mesos' refuse_seconds) to bounded ms.
pub(crate) fn seconds_to_ms(field: &'static str, seconds: f64) -> Result<u64, Rejection> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Rejection::InvalidField {
            field,
            problem: format!("{seconds} is negative or not finite"),
        });
    }
    let ms = (seconds * 1000.0).round();
    if ms > limits::DURATION_MS_MAX as f64 {
        return Err(Rejection::InvalidField {
            field,
            problem: format!("{seconds}s is longer than one year"),
        });
    }
    Ok(ms as u64)
}

/// Cuts free text to the log's limit on a char boundary (a status message is
/// worth keeping even when an executor wrote too much of it).
pub(crate) fn clip_text(s: &str) -> String {
    if s.len() <= limits::TEXT_LEN_MAX {
        return s.to_owned();
    }
    let mut end = limits::TEXT_LEN_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub(crate) fn require_leader(c: &Cluster) -> Result<&crate::state::Leader, Rejection> {
    c.leader.as_ref().ok_or(Rejection::NoLeader)
}
