//! The master's Prometheus metrics: names, descriptions, and what the
//! actor records as it commits.
//!
//! Why the `metrics` facade: the actors record through cheap macros with no
//! handle to pass around, and the exporter (`metrics-exporter-prometheus`,
//! installed by the gateway, which serves `/metrics`) is chosen in one place.
//! Every name starts with `orrery_` and carries its unit (`_total`,
//! `_seconds`, `_bytes`). Counters count what the log committed on this
//! replica while it led; gauges are set from the committed state when
//! `/metrics` is scraped (see `orrery_gateway::metrics`).

use std::time::Duration;

use orrery_events::pb::{self, envelope::Payload};

pub const EVENTS_APPENDED: &str = "orrery_events_appended_total";
pub const OFFERS_SENT: &str = "orrery_offers_sent_total";
pub const OFFERS_DECLINED: &str = "orrery_offers_declined_total";
pub const OFFERS_RESCINDED: &str = "orrery_offers_rescinded_total";
pub const LAUNCHES: &str = "orrery_task_launches_total";
pub const STATUS_UPDATES: &str = "orrery_status_updates_total";
pub const REJECTIONS: &str = "orrery_rejections_total";
pub const AGENT_REGISTRATIONS: &str = "orrery_agent_registrations_total";
pub const INVERSE_OFFERS_SENT: &str = "orrery_inverse_offers_sent_total";
pub const REQUESTS_DENIED: &str = "orrery_requests_denied_total";
pub const AGENT_REMOVALS_DEFERRED: &str = "orrery_agent_removals_deferred_total";
pub const AGENT_REMOVALS_HELD: &str = "orrery_agent_removals_held";
pub const COMMANDS_SHED: &str = "orrery_commands_shed_total";
pub const IDEMPOTENT_REPLAYS: &str = "orrery_idempotent_replays_total";

pub const AGENTS: &str = "orrery_agents";
pub const TASKS: &str = "orrery_tasks";
pub const HOSTS: &str = "orrery_hosts";
pub const FRAMEWORKS: &str = "orrery_frameworks";
pub const JOBS_PENDING_INSTANCES: &str = "orrery_job_pending_instances";
pub const IS_LEADER: &str = "orrery_is_leader";
pub const RAFT_TERM: &str = "orrery_raft_term";
pub const COMMIT_INDEX: &str = "orrery_commit_index";
pub const LOG_SIZE: &str = "orrery_log_size_bytes";

pub const AGENT_TASKS: &str = "orrery_agent_tasks";
pub const AGENT_UNACKED: &str = "orrery_agent_unacknowledged_updates";
pub const AGENT_ATTACHED: &str = "orrery_agent_attached";
pub const AGENT_PING_TIMEOUTS: &str = "orrery_agent_ping_timeouts_total";
pub const AGENTS_REFUSED: &str = "orrery_agent_registrations_refused_total";

pub const LOG_APPEND_LATENCY: &str = "orrery_log_append_latency_seconds";
pub const ALLOCATION_CYCLE: &str = "orrery_allocation_cycle_seconds";
pub const API_LATENCY: &str = "orrery_api_latency_seconds";

tokio::task_local! {
    /// The API request being served (set by the gateway around each
    /// handler), carried into the commands it submits and so into the log.
    pub static REQUEST_ID: String;
}

tokio::task_local! {
    /// Who made the API request being served (`client:alice`,
    /// `agent:host-1`; set by the gateway's authentication), recorded on
    /// the events its commands produce.
    pub static PRINCIPAL: String;
}

tokio::task_local! {
    /// The caller's idempotency key for the request being served ("" for
    /// none; set by the gateway from the `idempotency-key` header).
    pub static IDEMPOTENCY_KEY: String;
}

tokio::task_local! {
    /// The admission seat of the request being served (set by the gateway's
    /// admission around each admitted call; see [`Seat`]).
    pub static SEAT: Seat;
}

/// What releases an admitted call's seat (the gateway's admission count).
pub trait SeatRelease: Send + Sync {
    /// Gives the seat back; a second call does nothing.
    fn release(&self);
}

