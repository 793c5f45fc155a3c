//! The built-in job scheduler's decisions, as pure functions of the state.
//!
//! The job scheduler is a framework inside the master (Aurora's scheduler):
//! it receives offers from the same allocator as external frameworks and
//! answers them with [`plan`]: which pending job instances go on which
//! offer, which offers it declines, and *why* every instance it could not
//! place is still pending (shown by `orrery job status`). Everything it
//! needs is in the log — running and ended tasks carry their job and
//! instance — so a plan can be replayed and explained like any decision.
//!
//! Rules:
//! - a service job keeps `instances` instances running: an instance whose
//!   task ended is pending again after an exponential backoff (the job's
//!   restart policy; by default 1 s, doubling per failure in a row, at most
//!   60 s);
//! - a batch job's instance is done once it FINISHED, and given up after
//!   `max_task_failures` failures (0: never given up);
//! - a job that is not `region_aware` is placed only on agents in the
//!   master's region;
//! - Marathon's constraints: field `hostname`, `@region`, `@zone` or an
//!   attribute; IS, LIKE and UNLIKE (a regex matching the whole value),
//!   UNIQUE, CLUSTER, GROUP_BY[:n] (spread evenly: never more on one value
//!   than on the least-used value + 0, and with n at most ⌈instances / n⌉
//!   per value), MAX_PER:n;
//! - an instance whose agent is unreachable (its task TASK_UNREACHABLE: the
//!   job scheduler is PARTITION_AWARE) follows the job's partition policy
//!   (Aurora's): replaced once unreachable for `delay` when `reschedule`
//!   (by default at once), else it waits; it comes back RUNNING if its
//!   agent returns first, and a task already replaced is killed when its
//!   agent returns ([`replaced`]).

use std::collections::BTreeMap;

use orrery_proto::events as pb;

use crate::command::TaskSpec;
use crate::ids::{FrameworkId, OfferId, TaskId};
use crate::projections::domains;
use crate::resources::Resources;
use crate::state::task::is_terminal;
use crate::state::{Agent, Cluster, JobKey, TaskState};

/// The first restart waits this long; each further failure doubles it.
pub const BACKOFF_BASE_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// The job scheduler's name and role (one framework in the log).
pub const FRAMEWORK_NAME: &str = "orrery-jobs";
pub const FRAMEWORK_ROLE: &str = "orrery-jobs";

/// The job scheduler's framework subscription, the same from every shell
/// (the master actor and the simulator): PARTITION_AWARE, so that an
/// unreachable agent's job tasks are TASK_UNREACHABLE and follow the job's
/// partition policy instead of being LOST at once.
pub fn subscription(c: &Cluster) -> crate::command::FrameworkSubscription {
    crate::command::FrameworkSubscription {
        framework_id: c
            .frameworks
            .values()
            .find(|f| f.name == FRAMEWORK_NAME && !f.removed)
            .map(|f| f.id.clone()),
        name: FRAMEWORK_NAME.into(),
        role: FRAMEWORK_ROLE.into(),
        region_aware: true,
        partition_aware: true,
        checkpoint: true,
        failover_timeout_ms: crate::decide::limits::DURATION_MS_MAX,
        principal: String::new(),
    }
}

/// The launch of a job's instance: its `n`th task (task id
/// `ROLE.ENV.NAME.INSTANCE.N`).
pub fn task_spec(
    key: &JobKey,
    spec: &pb::JobSpec,
    version: u64,
    instance: u32,
    n: u32,
    resources: &Resources,
) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::new(format!(
            "{}.{}.{}.{instance}.{n}",
            key.role, key.env, key.name
        )),
        name: format!("{key}/{instance}"),
        resources: resources.clone(),
        command: spec.command.clone().unwrap_or_default(),
        job: Some(key.clone()),
        instance,
        job_version: version,
    }
}

/// When the allocator's pause after a leader change ends at the latest, if
/// it is holding offers back now.
fn holding_back_until(c: &Cluster, now_ms: u64) -> Option<u64> {
    if !crate::allocator::holding_back(c, now_ms) {
        return None;
    }
    let leader = c.leader.as_ref()?;
    Some(
        leader
            .elected_at_ms
            .saturating_add(leader.config.agent_reregister_timeout_ms),
    )
}

