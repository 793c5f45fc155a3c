//! `Master`: the active master of the cluster, on whichever replica the log
//! makes leader.
//!
//! The loop (DESIGN.md's data flow): a request becomes a `Command`;
//! `decide` turns it into events against this actor's copy of the cluster;
//! the events are applied to that copy at once (speculatively, so that the
//! next command in the same batch sees them) and appended to the log as one
//! batch (group commit: everything queued while one append is in flight goes
//! into the next). Only when the log acknowledges the batch does anything
//! leave the master: replies to callers, offers and updates to frameworks,
//! launches and kills to agents ([`crate::effects`]).
//!
//! The copy is only trusted while this replica leads. Before each batch the
//! actor checks that the log's applied index equals the copy's; when it does
//! not (an append that failed yet committed later, a raw append), the copy
//! is replaced by a clone of the log's own state. On a leader change it
//! steps down: queued commands fail with `NotLeader`, and every framework
//! and agent stream is closed with the new leader's address, so clients
//! reconnect there.
//!
//! Leadership comes from the log: once the replica leads *and* has applied
//! an entry of its own term (so it has every committed event), the actor
//! commits `LeaderElected` and only then serves requests. Timers (the
//! allocation interval, offer expiry, framework failover timeouts, the
//! agents' reregistration deadline) run on the leader and submit commands
//! like any caller; `decide` checks them against `now`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use orrery_events::command::{
    AgentRegistration, Command, ElectLeader, FrameworkSubscription, ReportedTask, TaskSpec,
};
use orrery_events::pb::envelope::Payload;
use orrery_events::pb::{self, TaskReason, TaskState};
use orrery_events::projections::recovery;
use orrery_events::state::JobKey;
use orrery_events::state::{AgentState, Domain, MasterConfig};
use orrery_events::{
    codec, decide, envelopes, jobs, try_apply, AgentId, Cluster, Event, FrameworkId, OfferId,
    Rejection, Resources, TaskId, TaskKey,
};
use orrery_proto::scheduler as sp;
use orrery_storage::{AppendError, AppendedRange, EventLog, LeaderInfo, StateAccess};
use tokio::sync::oneshot;

pub use crate::telemetry::Origin;

use crate::agent_session::{self, AgentSession};
use crate::effects::{effects_of, Effect};
use crate::framework_session::{self, FrameworkSession};

/// The log the master runs on (raft or TiKV).
pub use crate::log::Log;

/// Commands waiting for the next batch, at most.
pub const QUEUE_MAX: usize = 100_000;
/// What an `Overloaded` refusal asks the client to wait: about the time
/// a few group commits take to drain a full queue on a slow disk.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// One batch: at most this many commands or events.
pub const BATCH_COMMANDS_MAX: usize = 2_000;
pub const BATCH_EVENTS_MAX: usize = 20_000;
/// The actor's mailbox bound; callers wait (gRPC handlers) when it is full.
pub const MAILBOX: usize = 4_096;

/// The active master's settings (Mesos' names and defaults).
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: u64,
    /// This replica's gRPC address (raft peers and clients alike).
    pub addr: String,
    /// This replica's HTTP admin address ("" for none).
    pub http_addr: String,
    pub domain: Option<Domain>,
    pub offer_timeout: Duration,
    pub default_refuse: Duration,
    pub agent_reregister_timeout: Duration,
    /// Hold removals after a leader change when more than this percent of
    /// the known agents did not reregister (`crate::removals`).
    pub recovery_agent_removal_limit_pct: f64,
    /// At most this many agents marked unreachable per window.
    pub agent_removal_rate_limit: Option<crate::removals::RateLimit>,
    /// Client commands refused (Overloaded) once this many wait for the
    /// log; the master's own timers may queue up to `QUEUE_MAX`.
    pub max_pending_commands: usize,
    pub agent_ping_timeout: Duration,
    pub max_agent_ping_timeouts: u32,
    pub allocation_interval: Duration,
    pub framework_heartbeat: Duration,
    /// On a DRAINING host, frameworks' tasks are killed this long after the
    /// drain started (at once for a framework that accepted the inverse
    /// offer).
    pub drain_grace: Duration,
    /// Outstanding offers one framework may hold (0: no cap).
    pub offers_per_framework_max: u64,
    /// How often the actor checks leadership and its timers.
    pub tick: Duration,
}

impl Settings {
    pub fn new(node_id: u64, addr: String) -> Self {
        Self {
            node_id,
            addr,
            http_addr: String::new(),
            domain: None,
            offer_timeout: Duration::ZERO,
            default_refuse: Duration::from_secs(5),
            agent_reregister_timeout: Duration::from_secs(600),
            recovery_agent_removal_limit_pct: 100.0,
            agent_removal_rate_limit: None,
            max_pending_commands: 10_000,
            agent_ping_timeout: Duration::from_secs(15),
            max_agent_ping_timeouts: 5,
            allocation_interval: Duration::from_secs(1),
            framework_heartbeat: Duration::from_secs(15),
            drain_grace: Duration::from_secs(60),
            offers_per_framework_max: 10_000,
            tick: Duration::from_millis(100),
        }
    }
}

