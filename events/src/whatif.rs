//! Dry runs: what a drain or a job update would do, before anyone does it.
//!
//! `orrery host maintenance start HOSTS --dry-run` and `orrery job update
//! FILE --dry-run` (Nomad's `job plan`) run the real core — `decide`,
//! `apply` and the job scheduler's `jobs::plan` — on a copy of the committed
//! state, with simulated time and simulated agents, and report which tasks
//! move where, which jobs fall below their SLA, and how long it takes.
//! Nothing is proposed to the log: the copy is thrown away.
//!
//! The simulated world is small and says what it assumes ([`Assumptions`]):
//! - every agent that is connected stays connected; a task it is asked to
//!   kill is KILLED at the next step, a task it launches is RUNNING (and
//!   healthy, for a job with a health check) `task_start_ms` later;
//! - other frameworks launch nothing new (they are suppressed and their
//!   outstanding offers declined, so the job scheduler may use what they
//!   held); their tasks on a draining host are killed when they accept the
//!   inverse offer — at once if `frameworks_accept_inverse_offers`, never
//!   otherwise — or at the master's drain grace, and nobody replaces them;
//! - the clock steps by one second while anything happens, and by up to a
//!   minute at a time while nothing does (waiting for a drain grace or a
//!   rolling update's watch), so timings are accurate to that step.
//!
//! Pure like the rest of this crate: no clock, no I/O; the same state and
//! request give the same report.

use std::collections::{BTreeMap, BTreeSet};

use orrery_proto::events::{self as pb, StatusSource, TaskReason, TaskState};

use crate::command::{Command, StatusUpdate};
use crate::ids::{FrameworkId, TaskKey};
use crate::jobs;
use crate::rejection::Rejection;
use crate::state::{Cluster, HostState, InverseAnswer, JobKey};
use crate::{decide, envelopes, try_apply, Event};

/// What the simulated world assumes (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Assumptions {
    /// From a launch to RUNNING (and healthy).
    pub task_start_ms: u64,
    /// How far ahead to look; the run stops earlier once the goal is met.
    pub horizon_ms: u64,
    /// Frameworks accept inverse offers at once (otherwise never: their
    /// tasks wait for the drain grace).
    pub frameworks_accept_inverse_offers: bool,
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            task_start_ms: 10_000,
            horizon_ms: 3_600_000,
            frameworks_accept_inverse_offers: false,
        }
    }
}

/// The longest horizon a dry run accepts: a day of simulated time.
pub const HORIZON_MS_MAX: u64 = 24 * 3_600 * 1_000;
/// The shortest step, and the longest while nothing happens.
const STEP_MS: u64 = 1_000;
const IDLE_STEP_MS_MAX: u64 = 60_000;

/// What to try.
#[derive(Clone, Debug)]
pub enum Change {
    /// `orrery host maintenance start HOSTS`.
    Drain(Vec<String>),
    /// `orrery job update FILE`.
    UpdateJob(Box<pb::JobSpec>),
}

/// A task stopped by the change, and where its work went.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub framework_id: String,
    pub task_id: String,
    /// The job and instance (`None` for a framework's own task).
    pub job: Option<(String, u32)>,
    pub from_host: String,
    /// Its replacement: task id and host (`None`: not replaced within the
    /// horizon, or nobody replaces it).
    pub to: Option<(String, String)>,
    /// Simulated ms from the start until the kill was asked for.
    pub stopped_after_ms: u64,
    /// Until the replacement was RUNNING.
    pub running_after_ms: Option<u64>,
    /// Why it stopped when it did.
    pub why: String,
}

/// A job that had fewer instances available than its SLA allows.
#[derive(Clone, Debug, PartialEq)]
pub struct SlaBreach {
    pub job: String,
    pub instances: u32,
    /// The SLA: at most this many (at least 1) unavailable at once.
    pub max_unavailable: u32,
    pub fewest_available: u32,
    pub after_ms: u64,
    /// It was already below before the change.
    pub already_before: bool,
}

/// A host the drain touched.
#[derive(Clone, Debug, PartialEq)]
pub struct HostOutcome {
    pub hostname: String,
    /// Its state at the end of the run.
    pub state: &'static str,
    pub drained_after_ms: Option<u64>,
}