/// The partition policy of a job: (reschedule, delay in ms). Absent:
/// replaced at once (Aurora's default).
pub fn partition_policy(spec: &pb::JobSpec) -> (bool, u64) {
    spec.partition_policy
        .map_or((true, 0), |p| (p.reschedule, p.delay_ms))
}

/// Whether a job task was replaced by a newer task of its instance (one not
/// terminal, launched later): a task that was unreachable while its
/// instance was placed again is killed when its agent comes back.
pub fn replaced(c: &Cluster, task: &crate::state::Task) -> bool {
    let Some(job) = &task.job else {
        return false;
    };
    // Every task of the instance is named `ROLE.ENV.NAME.INSTANCE.N`
    // ([`task_spec`]) under the job scheduler's framework: a range of the
    // ordered task table, not a scan of every task (this runs for each
    // unreachable task of a reregistering agent).
    let prefix = format!("{}.{}.{}.{}.", job.role, job.env, job.name, task.instance);
    let found = c
        .tasks
        .of_framework_with_prefix(&task.key.framework_id, &prefix)
        .any(|t| {
            t.job.as_ref() == Some(job)
                && t.instance == task.instance
                && t.key != task.key
                && !t.is_terminal()
                && (t.launched_at_ms, &t.key.task_id.0) > (task.launched_at_ms, &task.key.task_id.0)
        });
    found
}

/// What one instance's tasks say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceHistory {
    /// A non-terminal task of the instance, if any (its id): the newest.
    pub live: Option<TaskId>,
    /// Since when the live task is TASK_UNREACHABLE (ms), if it is.
    pub unreachable_since_ms: Option<u64>,
    /// Tasks ever launched for it (names the next task).
    pub launched: u32,
    /// Failures since the last success or the start (FAILED, LOST, ERROR,
    /// DROPPED, GONE; not KILLED on request).
    pub failures_in_a_row: u32,
    pub finished: bool,
    /// When its last task ended (ms).
    pub last_end_ms: u64,
}

/// Every job instance's history, from one pass over the tasks.
pub fn histories(c: &Cluster) -> BTreeMap<(JobKey, u32), InstanceHistory> {
    let mut out = BTreeMap::new();
    for (key, tasks) in tasks_by_job(c) {
        for (instance, h) in job_histories(&tasks) {
            out.insert((key.clone(), instance), h);
        }
    }
    out
}

/// Each job's tasks (terminal ones too), from one pass over the tasks.
pub fn tasks_by_job(c: &Cluster) -> BTreeMap<&JobKey, Vec<&crate::state::Task>> {
    let mut by_job: BTreeMap<&JobKey, Vec<&crate::state::Task>> = BTreeMap::new();
    for t in c.tasks.values() {
        if let Some(k) = &t.job {
            by_job.entry(k).or_default().push(t);
        }
    }
    by_job
}

/// One job's instance histories, from that job's tasks: keyed by instance
/// alone, so a plan never compares or copies job keys per task.
pub fn job_histories(job_tasks: &[&crate::state::Task]) -> BTreeMap<u32, InstanceHistory> {
    let mut out: BTreeMap<u32, InstanceHistory> = BTreeMap::new();
    let mut tasks: Vec<&crate::state::Task> = job_tasks.to_vec();
    tasks.sort_by(|a, b| {
        (a.launched_at_ms, &a.key.task_id.0).cmp(&(b.launched_at_ms, &b.key.task_id.0))
    });
    for t in tasks {
        let h = out.entry(t.instance).or_default();
        h.launched += 1;
        if !is_terminal(t.state) {
            h.live = Some(t.key.task_id.clone());
            h.unreachable_since_ms =
                (t.state == TaskState::TaskUnreachable).then_some(t.updated_at_ms);
            continue;
        }
        h.last_end_ms = h.last_end_ms.max(t.updated_at_ms);
        match t.state {
            TaskState::TaskFinished => {
                h.finished = true;
                h.failures_in_a_row = 0;
            }
            TaskState::TaskKilled if t.healthy.is_none_or(|ok| ok) => {}
            _ => h.failures_in_a_row += 1,
        }
    }
    out
}

/// The restart delay after `failures` failures in a row, by the job's
/// restart policy (default: 1 s, doubling, at most 60 s).
pub fn backoff_ms(spec: &pb::JobSpec, failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    let (base, max) = spec
        .restart_policy
        .map_or((BACKOFF_BASE_MS, BACKOFF_MAX_MS), |p| {
            (p.initial_backoff_ms, p.max_backoff_ms)
        });
    base.saturating_mul(1u64 << (failures - 1).min(16)).min(max)
}