/// An admitted call's seat among the `--max-pending-commands` calls the
/// gateway lets inside the master. It travels with the call's command and
/// the master gives it back the moment it answers the command, on its own
/// thread: the next call is admitted then, not when the call's task next
/// runs. Under a flood that task waits behind every request the server has
/// read and not yet refused, so a seat given back by the task would make
/// admitted work wait for refusals (`orrery bench overload`). The call's
/// task gives it back too when it ends (whichever comes first).
#[derive(Clone, Default)]
pub struct Seat(Option<std::sync::Arc<dyn SeatRelease>>);

impl Seat {
    pub fn new(release: std::sync::Arc<dyn SeatRelease>) -> Self {
        Seat(Some(release))
    }

    /// Whether this is an admitted call's seat (the master's own commands
    /// and sessions hold none).
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the seat back (nothing for a call that holds none).
    pub fn release(&self) {
        if let Some(r) = &self.0 {
            r.release();
        }
    }
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_held() { "Seat" } else { "NoSeat" })
    }
}

/// Seats never tell two origins apart: an origin is who asked, not where
/// the call waits.
impl PartialEq for Seat {
    fn eq(&self, _: &Seat) -> bool {
        true
    }
}

impl Eq for Seat {}

/// The request id of the request being served, "" outside one.
pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Where a command came from: the API request and its authenticated
/// principal (both empty for the master's own commands, and the principal
/// empty on an `--insecure` cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub request_id: String,
    pub principal: String,
    /// The caller's idempotency key ("" for none).
    pub idempotency_key: String,
    /// The call's admission seat, given back when the master answers.
    pub seat: Seat,
}

impl Origin {
    /// The key as the log records it: scoped by the principal, so one
    /// client's key never answers another's call.
    pub fn scoped_key(&self) -> Option<String> {
        (!self.idempotency_key.is_empty())
            .then(|| format!("{}|{}", self.principal, self.idempotency_key))
    }
}

/// The origin of the request being served.
pub fn origin() -> Origin {
    Origin {
        request_id: request_id(),
        principal: PRINCIPAL.try_with(Clone::clone).unwrap_or_default(),
        idempotency_key: IDEMPOTENCY_KEY.try_with(Clone::clone).unwrap_or_default(),
        seat: SEAT.try_with(Clone::clone).unwrap_or_default(),
    }
}

/// Every metric name above (dashboards and alert rules are checked
/// against it).
pub const NAMES: &[&str] = &[
    EVENTS_APPENDED,
    OFFERS_SENT,
    OFFERS_DECLINED,
    OFFERS_RESCINDED,
    LAUNCHES,
    STATUS_UPDATES,
    REJECTIONS,
    AGENT_REGISTRATIONS,
    INVERSE_OFFERS_SENT,
    REQUESTS_DENIED,
    AGENTS,
    TASKS,
    HOSTS,
    FRAMEWORKS,
    JOBS_PENDING_INSTANCES,
    IS_LEADER,
    RAFT_TERM,
    COMMIT_INDEX,
    LOG_SIZE,
    LOG_APPEND_LATENCY,
    ALLOCATION_CYCLE,
    API_LATENCY,
    AGENT_TASKS,
    AGENT_UNACKED,
    AGENT_ATTACHED,
    AGENT_PING_TIMEOUTS,
    AGENTS_REFUSED,
    AGENT_REMOVALS_DEFERRED,
    AGENT_REMOVALS_HELD,
    COMMANDS_SHED,
    IDEMPOTENT_REPLAYS,
];

/// The process's Prometheus recorder, installed on first use (`None` when
/// another recorder was installed first). Masters (`orrery_gateway`) and
/// agents render `/metrics` from it.
pub fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    use std::sync::OnceLock;
    /// Histogram buckets in seconds: 100 µs to 10 s.
    const BUCKETS: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "no Prometheus recorder: /metrics is off"))
                .ok()?;
            Some(recorder)
        })
        .as_ref()
}