/// What the change would do.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The committed index the copy started from.
    pub from_index: u64,
    pub moves: Vec<Move>,
    pub below_sla: Vec<SlaBreach>,
    pub hosts: Vec<HostOutcome>,
    /// Simulated ms until the goal was met (every host DRAINED, or the
    /// update finished), `None` if it was not within the horizon.
    pub done_after_ms: Option<u64>,
    /// For an update: "finished", "rolled back", or "still updating".
    pub outcome: String,
    /// What the change was still waiting for at the end of the run.
    pub waiting: Vec<String>,
    pub simulated_ms: u64,
}

/// Runs `change` on a copy of `cluster` from `now_ms`: the change itself
/// refused gives its rejection, as the real call would.
pub fn dry_run(
    cluster: &Cluster,
    change: Change,
    assume: &Assumptions,
    now_ms: u64,
) -> Result<Report, Rejection> {
    if assume.horizon_ms == 0 || assume.horizon_ms > HORIZON_MS_MAX {
        return Err(Rejection::InvalidField {
            field: "horizon",
            problem: format!(
                "must be more than 0 and at most {} s",
                HORIZON_MS_MAX / 1_000
            ),
        });
    }
    if assume.task_start_ms > assume.horizon_ms {
        return Err(Rejection::InvalidField {
            field: "task_start",
            problem: "is longer than the horizon".to_owned(),
        });
    }
    let mut w = World {
        c: cluster.clone(),
        now: now_ms,
        t0: now_ms,
        uuid: 0,
    };
    let command = match &change {
        Change::Drain(hosts) => Command::StartMaintenance {
            hostnames: hosts.clone(),
        },
        Change::UpdateJob(spec) => Command::UpdateJob((**spec).clone()),
    };
    let first = decide(&w.c, command, w.now)?;
    let before: BTreeMap<TaskKey, Before> = cluster
        .tasks
        .values()
        .filter(|t| !t.is_terminal())
        .map(|t| {
            let host = cluster
                .agents
                .get(&t.agent_id)
                .map_or_else(String::new, |a| a.hostname.clone());
            (t.key.clone(), Before { host })
        })
        .collect();
    let jobs_fw =
        w.c.frameworks
            .values()
            .find(|f| f.name == jobs::FRAMEWORK_NAME && !f.removed)
            .map(|f| f.id.clone());
    let initial_available = available(&w.c);
    w.commit(first);
    w.quiet_other_frameworks(jobs_fw.as_ref());

    let (goal_hosts, goal_job) = match &change {
        Change::Drain(hosts) => (hosts.clone(), None),
        Change::UpdateJob(spec) => {
            let key = JobKey::from_proto(spec.key.as_ref());
            let version = w.c.jobs.get(&key).map_or(0, |j| j.version);
            (Vec::new(), Some((key, version)))
        }
    };
    let mut stopped: BTreeMap<TaskKey, (u64, String)> = BTreeMap::new();
    let mut running_at: BTreeMap<TaskKey, u64> = BTreeMap::new();
    let mut drained_at: BTreeMap<String, u64> = BTreeMap::new();
    let mut lowest: BTreeMap<JobKey, (u32, u64)> = BTreeMap::new();
    let mut pending: BTreeMap<(JobKey, u32), String> = BTreeMap::new();
    let mut done_after = None;
    let mut outcome = String::new();
    let mut step = STEP_MS;
    loop {
        let elapsed = w.now - w.t0;
        // What the step starts with: kills asked for, hosts drained, the
        // jobs' availability.
        for t in w.c.tasks.values() {
            if t.kill_requested && before.contains_key(&t.key) && !stopped.contains_key(&t.key) {
                stopped.insert(t.key.clone(), (elapsed, kill_why(&w.c, t)));
            }
            if t.state == TaskState::TaskRunning
                && !before.contains_key(&t.key)
                && !running_at.contains_key(&t.key)
            {
                running_at.insert(t.key.clone(), elapsed);
            }
        }
        for h in &goal_hosts {
            if w.c
                .hosts
                .get(h)
                .is_some_and(|h| matches!(h.state, HostState::Drained | HostState::Down))
            {
                drained_at.entry(h.clone()).or_insert(elapsed);
            }
        }
        for (key, n) in available(&w.c) {
            let e = lowest.entry(key).or_insert((n, elapsed));
            if n < e.0 {
                *e = (n, elapsed);
            }
        }
        let goal = done_after.is_some()
            || match &goal_job {
                None => drained_at.len() == goal_hosts.len(),
                Some((key, version)) => match w.c.jobs.get(key) {
                    None => {
                        outcome = "the job is gone".to_owned();
                        true
                    }
                    Some(j) if j.previous.is_none() => {
                        outcome = if j.version > *version {
                            "rolled back".to_owned()
                        } else {
                            "finished".to_owned()
                        };
                        true
                    }
                    Some(_) => false,
                },
            };
        if goal && done_after.is_none() {
            done_after = Some(elapsed);
        }
        // Once the goal is met, the run goes on only until the replacements
        // it started run (their times are part of the report).
        let starting = w.c.tasks.values().any(|t| {
            !before.contains_key(&t.key)
                && matches!(t.state, TaskState::TaskStaging | TaskState::TaskStarting)
        });
        if (done_after.is_some() && !starting) || elapsed >= assume.horizon_ms {
            break;
        }
        let progressed = w.step(jobs_fw.as_ref(), assume, &mut pending);
        step = if progressed {
            STEP_MS
        } else {
            (step * 2).min(IDLE_STEP_MS_MAX)
        };
        w.now = (w.now + step).min(w.t0 + assume.horizon_ms);
    }
    if goal_job.is_some() && outcome.is_empty() {
        outcome = "still updating".to_owned();
    }

    // Moves: each task stopped, and the newest task of its instance since.
    let mut moves = Vec::new();
    for (key, (after, why)) in &stopped {
        let Some(t) = w.c.tasks.get(key) else {
            continue;
        };
        let job = t.job.as_ref().map(|j| (j.clone(), t.instance));
        let to = job.as_ref().and_then(|(j, i)| {
            w.c.tasks
                .values()
                .filter(|n| {
                    n.job.as_ref() == Some(j)
                        && n.instance == *i
                        && !before.contains_key(&n.key)
                        && !n.is_terminal()
                })
                .max_by_key(|n| n.launched_at_ms)
        });
        moves.push(Move {
            framework_id: key.framework_id.0.clone(),
            task_id: key.task_id.0.clone(),
            job: job.map(|(j, i)| (j.to_string(), i)),
            from_host: before[key].host.clone(),
            to: to.map(|n| {
                let host =
                    w.c.agents
                        .get(&n.agent_id)
                        .map_or_else(String::new, |a| a.hostname.clone());
                (n.key.task_id.0.clone(), host)
            }),
            stopped_after_ms: *after,
            running_after_ms: to.and_then(|n| running_at.get(&n.key).copied()),
            why: why.clone(),
        });
    }
    moves.sort_by(|a, b| {
        (a.stopped_after_ms, &a.job, &a.task_id).cmp(&(b.stopped_after_ms, &b.job, &b.task_id))
    });

    let mut below_sla = Vec::new();
    for (key, (fewest, after)) in &lowest {
        let Some(job) = w.c.jobs.get(key) else {
            continue;
        };
        let spec = &job.spec;
        let max_unavailable = spec.max_unavailable.max(1);
        let floor = spec.instances.saturating_sub(max_unavailable);
        if *fewest < floor {
            below_sla.push(SlaBreach {
                job: key.to_string(),
                instances: spec.instances,
                max_unavailable,
                fewest_available: *fewest,
                after_ms: *after,
                already_before: initial_available.get(key).is_some_and(|n| *n < floor),
            });
        }
    }

    let hosts = goal_hosts
        .iter()
        .map(|h| HostOutcome {
            hostname: h.clone(),
            state: w.c.hosts.get(h).map_or("unknown", |h| h.state.as_str()),
            drained_after_ms: drained_at.get(h).copied(),
        })
        .collect();

    let mut waiting = Vec::new();
    if done_after.is_none() {
        for h in &goal_hosts {
            if drained_at.contains_key(h) {
                continue;
            }
            for agent_id in w.c.agents_by_host.get(h).into_iter().flatten() {
                for t in w.c.tasks_on_agent(agent_id).filter(|t| !t.is_terminal()) {
                    waiting.push(match &t.job {
                        Some(j) => format!(
                            "{h}: {j} instance {} (task {}) waits: {}",
                            t.instance,
                            t.key.task_id,
                            pending
                                .get(&(j.clone(), t.instance))
                                .cloned()
                                .unwrap_or_else(|| "the job's SLA allows no more instances down until replacements run".to_owned())
                        ),
                        None => format!(
                            "{h}: task {} of framework {} waits for its framework or the drain grace",
                            t.key.task_id, t.key.framework_id
                        ),
                    });
                }
            }
        }
        if let Some((key, _)) = &goal_job {
            for ((j, i), why) in &pending {
                if j == key {
                    waiting.push(format!("{j} instance {i} cannot be placed: {why}"));
                }
            }
            if waiting.is_empty() {
                waiting.push(format!(
                    "{key}: the update is still replacing instances (batch size and watch)"
                ));
            }
        }
    }

    Ok(Report {
        from_index: cluster.applied_index,
        moves,
        below_sla,
        hosts,
        done_after_ms: done_after,
        outcome,
        waiting,
        simulated_ms: w.now - w.t0,
    })
}