/// Where an instance stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Running(TaskId),
    Finished,
    /// A batch instance that failed `max_task_failures` times.
    GaveUp(u32),
    /// Waiting for its backoff to pass (until, ms).
    BackingOff(u64),
    Pending,
}

pub fn instance_state(
    spec: &pb::JobSpec,
    h: Option<&InstanceHistory>,
    now_ms: u64,
) -> InstanceState {
    let Some(h) = h else {
        return InstanceState::Pending;
    };
    if let Some(id) = &h.live {
        let (reschedule, delay_ms) = partition_policy(spec);
        match h.unreachable_since_ms {
            // Unreachable long enough: placed again (the old task is
            // killed if its agent comes back).
            Some(since) if reschedule && now_ms >= since.saturating_add(delay_ms) => {}
            _ => return InstanceState::Running(id.clone()),
        }
    }
    if !spec.service && h.finished {
        return InstanceState::Finished;
    }
    if !spec.service && spec.max_task_failures > 0 && h.failures_in_a_row >= spec.max_task_failures
    {
        return InstanceState::GaveUp(h.failures_in_a_row);
    }
    let until = h
        .last_end_ms
        .saturating_add(backoff_ms(spec, h.failures_in_a_row));
    if h.failures_in_a_row > 0 && now_ms < until {
        return InstanceState::BackingOff(until);
    }
    InstanceState::Pending
}

/// The value of a constraint field on an agent.
pub fn field_value<'a>(agent: &'a Agent, field: &str) -> Option<&'a str> {
    match field {
        "hostname" => Some(agent.hostname.as_str()),
        "@region" => agent.domain.as_ref().map(|d| d.region.as_str()),
        "@zone" => agent.domain.as_ref().map(|d| d.zone.as_str()),
        attr => agent.attributes.get(attr).map(String::as_str),
    }
}

fn whole_match(pattern: &str, value: &str) -> Result<bool, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map(|r| r.is_match(value))
        .map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))
}

/// Counts of a job's live (and just placed) tasks per field value.
type Spread = BTreeMap<String, BTreeMap<String, u32>>;