/// Why the master did not do what was asked.
#[derive(Clone, Debug, PartialEq)]
pub enum MasterError {
    /// This replica is not the leader; ask the named one.
    NotLeader { leader_addr: Option<String> },
    /// This replica just became the leader and is not serving yet.
    Recovering,
    /// `decide` refused the command.
    Rejected(Rejection),
    /// The call came from a stream that is not the framework's current one.
    StaleStream {
        framework_id: FrameworkId,
        stream_id: String,
    },
    /// The agent must (re)register before this call.
    NotRegistered(AgentId),
    /// An agent's registration refused before anything was decided: a
    /// second live process under one agent id (`agent_id_in_use`) or on a
    /// live agent's hostname (`hostname_in_use`), or an agent older than
    /// this master supports (`agent_too_old`, `agent_version_invalid`).
    AgentRefused { name: &'static str, message: String },
    /// The log did not acknowledge; the outcome is unknown (retry).
    Unavailable(String),
    /// Refused before it was queued: `queued` commands already wait for
    /// the log (`--max-pending-commands`). Nothing happened; retry after
    /// `retry_after`.
    Overloaded {
        queued: usize,
        max: usize,
        retry_after: Duration,
    },
}

impl std::fmt::Display for MasterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterError::Overloaded {
                queued,
                max,
                retry_after,
            } => write!(
                f,
                "the master is overloaded: {queued} client calls already wait for the master or the log (--max-pending-commands {max}); nothing was done, retry after {} ms",
                retry_after.as_millis()
            ),
            MasterError::NotLeader { leader_addr } => write!(
                f,
                "this master is not the leader; the leader is {}",
                leader_addr.as_deref().unwrap_or("not known yet")
            ),
            MasterError::Recovering => {
                f.write_str("this master just became the leader and is recovering; retry")
            }
            MasterError::Rejected(r) => write!(f, "{r}"),
            MasterError::StaleStream {
                framework_id,
                stream_id,
            } => write!(
                f,
                "stream {stream_id:?} is not framework {framework_id}'s current subscription \
                 (another scheduler instance took over, or it was never subscribed)"
            ),
            MasterError::NotRegistered(id) => {
                write!(
                    f,
                    "agent {id} is not registered with this master; reregister"
                )
            }
            MasterError::Unavailable(why) => write!(f, "the master is unavailable: {why}"),
            MasterError::AgentRefused { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for MasterError {}

/// What a committed command produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Committed {
    /// The index of the command's last event (the applied index when it
    /// produced none).
    pub last_index: u64,
    /// Its events, when the caller asked for them.
    pub events: Vec<Event>,
}

type Done = Box<dyn FnOnce(&mut Master, &mut Context<Master>, Result<Committed, MasterError>)>;

struct Pending {
    cmd: Command,
    want_events: bool,
    done: Done,
    /// The API request it came from (empty for the master's own).
    origin: Origin,
}

struct FrameworkLink {
    stream_id: String,
    addr: Addr<FrameworkSession>,
}

struct AgentLink {
    session: u64,
    addr: Addr<AgentSession>,
    /// The agent process's incarnation ("" from an agent that sends none).
    incarnation: String,
    /// Its message stream is open (Attach seen, no Detached since).
    attached: bool,
}

/// Timer-driven commands in flight, so a slow log does not pile them up.
#[derive(Default)]
struct TimerState {
    last_allocation: Option<Instant>,
    allocating: bool,
    last_drain: Option<Instant>,
    draining: bool,
    expiring_offers: bool,
    expiring: BTreeSet<FrameworkId>,
    marking: BTreeSet<AgentId>,
    downing: BTreeSet<String>,
}

pub struct Master {
    settings: Settings,
    log: Log,
    /// The cluster as the log will have it once the in-flight batch commits.
    cluster: Cluster,
    /// The raft term this replica leads in, once it is ready to.
    leading: Option<u64>,
    /// `LeaderElected` for `leading` is committed: serving.
    elected: bool,
    queue: VecDeque<Pending>,
    in_flight: bool,
    /// Inside `flush`: a callback that submits must not start a second
    /// batch decided against a copy the first is still changing.
    flushing: bool,
    frameworks: BTreeMap<FrameworkId, FrameworkLink>,
    agents: BTreeMap<AgentId, AgentLink>,
    next_session: u64,
    timers: TimerState,
    /// The built-in job scheduler's framework, once subscribed this term.
    jobs_fw: Option<FrameworkId>,
    /// Why each job instance that is not running waits (from the last plan).
    job_pending: BTreeMap<(JobKey, u32), String>,
    /// The removal limit and rate (`crate::removals`).
    removals: crate::removals::Gate,
    /// Silent agents waiting for a turn under the removal rate limit.
    deferred_silent: VecDeque<agent_session::Silent>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("node_id", &self.settings.node_id)
            .field("leading", &self.leading)
            .field("elected", &self.elected)
            .field("applied", &self.cluster.applied_index)
            .field("queued", &self.queue.len())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Master {
    pub fn new(settings: Settings, log: Log) -> Self {
        let removals = crate::removals::Gate::new(
            settings.recovery_agent_removal_limit_pct,
            settings.agent_removal_rate_limit,
        );
        Self {
            removals,
            deferred_silent: VecDeque::new(),
            settings,
            log,
            cluster: Cluster::new(),
            leading: None,
            elected: false,
            queue: VecDeque::new(),
            in_flight: false,
            flushing: false,
            frameworks: BTreeMap::new(),
            agents: BTreeMap::new(),
            next_session: 0,
            timers: TimerState::default(),
            jobs_fw: None,
            job_pending: BTreeMap::new(),
        }
    }

    /// Serving as the active master: the term, or why not.
    fn serving(&self) -> Result<u64, MasterError> {
        match (self.leading, self.elected) {
            (Some(term), true) => Ok(term),
            (Some(_), false) => Err(MasterError::Recovering),
            (None, _) => Err(MasterError::NotLeader {
                leader_addr: self.log.leader().leader_addr,
            }),
        }
    }

    fn resync(&mut self) {
        self.cluster = self.log.with_state(|m| m.cluster.clone());
    }

    fn enqueue(
        &mut self,
        cmd: Command,
        want_events: bool,
        done: Done,
        origin: Origin,
        ctx: &mut Context<Self>,
    ) {
        self.enqueue_as(cmd, want_events, done, origin, false, ctx);
    }

    /// Queues a command for the next batch, or refuses it at once when the
    /// queue is at its bound: a client's at `max_pending_commands`, the
    /// master's own (`internal`: timers, which try again) at `QUEUE_MAX`.
    /// A refused command is answered `Overloaded`, never dropped unanswered.
    fn enqueue_as(
        &mut self,
        cmd: Command,
        want_events: bool,
        done: Done,
        origin: Origin,
        internal: bool,
        ctx: &mut Context<Self>,
    ) {
        let max = if internal {
            QUEUE_MAX
        } else {
            self.settings.max_pending_commands.min(QUEUE_MAX)
        };
        // The call's admission seat goes back the moment it is answered,
        // here on the master's thread (see `telemetry::Seat`). The master's
        // own commands hold none.
        let done: Done = if origin.seat.is_held() {
            let seat = origin.seat.clone();
            Box::new(move |act, ctx, res| {
                seat.release();
                done(act, ctx, res)
            })
        } else {
            done
        };
        if self.queue.len() >= max {
            metrics::counter!(crate::telemetry::COMMANDS_SHED).increment(1);
            done(
                self,
                ctx,
                Err(MasterError::Overloaded {
                    queued: self.queue.len(),
                    max,
                    retry_after: RETRY_AFTER,
                }),
            );
            return;
        }
        self.queue.push_back(Pending {
            cmd,
            want_events,
            done,
            origin,
        });
        self.flush(ctx);
    }

    /// A command from a timer or a session: the outcome is only logged.
    fn submit_internal(&mut self, cmd: Command, ctx: &mut Context<Self>, then: Done) {
        self.enqueue_as(cmd, false, then, Origin::default(), true, ctx);
    }

    /// Decides every queued command against the copy, applies the events to
    /// it, and appends them as one batch.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing {
            return;
        }
        self.flushing = true;
        // Callbacks may queue more; a batch that committed nothing (all
        // refused, or no events) lets the next one go at once.
        while !self.in_flight && !self.queue.is_empty() {
            self.flush_batch(ctx);
        }
        self.flushing = false;
    }

    fn flush_batch(&mut self, ctx: &mut Context<Self>) {
        let Some(term) = self.leading else {
            let err = MasterError::NotLeader {
                leader_addr: self.log.leader().leader_addr,
            };
            while let Some(p) = self.queue.pop_front() {
                (p.done)(self, ctx, Err(err.clone()));
            }
            return;
        };
        let committed = self.log.with_state(|m| m.cluster.applied_index);
        if committed != self.cluster.applied_index {
            tracing::info!(
                committed,
                local = self.cluster.applied_index,
                "the log moved under the master's copy; reloading it"
            );
            self.resync();
        }
        let now = now_ms();
        let first = self.cluster.applied_index + 1;
        let mut bytes: Vec<Vec<u8>> = Vec::new();
        let mut effects: Vec<Effect> = Vec::new();
        let mut decided: Vec<(Done, u64, Vec<Event>)> = Vec::new();
        let mut tally = crate::telemetry::Tally::default();
        while let Some(p) = self.queue.pop_front() {
            let key = p.origin.scoped_key();
            if let Some(index) = key
                .as_ref()
                .and_then(|k| self.cluster.idempotency.get(k))
                .copied()
            {
                // A retry: the first call's answer, no second effect.
                if index <= self.log.last_applied() {
                    metrics::counter!(crate::telemetry::IDEMPOTENT_REPLAYS).increment(1);
                    tracing::info!(request_id = %p.origin.request_id, key = %p.origin.idempotency_key, index, "a retried call answered from its idempotency key");
                    (p.done)(
                        self,
                        ctx,
                        Ok(Committed {
                            last_index: index,
                            events: Vec::new(),
                        }),
                    );
                } else {
                    (p.done)(
                        self,
                        ctx,
                        Err(MasterError::Unavailable(format!(
                            "the first call with idempotency key {:?} is still being committed; retry",
                            p.origin.idempotency_key
                        ))),
                    );
                }
                continue;
            }
            let allocating = matches!(p.cmd, Command::Allocate);
            if !p.origin.request_id.is_empty() {
                tracing::debug!(request_id = %p.origin.request_id, principal = %p.origin.principal, command = ?std::mem::discriminant(&p.cmd), "deciding a request's command");
            }
            let started = Instant::now();
            let outcome = decide(&self.cluster, p.cmd, now);
            if allocating {
                crate::telemetry::allocation_cycle(started.elapsed());
            }
            let events = match outcome {
                Ok(events) => events,
                Err(rejection) => {
                    crate::telemetry::rejected(rejection.name());
                    if !p.origin.request_id.is_empty() {
                        tracing::info!(request_id = %p.origin.request_id, principal = %p.origin.principal, rejection = rejection.name(), "refused: {rejection}");
                    }
                    (p.done)(self, ctx, Err(MasterError::Rejected(rejection)));
                    continue;
                }
            };
            let mut kept = Vec::new();
            for mut env in envelopes(&self.cluster, term, now, events) {
                env.request_id.clone_from(&p.origin.request_id);
                env.principal.clone_from(&p.origin.principal);
                if let Some(k) = &key {
                    env.idempotency_key.clone_from(k);
                }
                let Some(payload) = env.payload.as_ref() else {
                    continue;
                };
                effects.extend(effects_of(&self.cluster, payload));
                tally.add(payload);
                if p.want_events {
                    kept.push(payload.clone());
                }
                if let Err(e) = try_apply(&mut self.cluster, &env) {
                    // decide produced an event apply refuses: a bug in the
                    // core. Nothing of this batch is appended.
                    tracing::error!(error = %e, event = codec::event_name(payload), "decide and apply disagree; dropping the batch");
                    let err = MasterError::Unavailable(format!("internal error: {e}"));
                    (p.done)(self, ctx, Err(err.clone()));
                    for (done, _, _) in decided {
                        done(self, ctx, Err(err.clone()));
                    }
                    self.resync();
                    return;
                }
                bytes.push(codec::encode(&env));
            }
            decided.push((p.done, self.cluster.applied_index, kept));
            if bytes.len() >= BATCH_EVENTS_MAX || decided.len() >= BATCH_COMMANDS_MAX {
                break;
            }
        }
        if bytes.is_empty() {
            for (done, last_index, events) in decided {
                done(self, ctx, Ok(Committed { last_index, events }));
            }
            return;
        }
        self.in_flight = true;
        let log = self.log.clone();
        let started = Instant::now();
        ctx.spawn(async move { log.append(bytes).await }.into_actor(self).map(
            move |res, act, ctx| {
                if res.is_ok() {
                    tally.record(started.elapsed());
                }
                act.appended(res, first, term, effects, decided, ctx)
            },
        ));
    }