/// Registers the agent's metrics (its `/metrics`).
pub fn describe_agent() {
    use metrics::describe_gauge;
    describe_gauge!(AGENT_TASKS, "On an agent: its tasks by state.");
    describe_gauge!(
        AGENT_UNACKED,
        "On an agent: status updates the master has not acknowledged."
    );
    describe_gauge!(
        AGENT_ATTACHED,
        "On an agent: 1 while attached to the active master."
    );
    metrics::describe_counter!(
        AGENT_PING_TIMEOUTS,
        "On an agent: times its master went silent past the ping timeout (the agent then looked for the leader again)."
    );
}

/// Registers every master metric's help text (once per process; repeated calls
/// are harmless).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        EVENTS_APPENDED,
        "Events this master appended to the log while leading."
    );
    describe_counter!(OFFERS_SENT, "Resource offers made to frameworks.");
    describe_counter!(OFFERS_DECLINED, "Offers frameworks declined.");
    describe_counter!(OFFERS_RESCINDED, "Offers the master rescinded, by reason.");
    describe_counter!(LAUNCHES, "Tasks launched.");
    describe_counter!(STATUS_UPDATES, "Task status updates committed, by state.");
    describe_counter!(REJECTIONS, "Commands the master refused, by rejection.");
    describe_counter!(
        REQUESTS_DENIED,
        "API requests refused before any command: unauthenticated, forbidden by the policy, or over the client's rate; by reason."
    );
    describe_counter!(
        AGENT_REGISTRATIONS,
        "Agent registrations and reregistrations."
    );
    describe_counter!(
        AGENTS_REFUSED,
        "Agent registrations refused before anything was decided, by reason (agent_id_in_use: a second live process under one agent id; hostname_in_use: a second agent on a live agent's hostname; agent_too_old; agent_version_invalid)."
    );
    describe_counter!(
        INVERSE_OFFERS_SENT,
        "Inverse offers (maintenance) made to frameworks."
    );
    describe_counter!(
        AGENT_REMOVALS_DEFERRED,
        "Agent removals (marked unreachable) deferred by --agent-removal-rate-limit."
    );
    describe_counter!(
        COMMANDS_SHED,
        "Client commands refused because --max-pending-commands already waited for the log (RESOURCE_EXHAUSTED / HTTP 429)."
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Retried calls answered from their idempotency key, with no second effect."
    );
    describe_gauge!(
        AGENT_REMOVALS_HELD,
        "Agents not marked unreachable after a leader change because more than --recovery-agent-removal-limit of them did not reregister."
    );
    describe_gauge!(AGENTS, "Agents by state, in the committed state.");
    describe_gauge!(TASKS, "Tasks by state, in the committed state.");
    describe_gauge!(HOSTS, "Hosts by maintenance state.");
    describe_gauge!(FRAMEWORKS, "Frameworks that are not removed.");

    describe_gauge!(
        JOBS_PENDING_INSTANCES,
        "Job instances waiting to be placed (leader only)."
    );
    describe_gauge!(IS_LEADER, "1 on the master that leads, 0 elsewhere.");
    describe_gauge!(RAFT_TERM, "The raft term this replica knows.");
    describe_gauge!(
        COMMIT_INDEX,
        "The last event index applied on this replica."
    );
    describe_gauge!(
        LOG_SIZE,
        Unit::Bytes,
        "Bytes of the replica's data dir (log and snapshots)."
    );
    describe_histogram!(
        LOG_APPEND_LATENCY,
        Unit::Seconds,
        "From a batch handed to the log to its commit."
    );
    describe_histogram!(
        ALLOCATION_CYCLE,
        Unit::Seconds,
        "Time to decide one allocation cycle."
    );
    describe_histogram!(
        API_LATENCY,
        Unit::Seconds,
        "gRPC calls, by method (streams: until the response starts)."
    );
    // Every unlabelled series exists from the start (at 0), so alerts and
    // dashboards see it before the first event.
    for c in [
        EVENTS_APPENDED,
        OFFERS_SENT,
        OFFERS_DECLINED,
        LAUNCHES,
        AGENT_REGISTRATIONS,
        INVERSE_OFFERS_SENT,
        AGENT_REMOVALS_DEFERRED,
        COMMANDS_SHED,
        IDEMPOTENT_REPLAYS,
    ] {
        metrics::counter!(c).increment(0);
    }
    metrics::gauge!(JOBS_PENDING_INSTANCES).set(0.0);
    metrics::gauge!(AGENT_REMOVALS_HELD).set(0.0);
}