/// Whether constraint `con` allows placing one more instance on `agent`;
/// `Err` says why not.
fn allows(
    con: &pb::Constraint,
    agent: &Agent,
    spread: &BTreeMap<String, u32>,
    all_values: &[String],
    instances: u32,
) -> Result<(), String> {
    let value = field_value(agent, &con.field);
    let show = || format!("[{:?}, {:?}, {:?}]", con.field, con.operator, con.value);
    let Some(v) = value else {
        return Err(format!(
            "{} : {} has no {}",
            show(),
            agent.hostname,
            con.field
        ));
    };
    let count = spread.get(v).copied().unwrap_or(0);
    let ok = match con.operator.as_str() {
        "IS" => v == con.value,
        "LIKE" => whole_match(&con.value, v)?,
        "UNLIKE" => !whole_match(&con.value, v)?,
        "UNIQUE" => count == 0,
        "CLUSTER" => {
            if con.value.is_empty() {
                spread.is_empty() || count > 0
            } else {
                v == con.value
            }
        }
        "MAX_PER" => count < con.value.parse::<u32>().unwrap_or(1),
        "GROUP_BY" => {
            let least = all_values
                .iter()
                .map(|x| spread.get(x).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            let cap = match con.value.parse::<u32>() {
                Ok(n) if n > 0 => instances.div_ceil(n),
                _ => u32::MAX,
            };
            count <= least && count < cap
        }
        other => return Err(format!("unknown operator {other}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not met on {} ({} = {v:?})",
            show(),
            agent.hostname,
            con.field
        ))
    }
}

/// Whether a task runs on a DRAINING host.
fn on_draining_host(c: &Cluster, t: &crate::state::Task) -> bool {
    c.agents
        .get(&t.agent_id)
        .and_then(|a| c.hosts.get(&a.hostname))
        .is_some_and(|h| h.state == crate::state::HostState::Draining)
}

/// An instance placed again while its task was unreachable (its partition
/// policy) has two live tasks once that agent is back; the older one is
/// killed, so that no instance runs twice. Not a drain's replacement
/// started before its kill (`start_before_kill`: the older one is on a
/// draining host, and [`drain_step`] kills it once the new one runs), and
/// not a task still unreachable (its kill goes when its agent returns:
/// [`replaced`]).
fn superseded_step(c: &Cluster, job_tasks: &[&crate::state::Task], plan: &mut Plan) {
    let mut newest: BTreeMap<u32, &crate::state::Task> = BTreeMap::new();
    let order = |t: &crate::state::Task| (t.launched_at_ms, t.key.task_id.0.clone());
    for t in job_tasks.iter().copied().filter(|t| !t.is_terminal()) {
        match newest.get(&t.instance) {
            Some(n) if order(n) >= order(t) => {}
            _ => {
                newest.insert(t.instance, t);
            }
        }
    }
    for t in job_tasks.iter().copied().filter(|t| !t.is_terminal()) {
        let is_newest = newest.get(&t.instance).is_some_and(|n| n.key == t.key);
        if !is_newest
            && !t.kill_requested
            && t.state != TaskState::TaskUnreachable
            && !on_draining_host(c, t)
            && !plan.kills.contains(&t.key.task_id)
        {
            plan.kills.push(t.key.task_id.clone());
        }
    }
}

/// Draining hosts (Peloton): a job's tasks there are killed — and so
/// rescheduled elsewhere, as a draining host gets no offers — never more at
/// once than the job's SLA allows: at most `max_unavailable` instances (at
/// least 1) not running at any moment. With `start_before_kill`, an
/// instance's replacement is placed first (into `surge`) and the old task
/// is killed only once the replacement runs, at most `max_unavailable`
/// replacements at a time: no instance is down at all. Whether any remain
/// to move.
fn drain_step(
    c: &Cluster,
    job_tasks: &[&crate::state::Task],
    job: &crate::state::Job,
    plan: &mut Plan,
    surge: &mut std::collections::BTreeSet<u32>,
) -> bool {
    let spec = &job.spec;
    if spec.start_before_kill {
        return surge_drain_step(c, job_tasks, job, plan, surge);
    }
    let mut on_draining: Vec<&crate::state::Task> = Vec::new();
    let mut running = 0u32;
    // A kill on its way: the instance will need its replacement soon, so
    // the drain is still moving (the scheduler keeps taking offers).
    let mut killing = false;
    for t in job_tasks.iter().copied().filter(|t| !t.is_terminal()) {
        if t.state == TaskState::TaskRunning && !t.kill_requested {
            running += 1;
        }
        if on_draining_host(c, t) {
            if t.kill_requested {
                killing = true;
            } else {
                on_draining.push(t);
            }
        }
    }
    if on_draining.is_empty() {
        return killing;
    }
    on_draining.sort_by_key(|t| t.instance);
    let down = spec.instances.saturating_sub(running);
    let budget = spec.max_unavailable.max(1).saturating_sub(down) as usize;
    plan.kills.extend(
        on_draining
            .iter()
            .filter(|t| t.state == TaskState::TaskRunning)
            .take(budget)
            .map(|t| t.key.task_id.clone()),
    );
    true
}

/// `start_before_kill` draining: see [`drain_step`].
fn surge_drain_step(
    c: &Cluster,
    job_tasks: &[&crate::state::Task],
    job: &crate::state::Job,
    plan: &mut Plan,
    surge: &mut std::collections::BTreeSet<u32>,
) -> bool {
    let spec = &job.spec;
    let mut by_instance: BTreeMap<u32, Vec<&crate::state::Task>> = BTreeMap::new();
    for t in job_tasks
        .iter()
        .copied()
        .filter(|t| !t.is_terminal() && !t.kill_requested)
    {
        by_instance.entry(t.instance).or_default().push(t);
    }
    let ready = |t: &crate::state::Task| {
        t.state == TaskState::TaskRunning
            && if spec.health_check.is_some() {
                t.healthy == Some(true)
            } else {
                t.healthy != Some(false)
            }
    };
    let mut moving = false;
    let mut in_flight = 0u32;
    let mut needs: Vec<u32> = Vec::new();
    for (&instance, tasks) in &by_instance {
        let (old, new): (Vec<&crate::state::Task>, Vec<&crate::state::Task>) =
            tasks.iter().partition(|t| on_draining_host(c, t));
        if old.is_empty() {
            continue;
        }
        moving = true;
        match new.first() {
            Some(replacement) if ready(replacement) => {
                plan.kills.extend(old.iter().map(|t| t.key.task_id.clone()));
            }
            Some(_) => in_flight += 1,
            None => needs.push(instance),
        }
    }
    let room = spec.max_unavailable.max(1).saturating_sub(in_flight) as usize;
    surge.extend(needs.into_iter().take(room));
    moving
}

/// The job scheduler's answer to its offers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Per used offer, the tasks to launch on it.
    pub accepts: Vec<(OfferId, Vec<TaskSpec>)>,
    /// Offers it has no use for.
    pub declines: Vec<OfferId>,
    /// Why each instance that could not be placed waits.
    pub pending: BTreeMap<(JobKey, u32), String>,
    /// Tasks of an older version to replace now (a rolling update's batch).
    pub kills: Vec<TaskId>,
    /// Jobs whose update reached every instance: (key, version).
    pub finished: Vec<(JobKey, u64)>,
    /// Jobs whose new version failed during its update: (key, version).
    pub rollbacks: Vec<(JobKey, u64)>,
    /// Some job is mid-update: keep the offers coming.
    pub updating: bool,
}