struct Before {
    host: String,
}

struct World {
    c: Cluster,
    now: u64,
    t0: u64,
    uuid: u64,
}

impl World {
    /// Applies decided events as one committed batch. Events decide made
    /// that apply refuses would be a bug in the core; the dry run stops
    /// applying that batch rather than report a state nobody could reach.
    fn commit(&mut self, events: Vec<Event>) -> bool {
        let progressed = events.iter().any(|e| {
            !matches!(
                e,
                Event::OffersMade(_) | Event::OffersDeclined(_) | Event::OffersRescinded(_)
            )
        });
        let term = self.c.term().max(1);
        for env in envelopes(&self.c, term, self.now, events) {
            if try_apply(&mut self.c, &env).is_err() {
                return false;
            }
        }
        progressed
    }

    /// Decides and commits; a refusal is part of the simulated world (a
    /// command that the real master would also have refused).
    fn try_command(&mut self, cmd: Command) -> bool {
        match decide(&self.c, cmd, self.now) {
            Ok(events) => self.commit(events),
            Err(_) => false,
        }
    }

    fn quiet_other_frameworks(&mut self, jobs_fw: Option<&FrameworkId>) {
        let others: Vec<FrameworkId> = self
            .c
            .frameworks
            .values()
            .filter(|f| !f.removed && Some(&f.id) != jobs_fw)
            .map(|f| f.id.clone())
            .collect();
        for fw in others {
            let offers: Vec<_> = self
                .c
                .offers
                .values()
                .filter(|o| o.framework_id == fw)
                .map(|o| o.id.clone())
                .collect();
            if !offers.is_empty() {
                self.try_command(Command::Decline {
                    framework_id: fw.clone(),
                    offer_ids: offers,
                    refuse_seconds: None,
                });
            }
            self.try_command(Command::Suppress { framework_id: fw });
        }
        if let Some(fw) = jobs_fw {
            self.try_command(Command::Revive {
                framework_id: fw.clone(),
            });
        }
    }