/// What one committed batch adds to the counters, tallied while deciding
/// (no event is cloned for it).
#[derive(Debug, Default)]
pub struct Tally {
    events: u64,
    offers: u64,
    declined: u64,
    rescinded: Vec<(i32, u64)>,
    launches: u64,
    statuses: Vec<(i32, u64)>,
    registrations: u64,
    inverse_offers: u64,
}

fn bump(list: &mut Vec<(i32, u64)>, key: i32, by: u64) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += by,
        None => list.push((key, by)),
    }
}

impl Tally {
    pub fn add(&mut self, payload: &Payload) {
        self.events += 1;
        match payload {
            Payload::OffersMade(e) => self.offers += e.offers.len() as u64,
            Payload::OffersDeclined(e) => self.declined += e.offer_ids.len() as u64,
            Payload::OffersRescinded(e) => {
                bump(&mut self.rescinded, e.reason, e.offer_ids.len() as u64)
            }
            Payload::TaskLaunched(_) => self.launches += 1,
            Payload::TaskStatusUpdated(e) => bump(&mut self.statuses, e.state, 1),
            Payload::AgentRegistered(_) | Payload::AgentReregistered(_) => self.registrations += 1,
            Payload::InverseOffersMade(e) => self.inverse_offers += e.inverse_offers.len() as u64,
            _ => {}
        }
    }

    /// Records a committed batch.
    pub fn record(self, append_latency: Duration) {
        metrics::histogram!(LOG_APPEND_LATENCY).record(append_latency.as_secs_f64());
        metrics::counter!(EVENTS_APPENDED).increment(self.events);
        metrics::counter!(OFFERS_SENT).increment(self.offers);
        metrics::counter!(OFFERS_DECLINED).increment(self.declined);
        metrics::counter!(LAUNCHES).increment(self.launches);
        metrics::counter!(AGENT_REGISTRATIONS).increment(self.registrations);
        metrics::counter!(INVERSE_OFFERS_SENT).increment(self.inverse_offers);
        for (reason, n) in self.rescinded {
            let reason = pb::RescindReason::try_from(reason).map_or("UNKNOWN", |r| r.as_str_name());
            metrics::counter!(OFFERS_RESCINDED, "reason" => reason).increment(n);
        }
        for (state, n) in self.statuses {
            let state = pb::TaskState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name());
            metrics::counter!(STATUS_UPDATES, "state" => state).increment(n);
        }
    }
}

pub fn rejected(name: &'static str) {
    metrics::counter!(REJECTIONS, "reason" => name).increment(1);
}

pub fn allocation_cycle(took: Duration) {
    metrics::histogram!(ALLOCATION_CYCLE).record(took.as_secs_f64());
}

/// Prometheus text → Aurora's flat map: `name{a="x",b="y"} v` becomes
/// `name_a_x_b_y: v`; histograms keep their `_sum` and `_count`.
pub fn flatten(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if series.contains("_bucket") {
            continue;
        }
        let name = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let mut flat = name.to_owned();
                for pair in labels.trim_end_matches('}').split(',') {
                    if let Some((k, val)) = pair.split_once('=') {
                        flat.push('_');
                        flat.push_str(k);
                        flat.push('_');
                        flat.push_str(val.trim_matches('"'));
                    }
                }
                flat
            }
        };
        out.insert(name, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_names_labels_and_skips_buckets() {
        let text = "# HELP x y\n# TYPE orrery_agents gauge\n\
                    orrery_agents{state=\"REGISTERED\"} 3\n\
                    orrery_is_leader 1\n\
                    orrery_log_append_latency_seconds_bucket{le=\"0.1\"} 4\n\
                    orrery_log_append_latency_seconds_sum 0.25\n";
        let m = flatten(text);
        assert_eq!(m.get("orrery_agents_state_REGISTERED"), Some(&3.0));
        assert_eq!(m.get("orrery_is_leader"), Some(&1.0));
        assert_eq!(m.get("orrery_log_append_latency_seconds_sum"), Some(&0.25));
        assert_eq!(m.len(), 3);
    }
}