fn is_failure(t: &crate::state::Task) -> bool {
    match t.state {
        TaskState::TaskFinished => false,
        TaskState::TaskKilled => t.healthy == Some(false),
        s => is_terminal(s),
    }
}

/// A rolling update's step for one job: which old tasks to kill now,
/// whether it is finished, or whether to roll back.
fn update_step(
    key: &JobKey,
    job_tasks: &[&crate::state::Task],
    job: &crate::state::Job,
    now_ms: u64,
    plan: &mut Plan,
) -> bool {
    let spec = &job.spec;
    let v = job.version;
    let strategy = spec.update_strategy.unwrap_or(pb::UpdateStrategy {
        batch_size: 1,
        watch_ms: 0,
        rollback_on_failure: true,
    });
    if job.previous.is_some()
        && strategy.rollback_on_failure
        && job_tasks
            .iter()
            .any(|t| t.job_version == v && is_failure(t))
    {
        plan.rollbacks.push((key.clone(), v));
        return true;
    }
    let live: BTreeMap<u32, &crate::state::Task> = job_tasks
        .iter()
        .filter(|t| !t.is_terminal())
        .map(|t| (t.instance, *t))
        .collect();
    let settled = |t: &crate::state::Task| {
        t.job_version == v
            && t.state == TaskState::TaskRunning
            && t.healthy != Some(false)
            && (spec.health_check.is_none() || t.healthy == Some(true))
            && t.launched_at_ms.saturating_add(strategy.watch_ms) <= now_ms
    };
    let mut outdated: Vec<&crate::state::Task> = live
        .values()
        .filter(|t| t.job_version < v && !t.kill_requested)
        .copied()
        .collect();
    outdated.sort_by_key(|t| t.instance);
    let all_settled = (0..spec.instances).all(|i| live.get(&i).is_some_and(|t| settled(t)));
    if all_settled {
        if job.previous.is_some() {
            plan.finished.push((key.clone(), v));
        }
        return false;
    }
    if outdated.is_empty() && job.previous.is_none() {
        return false;
    }
    // Instances on their way to the new version: not settled yet, or
    // waiting to be placed.
    let in_flight = (0..spec.instances)
        .filter(|i| match live.get(i) {
            Some(t) => t.job_version == v && !settled(t) || t.kill_requested,
            None => true,
        })
        .count() as u32;
    let room = strategy.batch_size.max(1).saturating_sub(in_flight) as usize;
    plan.kills
        .extend(outdated.iter().take(room).map(|t| t.key.task_id.clone()));
    true
}