    fn appended(
        &mut self,
        res: Result<AppendedRange, AppendError>,
        first: u64,
        term: u64,
        effects: Vec<Effect>,
        decided: Vec<(Done, u64, Vec<Event>)>,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight = false;
        match res {
            Ok(range) => {
                let shift = *range.start() as i64 - first as i64;
                if shift != 0 {
                    tracing::warn!(
                        expected = first,
                        got = *range.start(),
                        "other events were committed between the master's decision and its append; reloading"
                    );
                    self.resync();
                }
                for (done, last_index, events) in decided {
                    let last_index = (last_index as i64 + shift).max(0) as u64;
                    done(self, ctx, Ok(Committed { last_index, events }));
                }
                if self.leading == Some(term) {
                    self.dispatch(effects, ctx);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the log did not acknowledge a batch");
                let err = match e {
                    AppendError::NotLeader { leader_addr, .. } => {
                        MasterError::NotLeader { leader_addr }
                    }
                    other => MasterError::Unavailable(other.to_string()),
                };
                for (done, _, _) in decided {
                    done(self, ctx, Err(err.clone()));
                }
                // It may still commit; the next batch compares and reloads.
                self.resync();
            }
        }
        self.flush(ctx);
    }

    fn dispatch(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        let mut job_offers = false;
        let mut jobs_changed = false;
        for fx in effects {
            match fx {
                Effect::ToFramework(fid, ev) if self.jobs_fw.as_ref() == Some(&fid) => {
                    job_offers |= matches!(ev, sp::event::Event::Offers(_));
                }
                Effect::ToFramework(fid, ev) => {
                    if let Some(link) = self.frameworks.get(&fid) {
                        if link.addr.try_send(framework_session::Deliver(ev)).is_err() {
                            tracing::warn!(framework_id = %fid, "a framework session's mailbox is full; closing it");
                            if let Some(link) = self.frameworks.remove(&fid) {
                                link.addr.do_send(framework_session::Close(Err(
                                    tonic::Status::resource_exhausted(
                                        "the framework fell too far behind its event stream",
                                    ),
                                )));
                            }
                        }
                    }
                }
                Effect::ToAgent(aid, message) => {
                    if let Some(link) = self.agents.get(&aid) {
                        if link
                            .addr
                            .try_send(agent_session::Deliver(*message))
                            .is_err()
                        {
                            tracing::warn!(agent_id = %aid, "an agent session's mailbox is full; the message waits for reconciliation");
                        }
                    }
                }
                Effect::CloseFramework(fid, why) => {
                    if let Some(link) = self.frameworks.remove(&fid) {
                        link.addr.do_send(framework_session::Close(Ok(why)));
                    }
                }
                Effect::JobsChanged => jobs_changed = true,
                Effect::CloseAgent(aid) => {
                    if let Some(link) = self.agents.remove(&aid) {
                        let mut status = tonic::Status::failed_precondition(format!(
                            "agent {aid} was retired (its host went DOWN, or an operator retired it); \
                             register as a new agent"
                        ));
                        if let Ok(v) = "agent_gone".parse() {
                            status.metadata_mut().insert("orrery-rejection", v);
                        }
                        link.addr.do_send(agent_session::Close(status));
                    }
                }
            }
        }
        if job_offers {
            self.schedule_jobs(ctx);
        }
        if jobs_changed {
            self.kill_unhealthy(ctx);
            match &self.jobs_fw {
                None if self.cluster.jobs.is_empty() => {}
                None => self.subscribe_jobs(ctx),
                Some(fw) => {
                    // Suppressed, or about to be: a Suppress from a plan made
                    // before this change may still wait in the queue (it
                    // was planned on a view without the change), and must
                    // not have the last word.
                    let suppressed = self
                        .cluster
                        .frameworks
                        .get(fw)
                        .is_some_and(|f| f.suppressed)
                        || self.queue.iter().any(|p| {
                            matches!(&p.cmd, Command::Suppress { framework_id } if framework_id == fw)
                        });
                    tracing::debug!(suppressed, "jobs changed");
                    if suppressed {
                        self.submit_internal(
                            Command::Revive {
                                framework_id: fw.clone(),
                            },
                            ctx,
                            Box::new(|_, _, _| {}),
                        );
                    }
                }
            }
        }
    }

    /// The built-in job scheduler answers its offers (`jobs::plan`).
    fn schedule_jobs(&mut self, ctx: &mut Context<Self>) {
        let Some(fw) = self.jobs_fw.clone() else {
            return;
        };
        let plan = jobs::plan(&self.cluster, &fw, now_ms());
        tracing::debug!(
            accepts = plan.accepts.len(),
            declines = plan.declines.len(),
            pending = plan.pending.len(),
            kills = plan.kills.len(),
            updating = plan.updating,
            "job scheduler plan"
        );
        self.job_pending = plan.pending;
        metrics::gauge!(crate::telemetry::JOBS_PENDING_INSTANCES)
            .set(self.job_pending.len() as f64);
        // Nothing to place and nothing waiting: stop taking offers (Mesos'
        // SUPPRESS) until a job changes or one of its tasks ends.
        let idle = plan.accepts.is_empty()
            && self.job_pending.is_empty()
            && !plan.updating
            && plan.kills.is_empty();
        for task_id in plan.kills {
            tracing::info!(%task_id, "rolling update: replacing a task of an older version");
            self.submit_internal(
                Command::Kill {
                    framework_id: fw.clone(),
                    task_id,
                },
                ctx,
                Box::new(|_, _, _| {}),
            );
        }
        for (key, version) in plan.finished {
            self.submit_internal(
                Command::FinishJobUpdate {
                    key: key.clone(),
                    version,
                },
                ctx,
                Box::new(move |_, _, res| {
                    if res.is_ok() {
                        tracing::info!(job = %key, version, "rolling update finished");
                    }
                }),
            );
        }
        for (key, version) in plan.rollbacks {
            tracing::warn!(job = %key, version, "the new version failed during its update; rolling back");
            self.submit_internal(
                Command::RollbackJob { key, version },
                ctx,
                Box::new(|_, _, _| {}),
            );
        }
        for (offer_id, launches) in plan.accepts {
            let n = launches.len();
            self.submit_internal(
                Command::Accept {
                    framework_id: fw.clone(),
                    offer_ids: vec![offer_id],
                    launches,
                    refuse_seconds: Some(1.0),
                },
                ctx,
                Box::new(move |_, _, res| match res {
                    Ok(_) => tracing::debug!(tasks = n, "job scheduler launched"),
                    Err(e) => tracing::warn!(error = %e, "job scheduler launch refused"),
                }),
            );
        }
        if !plan.declines.is_empty() {
            self.submit_internal(
                Command::Decline {
                    framework_id: fw.clone(),
                    offer_ids: plan.declines,
                    refuse_seconds: Some(1.0),
                },
                ctx,
                Box::new(|_, _, _| {}),
            );
        }
        if idle {
            self.submit_internal(
                Command::Suppress { framework_id: fw },
                ctx,
                Box::new(|_, _, _| {}),
            );
        }
    }

    /// Kills job tasks their executor reports unhealthy; the scheduler
    /// replaces them (an unhealthy kill counts as a failure, with backoff).
    fn kill_unhealthy(&mut self, ctx: &mut Context<Self>) {
        let Some(fw) = self.jobs_fw.clone() else {
            return;
        };
        let sick: Vec<TaskId> = self
            .cluster
            .tasks
            .iter()
            .filter(|(k, t)| {
                k.framework_id == fw
                    && t.job.is_some()
                    && t.healthy == Some(false)
                    && !t.is_terminal()
                    && !t.kill_requested
            })
            .map(|(k, _)| k.task_id.clone())
            .collect();
        for task_id in sick {
            tracing::info!(%task_id, "killing an unhealthy job task");
            self.submit_internal(
                Command::Kill {
                    framework_id: fw.clone(),
                    task_id,
                },
                ctx,
                Box::new(|_, _, _| {}),
            );
        }
    }

    /// Subscribes (or fails over) the job scheduler's framework.
    fn subscribe_jobs(&mut self, ctx: &mut Context<Self>) {
        self.submit_internal(
            Command::Subscribe(jobs::subscription(&self.cluster)),
            ctx,
            Box::new(|act, _, res| match res {
                Ok(_) => {
                    act.jobs_fw = act
                        .cluster
                        .frameworks
                        .values()
                        .find(|f| f.name == jobs::FRAMEWORK_NAME && !f.removed)
                        .map(|f| f.id.clone());
                    tracing::info!(framework_id = ?act.jobs_fw, "the job scheduler subscribed");
                }
                Err(e) => tracing::warn!(error = %e, "the job scheduler could not subscribe; retrying at the next tick"),
            }),
        );
    }

    // --- leadership ---------------------------------------------------------

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let info = self.log.leader();
        let ready = info.is_leader && info.ready;
        if let Some(term) = self.leading {
            if !ready || info.term != term {
                self.step_down(&info, ctx);
            }
        }
        if self.leading.is_none() && ready && !self.in_flight {
            self.become_leader(info.term, ctx);
        }
        if self.elected {
            self.timers(ctx);
        }
    }