    /// One step of the world: the agents, the master's timers, the job
    /// scheduler. Whether anything but offers changed.
    fn step(
        &mut self,
        jobs_fw: Option<&FrameworkId>,
        assume: &Assumptions,
        pending: &mut BTreeMap<(JobKey, u32), String>,
    ) -> bool {
        let mut progressed = false;
        // The agents.
        let updates: Vec<(TaskKey, crate::ids::AgentId, TaskState, Option<bool>)> = self
            .c
            .tasks
            .values()
            .filter(|t| !t.is_terminal())
            .filter_map(|t| {
                let agent_up = self
                    .c
                    .agents
                    .get(&t.agent_id)
                    .is_some_and(|a| a.state == crate::state::AgentState::Registered);
                if !agent_up {
                    return None;
                }
                if t.kill_requested {
                    return Some((
                        t.key.clone(),
                        t.agent_id.clone(),
                        TaskState::TaskKilled,
                        None,
                    ));
                }
                let starting = matches!(t.state, TaskState::TaskStaging | TaskState::TaskStarting);
                if starting && t.launched_at_ms.saturating_add(assume.task_start_ms) <= self.now {
                    let healthy = self
                        .c
                        .jobs
                        .get(t.job.as_ref()?)
                        .and_then(|j| j.spec.health_check.as_ref())
                        .map(|_| true);
                    return Some((
                        t.key.clone(),
                        t.agent_id.clone(),
                        TaskState::TaskRunning,
                        healthy,
                    ));
                }
                None
            })
            .collect();
        for (key, agent_id, state, healthy) in updates {
            self.uuid += 1;
            progressed |= self.try_command(Command::UpdateStatus(StatusUpdate {
                agent_id,
                framework_id: key.framework_id,
                task_id: key.task_id,
                state,
                uuid: format!("dry-run-{}", self.uuid),
                reason: TaskReason::Unspecified,
                message: String::new(),
                source: StatusSource::SourceExecutor,
                exit_code: None,
                healthy,
            }));
        }
        // Inverse offers, when frameworks are assumed to accept them.
        if assume.frameworks_accept_inverse_offers {
            let mut by_fw: BTreeMap<FrameworkId, Vec<crate::ids::OfferId>> = BTreeMap::new();
            for o in self.c.inverse_offers.values() {
                if o.answer == InverseAnswer::Outstanding {
                    by_fw
                        .entry(o.framework_id.clone())
                        .or_default()
                        .push(o.id.clone());
                }
            }
            for (framework_id, offer_ids) in by_fw {
                progressed |= self.try_command(Command::AnswerInverseOffers {
                    framework_id,
                    offer_ids,
                    accepted: true,
                });
            }
        }
        // The master's timers.
        progressed |= self.try_command(Command::DrainHosts);
        progressed |= self.try_command(Command::ExpireOffers);
        progressed |= self.try_command(Command::Allocate);
        // The job scheduler.
        if let Some(fw) = jobs_fw {
            let plan = jobs::plan(&self.c, fw, self.now);
            pending.clone_from(&plan.pending);
            for task_id in plan.kills {
                progressed |= self.try_command(Command::Kill {
                    framework_id: fw.clone(),
                    task_id,
                });
            }
            for (key, version) in plan.finished {
                progressed |= self.try_command(Command::FinishJobUpdate { key, version });
            }
            for (key, version) in plan.rollbacks {
                progressed |= self.try_command(Command::RollbackJob { key, version });
            }
            for (offer_id, launches) in plan.accepts {
                progressed |= self.try_command(Command::Accept {
                    framework_id: fw.clone(),
                    offer_ids: vec![offer_id],
                    launches,
                    refuse_seconds: Some(1.0),
                });
            }
            if !plan.declines.is_empty() {
                self.try_command(Command::Decline {
                    framework_id: fw.clone(),
                    offer_ids: plan.declines,
                    refuse_seconds: Some(1.0),
                });
            }
        }
        progressed
    }
}