/// Places pending instances on the job scheduler's outstanding offers.
pub fn plan(c: &Cluster, framework_id: &FrameworkId, now_ms: u64) -> Plan {
    let offers: Vec<_> = c
        .offers
        .values()
        .filter(|o| &o.framework_id == framework_id)
        .collect();
    let mut remaining: Vec<Resources> = offers.iter().map(|o| o.resources.clone()).collect();
    let mut used: Vec<Vec<TaskSpec>> = vec![Vec::new(); offers.len()];
    // Each job's tasks, found once (not by a scan of every task per job).
    let by_job = tasks_by_job(c);
    let mut plan = Plan::default();
    // The allocation pause, found once (it counts every agent) and only if
    // an instance is left without offers.
    let mut held_until: Option<Option<u64>> = None;
    for (key, job) in &c.jobs {
        let spec = &job.spec;
        let job_tasks: &[&crate::state::Task] = by_job.get(key).map_or(&[], |v| v.as_slice());
        let hist = job_histories(job_tasks);
        plan.updating |= update_step(key, job_tasks, job, now_ms, &mut plan);
        let mut surge = std::collections::BTreeSet::new();
        plan.updating |= drain_step(c, job_tasks, job, &mut plan, &mut surge);
        superseded_step(c, job_tasks, &mut plan);
        if plan.rollbacks.last().is_some_and(|(k, _)| k == key) {
            continue;
        }
        let resources = Resources::from_logged(spec.resources.as_ref());
        // Live placement of this job's tasks per constraint field.
        let mut spread: Spread = BTreeMap::new();
        let mut all_values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for con in &spec.constraints {
            let per = spread.entry(con.field.clone()).or_default();
            for t in job_tasks.iter().copied().filter(|t| !t.is_terminal()) {
                if let Some(v) = c
                    .agents
                    .get(&t.agent_id)
                    .and_then(|a| field_value(a, &con.field))
                {
                    *per.entry(v.to_owned()).or_default() += 1;
                }
            }
            let mut values: Vec<String> = c
                .agents
                .values()
                .filter(|a| a.is_active() && (spec.region_aware || !domains::is_remote(c, a)))
                .filter_map(|a| field_value(a, &con.field).map(str::to_owned))
                .collect();
            values.sort();
            values.dedup();
            all_values.insert(con.field.clone(), values);
        }
        for instance in 0..spec.instances {
            let h = hist.get(&instance);
            match instance_state(spec, h, now_ms) {
                // A replacement for an instance on a draining host.
                InstanceState::Running(_) if surge.contains(&instance) => {}
                InstanceState::Pending => {}
                InstanceState::BackingOff(until) => {
                    plan.pending.insert(
                        (key.clone(), instance),
                        format!(
                            "restarting after {} failure(s) in a row: backing off for {} ms more",
                            h.map_or(0, |h| h.failures_in_a_row),
                            until - now_ms
                        ),
                    );
                    continue;
                }
                _ => continue,
            }
            let n = h.map_or(0, |h| h.launched) + 1;
            let launch = task_spec(key, spec, job.version, instance, n, &resources);
            // Checked with the launch's own rules first: one instance that
            // could never launch waits with its reason, and takes no offer
            // from the others.
            let task_key = crate::ids::TaskKey::new(framework_id.clone(), launch.task_id.clone());
            if let Err(e) = crate::decide::validate_launch(&task_key, &launch) {
                plan.pending
                    .insert((key.clone(), instance), format!("cannot be launched: {e}"));
                continue;
            }
            let mut why: Vec<String> = Vec::new();
            let mut placed = false;
            for (i, offer) in offers.iter().enumerate() {
                let Some(agent) = c.agents.get(&offer.agent_id) else {
                    continue;
                };
                if !spec.region_aware && domains::is_remote(c, agent) {
                    why.push(format!(
                        "{} is in a remote region and the job is not region_aware",
                        agent.hostname
                    ));
                    continue;
                }
                if !remaining[i].contains(&resources) {
                    why.push(format!(
                        "{} has {} left, the task needs {}",
                        agent.hostname, remaining[i], resources
                    ));
                    continue;
                }
                let refused = spec.constraints.iter().find_map(|con| {
                    let empty = BTreeMap::new();
                    let per = spread.get(&con.field).unwrap_or(&empty);
                    let values = all_values.get(&con.field).map_or(&[][..], |v| v.as_slice());
                    allows(con, agent, per, values, spec.instances).err()
                });
                if let Some(r) = refused {
                    why.push(r);
                    continue;
                }
                remaining[i] = remaining[i].minus(&resources);
                for con in &spec.constraints {
                    if let Some(v) = field_value(agent, &con.field) {
                        *spread
                            .entry(con.field.clone())
                            .or_default()
                            .entry(v.to_owned())
                            .or_default() += 1;
                    }
                }
                used[i].push(launch.clone());
                placed = true;
                break;
            }
            if !placed {
                let reason = if offers.is_empty() {
                    match *held_until.get_or_insert_with(|| holding_back_until(c, now_ms)) {
                        Some(until) => format!(
                            "no offers: held back after the leader change until 80% of the agents known then reregister ({}‰ have) or until the reregistration deadline, in {} s",
                            crate::projections::recovery::reregistered_milli(c),
                            until.saturating_sub(now_ms).div_ceil(1_000)
                        ),
                        None => "no offers: every agent is in use, filtered, or none is registered"
                            .to_owned(),
                    }
                } else {
                    why.sort();
                    why.dedup();
                    let shown: Vec<&str> = why.iter().take(3).map(String::as_str).collect();
                    format!("no offer fits: {}", shown.join("; "))
                };
                plan.pending.insert((key.clone(), instance), reason);
            }
        }
    }
    plan.kills.sort();
    plan.kills.dedup();
    for (i, offer) in offers.iter().enumerate() {
        let tasks = std::mem::take(&mut used[i]);
        if tasks.is_empty() {
            plan.declines.push(offer.id.clone());
        } else {
            plan.accepts.push((offer.id.clone(), tasks));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(service: bool, max_failures: u32) -> pb::JobSpec {
        pb::JobSpec {
            service,
            max_task_failures: max_failures,
            ..Default::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_policy_cap() {
        let s = spec(true, 0);
        assert_eq!(
            (1..=8).map(|n| backoff_ms(&s, n)).collect::<Vec<_>>(),
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(backoff_ms(&s, 0), 0);
        let mut p = spec(true, 0);
        p.restart_policy = Some(pb::RestartPolicy {
            initial_backoff_ms: 500,
            max_backoff_ms: 1_500,
        });
        assert_eq!(
            (1..=4).map(|n| backoff_ms(&p, n)).collect::<Vec<_>>(),
            vec![500, 1_000, 1_500, 1_500]
        );
    }

    #[test]
    fn instance_states_follow_service_and_batch_rules() {
        let failed = |n: u32| InstanceHistory {
            failures_in_a_row: n,
            launched: n,
            last_end_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(
            instance_state(&spec(true, 0), None, 0),
            InstanceState::Pending
        );
        assert_eq!(
            instance_state(&spec(true, 0), Some(&failed(2)), 11_000),
            InstanceState::BackingOff(12_000)
        );
        assert_eq!(
            instance_state(&spec(true, 0), Some(&failed(2)), 12_000),
            InstanceState::Pending
        );
        assert_eq!(
            instance_state(&spec(false, 2), Some(&failed(2)), 99_000),
            InstanceState::GaveUp(2)
        );
        let done = InstanceHistory {
            finished: true,
            launched: 1,
            ..Default::default()
        };
        assert_eq!(
            instance_state(&spec(false, 0), Some(&done), 0),
            InstanceState::Finished
        );
        assert_eq!(
            instance_state(&spec(true, 0), Some(&done), 0),
            InstanceState::Pending,
            "a service instance that finished runs again"
        );
    }

    #[test]
    fn an_unreachable_instance_follows_its_partition_policy() {
        let away = InstanceHistory {
            live: Some(TaskId::new("t1".to_owned())),
            unreachable_since_ms: Some(10_000),
            launched: 1,
            ..Default::default()
        };
        // No policy: Aurora's default, placed again at once.
        assert_eq!(
            instance_state(&spec(true, 0), Some(&away), 10_000),
            InstanceState::Pending
        );
        let mut waits = spec(true, 0);
        waits.partition_policy = Some(pb::PartitionPolicy {
            reschedule: true,
            delay_ms: 300_000,
        });
        assert_eq!(
            instance_state(&waits, Some(&away), 309_999),
            InstanceState::Running(TaskId::new("t1".to_owned())),
            "within the delay the instance waits for its agent"
        );
        assert_eq!(
            instance_state(&waits, Some(&away), 310_000),
            InstanceState::Pending
        );
        let mut never = spec(true, 0);
        never.partition_policy = Some(pb::PartitionPolicy {
            reschedule: false,
            delay_ms: 0,
        });
        assert_eq!(
            instance_state(&never, Some(&away), u64::MAX),
            InstanceState::Running(TaskId::new("t1".to_owned()))
        );
    }
}