    fn become_leader(&mut self, term: u64, ctx: &mut Context<Self>) {
        self.resync();
        self.removals.reset();
        self.leading = Some(term);
        self.elected = false;
        self.timers = TimerState::default();
        let s = &self.settings;
        let cmd = Command::ElectLeader(ElectLeader {
            term,
            leader_id: s.node_id,
            leader_addr: s.addr.clone(),
            http_addr: s.http_addr.clone(),
            domain: s.domain.clone(),
            config: MasterConfig {
                offer_timeout_ms: s.offer_timeout.as_millis() as u64,
                default_refuse_ms: s.default_refuse.as_millis() as u64,
                agent_reregister_timeout_ms: s.agent_reregister_timeout.as_millis() as u64,
                drain_grace_ms: s.drain_grace.as_millis() as u64,
                offers_per_framework_max: s.offers_per_framework_max,
            },
        });
        self.submit_internal(
            cmd,
            ctx,
            Box::new(move |act, ctx, res| match res {
                Ok(c) if act.leading == Some(term) => {
                    act.elected = true;
                    tracing::info!(
                        term,
                        index = c.last_index,
                        "this master is the active master"
                    );
                    if !act.cluster.jobs.is_empty() {
                        act.subscribe_jobs(ctx);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(term, error = %e, "could not record the election; retrying");
                    if act.leading == Some(term) {
                        act.leading = None;
                    }
                }
            }),
        );
    }

    fn step_down(&mut self, info: &LeaderInfo, ctx: &mut Context<Self>) {
        if self.elected {
            tracing::info!(term = info.term, leader = ?info.leader_addr, "this master is no longer the active master");
        }
        self.leading = None;
        self.elected = false;
        self.jobs_fw = None;
        self.job_pending.clear();
        metrics::gauge!(crate::telemetry::JOBS_PENDING_INSTANCES).set(0.0);
        let err = MasterError::NotLeader {
            leader_addr: info.leader_addr.clone(),
        };
        while let Some(p) = self.queue.pop_front() {
            (p.done)(self, ctx, Err(err.clone()));
        }
        let status = || crate::not_leader_status(info.leader_addr.as_deref());
        for (_, link) in std::mem::take(&mut self.frameworks) {
            link.addr.do_send(framework_session::Close(Err(status())));
        }
        for (_, link) in std::mem::take(&mut self.agents) {
            link.addr.do_send(agent_session::Close(status()));
        }
    }

    fn timers(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        // Silent agents whose removal waited for a turn (oldest first).
        for _ in 0..self.deferred_silent.len() {
            let Some(msg) = self.deferred_silent.pop_front() else {
                break;
            };
            <Self as Handler<agent_session::Silent>>::handle(self, msg, ctx);
        }
        let t = &mut self.timers;
        if !t.allocating
            && t.last_allocation
                .is_none_or(|at| at.elapsed() >= self.settings.allocation_interval)
        {
            t.allocating = true;
            t.last_allocation = Some(Instant::now());
            self.submit_internal(
                Command::Allocate,
                ctx,
                Box::new(|act, _, res| {
                    act.timers.allocating = false;
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "allocation cycle");
                    }
                }),
            );
        }
        // Frameworks' tasks on DRAINING hosts (each allocation cycle).
        if !self.timers.draining
            && self
                .timers
                .last_drain
                .is_none_or(|at| at.elapsed() >= self.settings.allocation_interval)
            && self
                .cluster
                .hosts
                .values()
                .any(|h| h.state == orrery_events::state::HostState::Draining)
        {
            self.timers.draining = true;
            self.timers.last_drain = Some(Instant::now());
            self.submit_internal(
                Command::DrainHosts,
                ctx,
                Box::new(|act, _, res| {
                    act.timers.draining = false;
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "drain of frameworks' tasks");
                    }
                }),
            );
        }
        if !self.timers.expiring_offers
            && self
                .cluster
                .offers
                .values()
                .any(|o| o.expires_at_ms != 0 && o.expires_at_ms <= now)
        {
            self.timers.expiring_offers = true;
            self.submit_internal(
                Command::ExpireOffers,
                ctx,
                Box::new(|act, _, _| act.timers.expiring_offers = false),
            );
        }
        let expired: Vec<FrameworkId> = self
            .cluster
            .frameworks
            .values()
            .filter(|f| {
                !f.connected
                    && !f.removed
                    && f.disconnected_at_ms.saturating_add(f.failover_timeout_ms) <= now
                    && !self.timers.expiring.contains(&f.id)
            })
            .map(|f| f.id.clone())
            .collect();
        for framework_id in expired {
            self.timers.expiring.insert(framework_id.clone());
            let id = framework_id.clone();
            self.submit_internal(
                Command::ExpireFramework { framework_id },
                ctx,
                Box::new(move |act, _, res| {
                    act.timers.expiring.remove(&id);
                    match res {
                        Ok(_) => tracing::info!(framework_id = %id, "framework removed: its failover timeout passed"),
                        Err(e) => tracing::debug!(framework_id = %id, error = %e, "framework expiry"),
                    }
                }),
            );
        }
        self.reregistration_deadline(now, ctx);
        self.drained_to_down(ctx);
    }

    /// Peloton's last step: a DRAINED host goes DOWN (its agent is shut out
    /// until `host maintenance complete`).
    fn drained_to_down(&mut self, ctx: &mut Context<Self>) {
        let drained: Vec<orrery_events::state::MachineId> = self
            .cluster
            .hosts
            .values()
            .filter(|h| h.state == orrery_events::state::HostState::Drained)
            .filter(|h| !self.timers.downing.contains(&h.machine.hostname))
            .map(|h| h.machine.clone())
            .collect();
        for machine in drained {
            let host = machine.hostname.clone();
            self.timers.downing.insert(host.clone());
            self.submit_internal(
                Command::MarkMachinesDown {
                    machines: vec![machine],
                },
                ctx,
                Box::new(move |act, _, res| {
                    act.timers.downing.remove(&host);
                    match res {
                        Ok(_) => tracing::info!(%host, "host drained and put DOWN"),
                        Err(e) => tracing::warn!(%host, error = %e, "putting a drained host down"),
                    }
                }),
            );
        }
    }

    /// After a leader change, agents that did not reregister in time are
    /// marked unreachable.
    fn reregistration_deadline(&mut self, now: u64, ctx: &mut Context<Self>) {
        let Some(leader) = &self.cluster.leader else {
            return;
        };
        let deadline = leader
            .elected_at_ms
            .saturating_add(leader.config.agent_reregister_timeout_ms);
        if now < deadline {
            return;
        }
        let term = leader.term;
        let timeout_ms = leader.config.agent_reregister_timeout_ms;
        let late: Vec<AgentId> = recovery::awaiting_reregistration(&self.cluster)
            .into_iter()
            .filter(|a| !self.timers.marking.contains(a))
            .collect();
        let known = recovery::known_agents(&self.cluster);
        match self
            .removals
            .recovery(late.len(), known, "--recovery-agent-removal-limit")
        {
            (crate::removals::Verdict::Hold(reason), new) => {
                if new {
                    tracing::error!(term, "{reason}");
                }
                metrics::gauge!(crate::telemetry::AGENT_REMOVALS_HELD).set(late.len() as f64);
                return;
            }
            (crate::removals::Verdict::Proceed, _) => {
                metrics::gauge!(crate::telemetry::AGENT_REMOVALS_HELD).set(0.0);
            }
        }
        for agent_id in late {
            if !self.removals.take(Instant::now()) {
                metrics::counter!(crate::telemetry::AGENT_REMOVALS_DEFERRED).increment(1);
                tracing::info!(%agent_id, "agent removal deferred by --agent-removal-rate-limit");
                break;
            }
            self.timers.marking.insert(agent_id.clone());
            let id = agent_id.clone();
            self.submit_internal(
                Command::MarkAgentUnreachable {
                    agent_id,
                    reason: format!(
                        "it did not reregister within {timeout_ms} ms of the leader change"
                    ),
                },
                ctx,
                Box::new(move |act, _, _| {
                    act.timers.marking.remove(&id);
                }),
            );
        }
    }

    // --- sessions -----------------------------------------------------------

    fn open_framework(
        &mut self,
        framework_id: FrameworkId,
        tx: framework_session::EventTx,
        ctx: &mut Context<Self>,
    ) -> Result<sp::Subscribed, MasterError> {
        let term = self.serving()?;
        let stream_id = uuid::Uuid::new_v4().to_string();
        if let Some(old) = self.frameworks.remove(&framework_id) {
            old.addr.do_send(framework_session::Close(Ok(
                "another scheduler instance subscribed with this framework id (failover)".into(),
            )));
        }
        let subscribed = sp::Subscribed {
            framework_id: framework_id.0.clone(),
            stream_id: stream_id.clone(),
            heartbeat_interval_ms: self.settings.framework_heartbeat.as_millis() as u64,
            term,
            master_id: self.settings.node_id,
        };
        tx.try_send(Ok(sp::Event {
            event: Some(sp::event::Event::Subscribed(subscribed.clone())),
        }))
        .map_err(|_| MasterError::Unavailable("the framework's stream closed".into()))?;
        // Inverse offers still unanswered are made again to the new stream.
        let inverse_offers: Vec<sp::InverseOffer> = self
            .cluster
            .inverse_offers
            .values()
            .filter(|o| {
                o.framework_id == framework_id
                    && o.answer == orrery_events::state::InverseAnswer::Outstanding
            })
            .map(|o| crate::effects::inverse_offer_view(&o.to_proto()))
            .collect();
        if !inverse_offers.is_empty() {
            let _ = tx.try_send(Ok(sp::Event {
                event: Some(sp::event::Event::InverseOffers(sp::InverseOffers {
                    inverse_offers,
                })),
            }));
        }
        let addr = FrameworkSession::new(
            framework_id.clone(),
            stream_id.clone(),
            tx,
            self.settings.framework_heartbeat,
            ctx.address().recipient(),
        )
        .start();
        self.frameworks
            .insert(framework_id, FrameworkLink { stream_id, addr });
        // New demand: allocate at the next tick rather than a full interval
        // later.
        self.timers.last_allocation = None;
        Ok(subscribed)
    }

    fn open_agent(
        &mut self,
        agent_id: AgentId,
        term: u64,
        incarnation: String,
        ctx: &mut Context<Self>,
    ) {
        self.next_session += 1;
        let session = self.next_session;
        if let Some(old) = self.agents.remove(&agent_id) {
            old.addr
                .do_send(agent_session::Close(tonic::Status::aborted(
                    "the agent registered again; this stream is replaced",
                )));
        }
        let me = ctx.address();
        let addr = AgentSession::new(
            agent_id.clone(),
            session,
            term,
            self.settings.agent_ping_timeout,
            self.settings.max_agent_ping_timeouts,
            agent_session::Reports {
                silent: me.clone().recipient(),
                detached: me.recipient(),
            },
        )
        .start();
        self.agents.insert(
            agent_id,
            AgentLink {
                session,
                addr,
                incarnation,
                attached: false,
            },
        );
        self.timers.last_allocation = None;
    }

    /// A second process presenting a live agent's id (its work dir copied to
    /// another machine, or started twice) is refused while the first one's
    /// stream is open: never two processes under one id, each taking the
    /// stream from the other. The same process registering again (its ping
    /// timeout passed on a one-way cut) is not refused.
    fn check_agent_identity(
        &self,
        agent_id: Option<&AgentId>,
        incarnation: &str,
    ) -> Result<(), MasterError> {
        let Some(id) = agent_id else {
            return Ok(());
        };
        match self.agents.get(id) {
            Some(link)
                if link.attached
                    && !incarnation.is_empty()
                    && !link.incarnation.is_empty()
                    && link.incarnation != incarnation =>
            {
                Err(MasterError::AgentRefused {
                    name: "agent_id_in_use",
                    message: format!(
                        "agent id {id} belongs to another live agent process, attached now; \
                         two processes cannot share one agent id (was this work dir copied from \
                         another machine? give this one a fresh --work-dir)"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// A newcomer claiming the hostname of a live agent (another id, its
    /// stream open, another process) is refused: a live, reachable agent is
    /// never replaced by a second one on its host. Once the first one's
    /// stream is gone (it died), the newcomer takes its place as before.
    fn check_hostname_free(
        &self,
        agent_id: Option<&AgentId>,
        hostname: &str,
        incarnation: &str,
    ) -> Result<(), MasterError> {
        // The agents the log knows on this host (its index), not a scan of
        // every session: registrations come by the thousand after a
        // failover.
        let on_host = self.cluster.agents_by_host.get(hostname);
        let live = on_host.into_iter().flatten().find(|id| {
            Some(*id) != agent_id
                && self
                    .agents
                    .get(*id)
                    .is_some_and(|link| link.attached && link.incarnation != incarnation)
                && self
                    .cluster
                    .agents
                    .get(*id)
                    .is_some_and(|a| a.state.is_known())
        });
        match live {
            Some(id) => Err(MasterError::AgentRefused {
                name: "hostname_in_use",
                message: format!(
                    "host {hostname} already runs live agent {id}, attached now; a second agent \
                     on one hostname is refused (stop the first one, or give this one another \
                     --hostname)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// After a (re)registration: what `effects::reconcile_agent` says the
    /// agent must hear again.
    fn reconcile_agent(&mut self, agent_id: &AgentId, reported: &BTreeSet<TaskKey>) {
        let Some(link) = self.agents.get(agent_id) else {
            return;
        };
        for m in crate::effects::reconcile_agent(&self.cluster, agent_id, reported) {
            let _ = link.addr.try_send(agent_session::Deliver(m));
        }
    }

    /// Whether a report comes from the agent's current session while this
    /// master serves (an older session's report is stale).
    fn is_current_agent_session(&self, agent_id: &AgentId, session: u64) -> bool {
        self.serving().is_ok()
            && self
                .agents
                .get(agent_id)
                .is_some_and(|l| l.session == session)
    }

    /// The session of a registered agent, while serving.
    fn agent_link(&self, agent_id: AgentId) -> Result<&Addr<AgentSession>, MasterError> {
        self.serving()?;
        self.agents
            .get(&agent_id)
            .map(|l| &l.addr)
            .ok_or(MasterError::NotRegistered(agent_id))
    }

    /// Mesos' task reconciliation, answered from the committed state.
    fn reconcile(&self, framework_id: &FrameworkId, task_ids: Vec<String>) -> Vec<sp::TaskStatus> {
        self.log.with_state(|m| {
            let c = &m.cluster;
            let partition_aware = c
                .frameworks
                .get(framework_id)
                .is_some_and(|f| f.partition_aware);
            let status = |t: &orrery_events::state::Task| sp::TaskStatus {
                task_id: t.key.task_id.0.clone(),
                agent_id: t.agent_id.0.clone(),
                state: t.state as i32,
                reason: TaskReason::ReasonReconciliation as i32,
                message: t.message.clone(),
                source: pb::StatusSource::SourceMaster as i32,
                uuid: String::new(),
                exit_code: t.exit_code,
                healthy: t.healthy,
            };
            if task_ids.is_empty() {
                return c
                    .tasks
                    .iter()
                    .filter(|(k, t)| k.framework_id == *framework_id && !t.is_terminal())
                    .map(|(_, t)| status(t))
                    .collect();
            }
            task_ids
                .into_iter()
                .map(|id| {
                    let key = TaskKey::new(framework_id.clone(), TaskId::new(id.clone()));
                    match c.task(&key) {
                        Some(t) => status(t),
                        None => sp::TaskStatus {
                            task_id: id,
                            state: if partition_aware {
                                TaskState::TaskUnknown as i32
                            } else {
                                TaskState::TaskLost as i32
                            },
                            reason: TaskReason::ReasonReconciliation as i32,
                            message: "the master does not know this task".into(),
                            source: pb::StatusSource::SourceMaster as i32,
                            ..Default::default()
                        },
                    }
                })
                .collect()
        })
    }
}

impl Actor for Master {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        let tick = self.settings.tick;
        ctx.run_interval(tick, |act, ctx| act.tick(ctx));
    }
}

// --- messages ----------------------------------------------------------------

/// Any command, committed; replies once the log acknowledged it.
#[derive(Debug, Message)]
#[rtype(result = "Result<Committed, MasterError>")]
pub struct Submit {
    pub command: Command,
    pub want_events: bool,
    /// `telemetry::origin()` of the API request (empty for none).
    pub origin: Origin,
}

fn reply_via<T: 'static>(
    tx: oneshot::Sender<Result<T, MasterError>>,
    f: impl FnOnce(&mut Master, &mut Context<Master>, Committed) -> Result<T, MasterError> + 'static,
) -> Done {
    Box::new(move |act, ctx, res| {
        let _ = tx.send(res.and_then(|c| f(act, ctx, c)));
    })
}

fn wait<T: Send + 'static>(
    rx: oneshot::Receiver<Result<T, MasterError>>,
) -> ResponseFuture<Result<T, MasterError>> {
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err(MasterError::Unavailable("the master stopped".into())))
    })
}

impl Handler<Submit> for Master {
    type Result = ResponseFuture<Result<Committed, MasterError>>;
    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.serving() {
            let _ = tx.send(Err(e));
            return wait(rx);
        }
        self.enqueue(
            msg.command,
            msg.want_events,
            reply_via(tx, |_, _, c| Ok(c)),
            msg.origin,
            ctx,
        );
        wait(rx)
    }
}

/// A framework's `Subscribe`: commits the subscription, then opens the
/// session that owns `tx` and sends `Subscribed` first on it.
#[derive(Debug, Message)]
#[rtype(result = "Result<sp::Subscribed, MasterError>")]
pub struct SubscribeFramework {
    pub subscription: FrameworkSubscription,
    pub tx: framework_session::EventTx,
    pub origin: Origin,
}

impl Handler<SubscribeFramework> for Master {
    type Result = ResponseFuture<Result<sp::Subscribed, MasterError>>;
    fn handle(&mut self, msg: SubscribeFramework, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.serving() {
            let _ = reply.send(Err(e));
            return wait(rx);
        }
        let tx = msg.tx;
        self.enqueue(
            Command::Subscribe(msg.subscription),
            true,
            reply_via(reply, move |act, ctx, c| {
                let id = c
                    .events
                    .iter()
                    .find_map(|e| match e {
                        Payload::FrameworkSubscribed(s) => Some(s.framework_id.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        MasterError::Unavailable("the subscription committed no event".into())
                    })?;
                act.open_framework(FrameworkId::new(id), tx, ctx)
            }),
            msg.origin,
            ctx,
        );
        wait(rx)
    }
}

/// One scheduler call (everything but `Subscribe`).
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, MasterError>")]
pub struct FrameworkCall {
    pub framework_id: FrameworkId,
    pub stream_id: String,
    pub call: sp::call::Call,
    pub origin: Origin,
}

fn refuse_seconds(f: Option<sp::Filters>) -> Option<f64> {
    f.and_then(|f| f.refuse_seconds)
}

/// A scheduler call as a command (`None` for a reconcile, which is a read).
pub fn call_command(
    framework_id: FrameworkId,
    call: sp::call::Call,
) -> Result<Option<Command>, MasterError> {
    use sp::call::Call as C;
    Ok(Some(match call {
        C::Accept(a) => {
            let mut launches = Vec::with_capacity(a.launches.len());
            for t in a.launches {
                let resources = match &t.resources {
                    Some(r) => Resources::from_proto(r).map_err(MasterError::Rejected)?,
                    None => Resources::new(0, 0, 0),
                };
                launches.push(TaskSpec {
                    task_id: TaskId::new(t.task_id),
                    name: t.name,
                    resources,
                    command: t.command.unwrap_or_default(),
                    job: None,
                    instance: 0,
                    job_version: 0,
                });
            }
            Command::Accept {
                framework_id,
                offer_ids: a.offer_ids.into_iter().map(OfferId::new).collect(),
                launches,
                refuse_seconds: refuse_seconds(a.filters),
            }
        }
        C::Decline(d) => Command::Decline {
            framework_id,
            offer_ids: d.offer_ids.into_iter().map(OfferId::new).collect(),
            refuse_seconds: refuse_seconds(d.filters),
        },
        C::Revive(_) => Command::Revive { framework_id },
        C::Suppress(_) => Command::Suppress { framework_id },
        C::Kill(k) => Command::Kill {
            framework_id,
            task_id: TaskId::new(k.task_id),
        },
        C::Acknowledge(a) => Command::Acknowledge {
            framework_id,
            task_id: TaskId::new(a.task_id),
            uuid: a.uuid,
        },
        C::Teardown(_) => Command::Teardown { framework_id },
        C::AcceptInverseOffers(a) => Command::AnswerInverseOffers {
            framework_id,
            offer_ids: a.inverse_offer_ids.into_iter().map(OfferId::new).collect(),
            accepted: true,
        },
        C::DeclineInverseOffers(d) => Command::AnswerInverseOffers {
            framework_id,
            offer_ids: d.inverse_offer_ids.into_iter().map(OfferId::new).collect(),
            accepted: false,
        },
        C::Reconcile(_) => return Ok(None),
    }))
}

impl Handler<FrameworkCall> for Master {
    type Result = ResponseFuture<Result<u64, MasterError>>;
    fn handle(&mut self, msg: FrameworkCall, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, rx) = oneshot::channel();
        let outcome = (|| {
            self.serving()?;
            match self.frameworks.get(&msg.framework_id) {
                Some(link) if link.stream_id == msg.stream_id => {}
                _ => {
                    return Err(MasterError::StaleStream {
                        framework_id: msg.framework_id.clone(),
                        stream_id: msg.stream_id.clone(),
                    })
                }
            }
            call_command(msg.framework_id.clone(), msg.call.clone())
        })();
        match outcome {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(None) => {
                let sp::call::Call::Reconcile(r) = msg.call else {
                    unreachable!("only a reconcile maps to no command")
                };
                let statuses = self.reconcile(&msg.framework_id, r.task_ids);
                if let Some(link) = self.frameworks.get(&msg.framework_id) {
                    for status in statuses {
                        let _ = link.addr.try_send(framework_session::Deliver(
                            sp::event::Event::Update(sp::Update {
                                status: Some(status),
                            }),
                        ));
                    }
                }
                let _ = reply.send(Ok(self.log.last_applied()));
            }
            Ok(Some(command)) => {
                let revive = matches!(
                    command,
                    Command::Revive { .. } | Command::Decline { .. } | Command::Accept { .. }
                );
                self.enqueue(
                    command,
                    false,
                    reply_via(reply, move |act, _, c| {
                        if revive {
                            act.timers.last_allocation = None;
                        }
                        Ok(c.last_index)
                    }),
                    msg.origin,
                    ctx,
                );
            }
        }
        wait(rx)
    }
}

impl Handler<framework_session::StreamClosed> for Master {
    type Result = ();
    fn handle(&mut self, msg: framework_session::StreamClosed, ctx: &mut Context<Self>) {
        let current = self
            .frameworks
            .get(&msg.framework_id)
            .is_some_and(|l| l.stream_id == msg.stream_id);
        if !current || self.serving().is_err() {
            return;
        }
        self.frameworks.remove(&msg.framework_id);
        let id = msg.framework_id.clone();
        tracing::info!(framework_id = %id, "framework disconnected");
        self.submit_internal(
            Command::DisconnectFramework {
                framework_id: msg.framework_id,
            },
            ctx,
            Box::new(move |_, _, res| {
                if let Err(e) = res {
                    tracing::debug!(framework_id = %id, error = %e, "recording a disconnect");
                }
            }),
        );
    }
}

/// An agent's `Register` (no id) or reregistration (its id and tasks).
#[derive(Debug, Message)]
#[rtype(result = "Result<(AgentId, u64), MasterError>")]
pub struct RegisterAgent {
    pub agent_id: Option<AgentId>,
    pub registration: AgentRegistration,
    pub tasks: Vec<ReportedTask>,
    /// The agent's Orrery version ("" from an agent that sends none).
    pub version: String,
    /// The agent process's incarnation ("" from an agent that sends none).
    pub incarnation: String,
    pub origin: Origin,
}

/// The oldest agent version this master works with: the agent protocol as
/// this master speaks it (registration with tasks, term-stamped messages,
/// acknowledged status updates) dates from it. An agent that sends no
/// version predates the field and speaks this protocol.
pub const OLDEST_AGENT_VERSION: (u64, u64, u64) = (0, 1, 0);

/// `MAJOR.MINOR.PATCH` (a `-pre` or `+build` tail is ignored).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

/// Refuses an agent this master cannot work with, by name.
pub fn check_agent_version(hostname: &str, version: &str) -> Result<(), MasterError> {
    if version.is_empty() {
        return Ok(());
    }
    let (a, b, c) = OLDEST_AGENT_VERSION;
    match parse_version(version) {
        None => Err(MasterError::AgentRefused {
            name: "agent_version_invalid",
            message: format!(
                "agent {hostname} sent version {version:?}, which is not MAJOR.MINOR.PATCH"
            ),
        }),
        Some(v) if v < OLDEST_AGENT_VERSION => Err(MasterError::AgentRefused {
            name: "agent_too_old",
            message: format!(
                "agent {hostname} runs Orrery {version}, older than the oldest this master supports ({a}.{b}.{c}); upgrade the agent"
            ),
        }),
        Some(_) => Ok(()),
    }
}

impl Handler<RegisterAgent> for Master {
    type Result = ResponseFuture<Result<(AgentId, u64), MasterError>>;
    fn handle(&mut self, msg: RegisterAgent, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, rx) = oneshot::channel();
        let term = match self.serving().and_then(|t| {
            check_agent_version(&msg.registration.hostname, &msg.version)?;
            self.check_agent_identity(msg.agent_id.as_ref(), &msg.incarnation)?;
            self.check_hostname_free(
                msg.agent_id.as_ref(),
                &msg.registration.hostname,
                &msg.incarnation,
            )?;
            Ok(t)
        }) {
            Ok(t) => t,
            Err(e) => {
                if let MasterError::AgentRefused { name, message } = &e {
                    metrics::counter!(crate::telemetry::AGENTS_REFUSED, "reason" => *name)
                        .increment(1);
                    tracing::warn!(hostname = %msg.registration.hostname, reason = name, "refused an agent's registration: {message}");
                }
                let _ = reply.send(Err(e));
                return wait(rx);
            }
        };
        let incarnation = msg.incarnation.clone();
        let reported: BTreeSet<TaskKey> = msg
            .tasks
            .iter()
            .map(|t| TaskKey::new(t.framework_id.clone(), t.task_id.clone()))
            .collect();
        let hostname = msg.registration.hostname.clone();
        let command = match msg.agent_id {
            None => Command::RegisterAgent(msg.registration),
            Some(agent_id) => Command::ReregisterAgent {
                agent_id,
                registration: msg.registration,
                tasks: msg.tasks,
            },
        };
        self.enqueue(
            command,
            true,
            Box::new(move |act, ctx, res| {
                if let Err(MasterError::Rejected(r)) = &res {
                    tracing::warn!(%hostname, reason = r.name(), "refused an agent's registration: {r}");
                }
                let _ = reply.send(
                    res.and_then(|c| register_done(act, ctx, c, term, incarnation, &reported)),
                );
            }),
            msg.origin,
            ctx,
        );
        wait(rx)
    }
}

/// A committed registration: open the agent's session and reconcile.
fn register_done(
    act: &mut Master,
    ctx: &mut Context<Master>,
    c: Committed,
    term: u64,
    incarnation: String,
    reported: &BTreeSet<TaskKey>,
) -> Result<(AgentId, u64), MasterError> {
    let id = c
        .events
        .iter()
        .find_map(|e| match e {
            Payload::AgentRegistered(r) => Some(r.agent_id.clone()),
            Payload::AgentReregistered(r) => Some(r.agent_id.clone()),
            _ => None,
        })
        .ok_or_else(|| MasterError::Unavailable("the registration committed no event".into()))?;
    let id = AgentId::new(id);
    act.open_agent(id.clone(), term, incarnation, ctx);
    act.reconcile_agent(&id, reported);
    Ok((id, term))
}

/// An agent opens its message stream.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MasterError>")]
pub struct AttachAgent {
    pub agent_id: AgentId,
    pub tx: agent_session::MessageTx,
}

impl Handler<AttachAgent> for Master {
    type Result = Result<(), MasterError>;
    fn handle(&mut self, msg: AttachAgent, _: &mut Context<Self>) -> Self::Result {
        self.agent_link(msg.agent_id.clone())?
            .do_send(agent_session::Attach(msg.tx));
        if let Some(link) = self.agents.get_mut(&msg.agent_id) {
            link.attached = true;
        }
        Ok(())
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), MasterError>")]
pub struct AgentPong {
    pub agent_id: AgentId,
    pub seq: u64,
}

impl Handler<AgentPong> for Master {
    type Result = Result<(), MasterError>;
    fn handle(&mut self, msg: AgentPong, _: &mut Context<Self>) -> Self::Result {
        self.agent_link(msg.agent_id)?
            .do_send(agent_session::Pong(msg.seq));
        Ok(())
    }
}

impl Handler<agent_session::Silent> for Master {
    type Result = ();
    fn handle(&mut self, msg: agent_session::Silent, ctx: &mut Context<Self>) {
        if !self.is_current_agent_session(&msg.agent_id, msg.session) {
            return;
        }
        if !self.removals.take(Instant::now()) {
            metrics::counter!(crate::telemetry::AGENT_REMOVALS_DEFERRED).increment(1);
            tracing::info!(agent_id = %msg.agent_id, "agent removal deferred by --agent-removal-rate-limit");
            self.deferred_silent.push_back(msg);
            return;
        }
        tracing::warn!(agent_id = %msg.agent_id, missed = msg.missed, "agent missed its ping budget; marking it unreachable");
        let id = msg.agent_id.clone();
        let session = msg.session;
        self.submit_internal(
            Command::MarkAgentUnreachable {
                agent_id: msg.agent_id,
                reason: format!(
                    "no answer to {} pings, {} ms apart",
                    msg.missed,
                    self.settings.agent_ping_timeout.as_millis()
                ),
            },
            ctx,
            Box::new(move |act, _, res| {
                if let Err(e) = res {
                    tracing::warn!(agent_id = %id, error = %e, "marking an agent unreachable");
                    return;
                }
                if act.agents.get(&id).is_some_and(|l| l.session == session) {
                    if let Some(link) = act.agents.remove(&id) {
                        link.addr.do_send(agent_session::Close(
                            tonic::Status::failed_precondition(
                                "the agent was marked unreachable; reregister",
                            ),
                        ));
                    }
                }
            }),
        );
    }
}

impl Handler<agent_session::Detached> for Master {
    type Result = ();
    fn handle(&mut self, msg: agent_session::Detached, ctx: &mut Context<Self>) {
        if !self.is_current_agent_session(&msg.agent_id, msg.session) {
            return;
        }
        if let Some(link) = self.agents.get_mut(&msg.agent_id) {
            link.attached = false;
        }
        let connected = self
            .cluster
            .agents
            .get(&msg.agent_id)
            .is_some_and(|a| a.state == AgentState::Registered);
        if !connected {
            return;
        }
        tracing::info!(agent_id = %msg.agent_id, "agent disconnected; its ping budget decides the rest");
        self.submit_internal(
            Command::DisconnectAgent {
                agent_id: msg.agent_id,
            },
            ctx,
            Box::new(|_, _, _| {}),
        );
    }
}

/// Whether this replica serves as the active master now.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, MasterError>")]
pub struct Serving;

impl Handler<Serving> for Master {
    type Result = Result<u64, MasterError>;
    fn handle(&mut self, _: Serving, _: &mut Context<Self>) -> Self::Result {
        self.serving()
    }
}

/// Why agent removals are held now (`crate::removals`), for `/health`.
#[derive(Debug, Message)]
#[rtype(result = "Option<String>")]
pub struct RemovalsHeld;

impl Handler<RemovalsHeld> for Master {
    type Result = Option<String>;
    fn handle(&mut self, _: RemovalsHeld, _: &mut Context<Self>) -> Self::Result {
        self.elected
            .then(|| self.removals.held().map(str::to_owned))
            .flatten()
    }
}

/// The agents whose removal is held now (empty when none is).
#[derive(Debug, Message)]
#[rtype(result = "Vec<AgentId>")]
pub struct HeldAgents;

impl Handler<HeldAgents> for Master {
    type Result = Vec<AgentId>;
    fn handle(&mut self, _: HeldAgents, _: &mut Context<Self>) -> Self::Result {
        let (Some(term), true, Some(_)) = (self.leading, self.elected, self.removals.held()) else {
            return Vec::new();
        };
        self.cluster
            .agents
            .values()
            .filter(|a| a.reregistered_term < term && a.state.is_known())
            .map(|a| a.id.clone())
            .collect()
    }
}

/// Stops the actor: closes every session (clients reconnect elsewhere).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Master {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        let info = LeaderInfo::default();
        self.step_down(&info, ctx);
        ctx.stop();
    }
}

/// `orrery job status`: every instance of a job, and why pending ones wait.
#[derive(Debug, Message)]
#[rtype(result = "Result<orrery_proto::operator::JobStatusResponse, MasterError>")]
pub struct JobStatus(pub JobKey);

impl Handler<JobStatus> for Master {
    type Result = Result<orrery_proto::operator::JobStatusResponse, MasterError>;
    fn handle(&mut self, msg: JobStatus, _: &mut Context<Self>) -> Self::Result {
        use orrery_proto::operator as op;
        self.serving()?;
        let c = &self.cluster;
        let job = c.jobs.get(&msg.0).ok_or_else(|| {
            MasterError::Rejected(Rejection::UnknownJob {
                key: msg.0.to_string(),
            })
        })?;
        let hist = jobs::histories(c);
        let now = now_ms();
        let instances = (0..job.spec.instances)
            .map(|i| {
                let h = hist.get(&(msg.0.clone(), i));
                let mut s = op::InstanceStatus {
                    instance: i,
                    ..Default::default()
                };
                match jobs::instance_state(&job.spec, h, now) {
                    jobs::InstanceState::Running(id) => {
                        let key = TaskKey::new(
                            self.jobs_fw.clone().unwrap_or_else(|| FrameworkId::new("")),
                            id.clone(),
                        );
                        let task = c
                            .tasks
                            .iter()
                            .find(|(k, _)| {
                                k.task_id == id && (self.jobs_fw.is_none() || **k == key)
                            })
                            .map(|(_, t)| t);
                        s.task_id = id.0.clone();
                        if let Some(t) = task {
                            s.state = t.state.as_str_name().to_owned();
                            if let Some(a) = c.agents.get(&t.agent_id) {
                                s.hostname = a.hostname.clone();
                                if let Some(d) = &a.domain {
                                    s.region = d.region.clone();
                                    s.zone = d.zone.clone();
                                }
                            }
                        }
                    }
                    jobs::InstanceState::Finished => s.state = "FINISHED".into(),
                    jobs::InstanceState::GaveUp(n) => {
                        s.state = "GAVE_UP".into();
                        s.reason = format!("failed {n} times in a row (max_task_failures)");
                    }
                    jobs::InstanceState::BackingOff(until) => {
                        s.state = "BACKING_OFF".into();
                        s.reason = format!("restarting in {} ms", until.saturating_sub(now));
                    }
                    jobs::InstanceState::Pending => {
                        s.state = "PENDING".into();
                        s.reason = self
                            .job_pending
                            .get(&(msg.0.clone(), i))
                            .cloned()
                            .unwrap_or_else(|| "waiting for the next offers".into());
                    }
                }
                s
            })
            .collect();
        Ok(op::JobStatusResponse {
            spec: Some(job.spec.clone()),
            version: job.version,
            instances,
            updating: job.previous.is_some(),
        })
    }
}

/// `orrery job list`.
#[derive(Debug, Message)]
#[rtype(result = "Result<orrery_proto::operator::JobList, MasterError>")]
pub struct ListJobs;

impl Handler<ListJobs> for Master {
    type Result = Result<orrery_proto::operator::JobList, MasterError>;
    fn handle(&mut self, _: ListJobs, _: &mut Context<Self>) -> Self::Result {
        use orrery_proto::operator as op;
        self.serving()?;
        let c = &self.cluster;
        let hist = jobs::histories(c);
        let now = now_ms();
        Ok(op::JobList {
            jobs: c
                .jobs
                .values()
                .map(|j| {
                    let states: Vec<_> = (0..j.spec.instances)
                        .map(|i| jobs::instance_state(&j.spec, hist.get(&(j.key.clone(), i)), now))
                        .collect();
                    op::JobSummary {
                        key: Some(j.key.to_proto()),
                        instances: j.spec.instances,
                        running: states
                            .iter()
                            .filter(|s| matches!(s, jobs::InstanceState::Running(_)))
                            .count() as u32,
                        pending: states
                            .iter()
                            .filter(|s| {
                                matches!(
                                    s,
                                    jobs::InstanceState::Pending
                                        | jobs::InstanceState::BackingOff(_)
                                )
                            })
                            .count() as u32,
                        service: j.spec.service,
                        version: j.version,
                    }
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_older_than_the_oldest_supported_or_with_a_bad_version_are_refused_by_name() {
        assert!(
            check_agent_version("h", "").is_ok(),
            "before the field: accepted"
        );
        assert!(check_agent_version("h", "0.1.0").is_ok());
        assert!(check_agent_version("h", "0.2.0-rc.1").is_ok());
        assert!(check_agent_version("h", env!("CARGO_PKG_VERSION")).is_ok());
        match check_agent_version("h", "0.0.9") {
            Err(MasterError::AgentRefused { name, message }) => {
                assert_eq!(name, "agent_too_old");
                assert!(
                    message.contains("0.0.9") && message.contains("0.1.0"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match check_agent_version("h", "latest") {
            Err(MasterError::AgentRefused { name, .. }) => {
                assert_eq!(name, "agent_version_invalid")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_version("1.2.3.4"), None);
        assert_eq!(parse_version("10.2.3+abc"), Some((10, 2, 3)));
    }
}