/// Why a task of the state before was stopped.
fn kill_why(c: &Cluster, t: &crate::state::Task) -> String {
    let draining = c
        .agents
        .get(&t.agent_id)
        .and_then(|a| c.hosts.get(&a.hostname))
        .is_some_and(|h| h.state != HostState::Up);
    match (&t.job, draining) {
        (Some(_), true) => "drained within the job's SLA".to_owned(),
        (Some(_), false) => "replaced by the update".to_owned(),
        (None, true) => {
            let accepted = c.inverse_offers.values().any(|o| {
                o.agent_id == t.agent_id
                    && o.framework_id == t.key.framework_id
                    && o.answer == InverseAnswer::Accepted
            });
            if accepted {
                "its framework accepted the inverse offer".to_owned()
            } else {
                "the drain grace passed".to_owned()
            }
        }
        (None, false) => "killed".to_owned(),
    }
}

/// Each job's instances RUNNING, healthy (when checked) and not being
/// killed.
fn available(c: &Cluster) -> BTreeMap<JobKey, u32> {
    let mut out: BTreeMap<JobKey, BTreeSet<u32>> = c
        .jobs
        .keys()
        .map(|k| (k.clone(), BTreeSet::new()))
        .collect();
    for t in c.tasks.values() {
        let Some(j) = &t.job else {
            continue;
        };
        if t.state == TaskState::TaskRunning && !t.kill_requested && t.healthy != Some(false) {
            if let Some(s) = out.get_mut(j) {
                s.insert(t.instance);
            }
        }
    }
    out.into_iter().map(|(k, s)| (k, s.len() as u32)).collect()
}
