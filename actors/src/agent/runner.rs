//! `orrery agent`: the agent daemon.
//!
//! Recovery first (Mesos' agent recovery): read the checkpoint under
//! `--work-dir`/meta, adopt every executor whose pid, start time and boot id
//! still match, deliver what executors recorded while the agent was down,
//! and report the rest with a definite state. Then: register (or reregister
//! with the recovered tasks) with whichever master leads, hold the message
//! stream open (launches, kills and pings, each with the leader's term —
//! older terms are ignored), and send every task's status updates, in
//! order, until the master acknowledges each one.
//!
//! Tasks run under `orrery executor` (see [`super::executor`]), which
//! outlives the agent. The agent proves it is alive by touching
//! `meta/heartbeat`; executors whose agent stays away longer than
//! `--recovery-timeout` kill their task and exit.
//!
//! Launches are exactly-once: the launch record (`task.pb`) is written
//! before the executor is spawned, and the executor records itself
//! (`executor.pb`) before it starts the task. After a crash between the two,
//! recovery looks for the executor by its command line; if none exists and
//! it recorded nothing, the task is reported TASK_FAILED — never silence,
//! never a second process.
//!
//! The agent is a handful of tokio tasks around one lock-protected table
//! rather than actix actors: it has one connection, file I/O and per-task
//! streams, and no concurrent callers whose messages an actor would order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use orrery_events::pb::{self, StatusSource, TaskReason, TaskState};
use orrery_events::state::Domain;
use orrery_events::Resources;
use orrery_proto::agent::{self as ap, agent_link_client::AgentLinkClient};
use orrery_proto::checkpoint as cp;
use tonic::Code;

use super::checkpoint::{self, Corrupt, TaskPaths};
use super::procinfo;

/// What to do with the executors of a previous run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recover {
    /// Adopt live executors and carry on.
    Reconnect,
    /// Kill them, clear the checkpoint, and exit.
    Cleanup,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub masters: Vec<String>,
    /// How the agent reaches the masters (mutual TLS with this host's agent
    /// certificate, or plain TCP with `--insecure`).
    pub transport: crate::client::Transport,
    pub work_dir: PathBuf,
    pub hostname: String,
    pub ip: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub domain: Option<Domain>,
    pub recover: Recover,
    pub strict: bool,
    pub recovery_timeout: Duration,
    pub kill_grace: Duration,
    pub http: Option<SocketAddr>,
    /// The `orrery` binary, run as `orrery executor`.
    pub executor_bin: PathBuf,
}

/// Concurrent status updates in flight to the master.
const SENDS_MAX: usize = 64;
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long recovery waits for an executor that is running but has not
/// recorded itself yet.
const EXECUTOR_RECORD_WAIT: Duration = Duration::from_secs(3);
/// Every call the agent makes to a master: 1 s to connect, 5 s for the
/// answer (a registration or a status update waits for one commit, which
/// takes milliseconds; a master silent for 5 s is frozen or cut off, and
/// the call goes to the leader found among all masters instead).
const CALL_DEADLINES: crate::client::Deadlines = crate::client::Deadlines {
    connect: Duration::from_secs(1),
    call: Duration::from_secs(5),
};
/// The ping timeout when the master announces none (an older master):
/// Mesos' default, 15 s × 5.
const PING_TIMEOUT_DEFAULT: Duration = Duration::from_secs(75);

/// How long the agent waits on its stream for any message (the master pings
/// every `ping_interval_ms`) before it takes the master for gone and looks
/// for the leader again: the master's interval times its budget of missed
/// pings, as Mesos' agent computes its ping timeout.
pub fn ping_timeout(resp: &ap::RegisterResponse) -> Duration {
    if resp.ping_interval_ms == 0 {
        return PING_TIMEOUT_DEFAULT;
    }
    Duration::from_millis(
        resp.ping_interval_ms
            .saturating_mul(u64::from(resp.max_ping_timeouts.max(1))),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn failpoint(name: &str) {
    if std::env::var("ORRERY_FAILPOINT").is_ok_and(|f| f == name) {
        eprintln!("orrery agent: failpoint {name}: exiting as if crashed");
        std::process::exit(86);
    }
}

type Key = (String, String);

#[derive(Debug)]
struct Task {
    paths: TaskPaths,
    launch: ap::LaunchTask,
    state: TaskState,
    /// Bytes of executor.log already copied into our stream.
    exec_offset: u64,
    /// Uuids in our stream (updates copied or made here).
    known: BTreeSet<String>,
    /// Unacknowledged updates, oldest first.
    pending: VecDeque<cp::StatusRecord>,
    sending: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When the executor was spawned by this run (None: adopted/recovered).
    spawned_at: Option<Instant>,
    /// The executor's record, once read (it never changes).
    exec_cache: Option<cp::ExecutorCheckpoint>,
    /// When the executor was last checked alive.
    checked_at: Option<Instant>,
}

impl Task {
    fn new(paths: TaskPaths, launch: ap::LaunchTask) -> Self {
        Task {
            paths,
            launch,
            state: TaskState::TaskStaging,
            exec_offset: 0,
            known: BTreeSet::new(),
            pending: VecDeque::new(),
            sending: false,
            retry_at: None,
            backoff: Duration::from_millis(100),
            spawned_at: None,
            exec_cache: None,
            checked_at: None,
        }
    }

    fn terminal(&self) -> bool {
        orrery_events::state::task::is_terminal(self.state)
    }

    /// Appends an update to our stream (checkpointed) and queues it.
    fn push(&mut self, rec: cp::StatusRecord) -> std::io::Result<()> {
        if !self.known.insert(rec.uuid.clone()) {
            return Ok(());
        }
        checkpoint::append(
            &self.paths.updates(),
            &cp::StreamRecord {
                record: Some(cp::stream_record::Record::Update(rec.clone())),
            },
        )?;
        if let Ok(s) = TaskState::try_from(rec.state) {
            self.state = s;
        }
        self.pending.push_back(rec);
        Ok(())
    }

    /// Copies what the executor recorded since last time, when its log grew.
    fn poll_if_grown(&mut self) -> Result<(), Corrupt> {
        let len = std::fs::metadata(self.paths.executor_log()).map_or(0, |m| m.len());
        if len > self.exec_offset {
            self.poll_executor()
        } else {
            Ok(())
        }
    }

    /// Copies what the executor recorded since last time.
    fn poll_executor(&mut self) -> Result<(), Corrupt> {
        let s =
            checkpoint::read_stream(&self.paths.executor_log(), self.exec_offset).map_err(|e| {
                Corrupt {
                    file: self.paths.executor_log(),
                    offset: self.exec_offset,
                    detail: e.to_string(),
                }
            })?;
        for (rec, end) in s.records {
            if let Some(cp::stream_record::Record::Update(u)) = rec.record {
                let _ = self.push(u);
            }
            self.exec_offset = end;
        }
        match s.corrupt {
            Some(c) => Err(c),
            None => Ok(()),
        }
    }

    fn executor(&self) -> Result<Option<cp::ExecutorCheckpoint>, Corrupt> {
        checkpoint::read_message(&self.paths.executor())
    }

    fn executor_alive(&self) -> Option<u32> {
        let e = self.executor().ok().flatten()?;
        procinfo::same_process(e.pid, e.start_ticks, &e.boot_id).then_some(e.pid)
    }
}

fn agent_update(
    state: TaskState,
    reason: TaskReason,
    message: impl Into<String>,
) -> cp::StatusRecord {
    cp::StatusRecord {
        uuid: uuid::Uuid::new_v4().to_string(),
        state: state as i32,
        reason: reason as i32,
        message: message.into(),
        source: StatusSource::SourceAgent as i32,
        exit_code: None,
        at_ms: now_ms(),
        healthy: None,
    }
}

struct Shared {
    cfg: AgentConfig,
    tasks: Mutex<BTreeMap<Key, Task>>,
    agent_id: Mutex<Option<String>>,
    newest_term: AtomicU64,
    wake: tokio::sync::Notify,
    sends: tokio::sync::Semaphore,
    /// Attached to the active master's message stream right now.
    attached: std::sync::atomic::AtomicBool,
    /// Random per process: sent at registration so that a master tells a
    /// second process under this agent id (a copied work dir) from this one.
    incarnation: String,
    /// The master whose stream the agent holds now (`/state`).
    master: Mutex<Option<String>>,
}

/// Clears `attached` and `master` when a session ends, however it ends.
struct Attached<'a>(&'a Shared);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.attached.store(false, Ordering::SeqCst);
        *self.0.master.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, BTreeMap<Key, Task>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn agent_id(&self) -> Option<String> {
        self.agent_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

// --- recovery ------------------------------------------------------------------

/// Reads the checkpoint and decides every task's fate. Kills nothing when
/// it fails (strict mode and a corrupt checkpoint).
fn recover(cfg: &AgentConfig) -> Result<(Option<String>, BTreeMap<Key, Task>), String> {
    let meta = cfg.work_dir.join("meta");
    std::fs::create_dir_all(&meta).map_err(|e| format!("creating {}: {e}", meta.display()))?;
    let agent: Option<cp::AgentCheckpoint> =
        checkpoint::read_message(&checkpoint::agent_file(&cfg.work_dir)).map_err(|e| {
            format!(
                "{e}; the agent cannot know its own id (move the work dir aside to start afresh)"
            )
        })?;
    let boot = procinfo::boot_id();
    let rebooted = agent.as_ref().is_some_and(|a| a.boot_id != boot);
    let mut agent_id = agent.map(|a| a.agent_id);
    let tasks_dir = meta.join("tasks");
    if rebooted {
        tracing::warn!("the machine rebooted since the last run: every executor is gone; starting as a new agent");
        agent_id = None;
        let _ = std::fs::remove_dir_all(&tasks_dir);
    }
    let mut tasks = BTreeMap::new();
    let mut problems: Vec<Corrupt> = Vec::new();
    for fw in read_dir_names(&tasks_dir) {
        for tid in read_dir_names(&tasks_dir.join(&fw)) {
            let paths = TaskPaths::new(&cfg.work_dir, &fw, &tid);
            match recover_task(cfg, &paths, &fw, &tid) {
                Ok(Some(t)) => {
                    tasks.insert((fw.clone(), tid.clone()), t);
                }
                Ok(None) => {}
                Err(lost) => {
                    let (c, t) = *lost;
                    problems.push(c.clone());
                    if !cfg.strict {
                        tracing::warn!(problem = %c, "recovering what can be recovered; the task is reported LOST and its executor, if any, stopped");
                        if let Some(pid) = t.executor_alive() {
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                        }
                        tasks.insert((fw.clone(), tid.clone()), t);
                    }
                }
            }
        }
    }
    if cfg.strict {
        if let Some(c) = problems.first() {
            return Err(format!(
                "{c} (--strict true: nothing was killed; fix or move the file, or run with --strict false)"
            ));
        }
    }
    // Decide the fate of each task now that nothing is fatal.
    for t in tasks.values_mut() {
        settle(cfg, t);
    }
    Ok((agent_id, tasks))
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads one task's files. `Err` carries the corruption and a task that is
/// reported LOST (non-strict mode).
fn recover_task(
    _cfg: &AgentConfig,
    paths: &TaskPaths,
    fw: &str,
    tid: &str,
) -> Result<Option<Task>, Box<(Corrupt, Task)>> {
    let lost = |c: Corrupt| {
        let mut t = Task::new(
            paths.clone(),
            ap::LaunchTask {
                framework_id: fw.into(),
                task_id: tid.into(),
                ..Default::default()
            },
        );
        let _ = t.push(agent_update(
            TaskState::TaskLost,
            TaskReason::ReasonAgentRestarted,
            format!("the agent could not recover the task: {c}"),
        ));
        Box::new((c, t))
    };
    let record: cp::TaskCheckpoint = match checkpoint::read_message(&paths.task()) {
        Ok(Some(r)) => r,
        Ok(None) => {
            // A directory without a launch record: a crash before the
            // record was whole. Nothing was started.
            let _ = std::fs::remove_dir_all(&paths.dir);
            return Ok(None);
        }
        Err(c) => return Err(lost(c)),
    };
    let mut t = Task::new(paths.clone(), record.launch.unwrap_or_default());
    // Our stream: updates and acks.
    let stream = checkpoint::read_stream(&paths.updates(), 0).map_err(|e| {
        lost(Corrupt {
            file: paths.updates(),
            offset: 0,
            detail: e.to_string(),
        })
    })?;
    if let Some(at) = stream.torn_at {
        tracing::warn!(file = %paths.updates().display(), offset = at, "truncated a torn record at the tail of a status stream");
        let _ = checkpoint::truncate(&paths.updates(), at);
    }
    if let Some(c) = stream.corrupt {
        return Err(lost(c));
    }
    let mut acked = BTreeSet::new();
    for (rec, _) in &stream.records {
        if let Some(cp::stream_record::Record::Ack(u)) = &rec.record {
            acked.insert(u.clone());
        }
    }
    for (rec, _) in stream.records {
        if let Some(cp::stream_record::Record::Update(u)) = rec.record {
            t.known.insert(u.uuid.clone());
            if let Ok(s) = TaskState::try_from(u.state) {
                t.state = s;
            }
            if !acked.contains(&u.uuid) {
                t.pending.push_back(u);
            }
        }
    }
    if let Err(c) = t.executor() {
        return Err(lost(c));
    }
    if let Err(c) = t.poll_executor() {
        return Err(lost(c));
    }
    Ok(Some(t))
}

/// After reading: adopt, kill or report each task.
fn settle(cfg: &AgentConfig, t: &mut Task) {
    if t.terminal() {
        return;
    }
    let exec = t.executor().ok().flatten();
    let alive = t.executor_alive();
    if alive.is_none() && exec.is_none() {
        // Launch recorded, executor never recorded itself: is it running?
        let dir = t.paths.dir.display().to_string();
        let running = procinfo::find_by_cmdline(&format!("--task-dir {dir} "));
        if !running.is_empty() {
            let deadline = Instant::now() + EXECUTOR_RECORD_WAIT;
            while Instant::now() < deadline && t.executor_alive().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _ = t.poll_executor();
    if t.terminal() {
        return;
    }
    match t.executor_alive() {
        Some(pid) if !t.launch.checkpoint || cfg.recover == Recover::Cleanup => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if !t.launch.checkpoint {
                let _ = t.push(agent_update(
                    TaskState::TaskLost,
                    TaskReason::ReasonAgentRestarted,
                    "the agent restarted and the framework does not checkpoint",
                ));
            }
        }
        Some(pid) => {
            tracing::info!(framework_id = %t.launch.framework_id, task_id = %t.launch.task_id, pid, "reconnected to a running executor")
        }
        None if t.executor().ok().flatten().is_none() => {
            let _ = t.push(agent_update(
                TaskState::TaskFailed,
                TaskReason::ReasonExecutorTerminated,
                "the agent stopped between recording the launch and starting the task; it never ran",
            ));
        }
        None => {
            let _ = t.push(agent_update(
                TaskState::TaskLost,
                TaskReason::ReasonExecutorTerminated,
                "the executor exited while the agent was down without reporting the task's end",
            ));
        }
    }
}

/// `--recover cleanup`: stop every live executor (each kills its task) and
/// clear the checkpoint.
fn cleanup(cfg: &AgentConfig, tasks: &BTreeMap<Key, Task>) {
    let deadline = Instant::now() + cfg.kill_grace + Duration::from_secs(3);
    for t in tasks.values() {
        if let Some(pid) = t.executor_alive() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    while Instant::now() < deadline && tasks.values().any(|t| t.executor_alive().is_some()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(cfg.work_dir.join("meta").join("tasks"));
    let _ = std::fs::remove_file(checkpoint::agent_file(&cfg.work_dir));
}

/// Stops every executor recorded under `work_dir` (each kills its task)
/// and waits for them, up to the kill grace and 3 s more. For `orrery dev`,
/// whose work dir is temporary; a production agent leaves its executors
/// running when it stops.
pub fn stop_all(cfg: &AgentConfig) {
    let mut relaxed = cfg.clone();
    relaxed.strict = false;
    if let Ok((_, tasks)) = recover(&relaxed) {
        cleanup(cfg, &tasks);
    }
}

// --- running -------------------------------------------------------------------

/// Runs the agent until `stop` resolves (or forever).
pub async fn run(
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let lock = lock_work_dir(&cfg.work_dir)?;
    let (agent_id, tasks) = recover(&cfg)?;
    if cfg.recover == Recover::Cleanup {
        cleanup(&cfg, &tasks);
        tracing::info!(
            tasks = tasks.len(),
            "cleaned up the previous run's executors and checkpoint"
        );
        drop(lock);
        return Ok(());
    }
    tracing::info!(tasks = tasks.len(), agent_id = ?agent_id, "recovered");
    kill_unknown_executors(&cfg, &tasks);
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        tasks: Mutex::new(tasks),
        agent_id: Mutex::new(agent_id),
        newest_term: AtomicU64::new(0),
        wake: tokio::sync::Notify::new(),
        sends: tokio::sync::Semaphore::new(SENDS_MAX),
        attached: std::sync::atomic::AtomicBool::new(false),
        incarnation: uuid::Uuid::new_v4().to_string(),
        master: Mutex::new(None),
    });
    touch_heartbeat(&cfg.work_dir);
    let mut jobs = tokio::task::JoinSet::new();
    jobs.spawn(heartbeat_loop(cfg.work_dir.clone()));
    jobs.spawn(poll_loop(shared.clone()));
    jobs.spawn(send_loop(shared.clone()));
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    jobs.spawn(master_loop(shared.clone(), fatal_tx));
    if let Some(addr) = cfg.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--http {addr}: {e}"))?;
        let _ = crate::telemetry::prometheus();
        crate::telemetry::describe_agent();
        let router = admin_router(shared.clone());
        jobs.spawn(crate::http_serve::serve(
            listener,
            router,
            std::future::pending::<()>(),
        ));
    }
    let outcome = tokio::select! {
        _ = stop => Ok(()),
        Ok(why) = fatal_rx => Err(why),
    };
    jobs.abort_all();
    drop(lock);
    outcome
}

/// Executors under this work dir that the checkpoint does not know (Mesos
/// kills unknown containers on recovery): after the work dir was wiped, or
/// a task's record lost, they would run on unknown to the cluster beside
/// their replacements. Each is told to kill its task (SIGTERM) and exit.
fn kill_unknown_executors(cfg: &AgentConfig, tasks: &BTreeMap<Key, Task>) {
    let tasks_dir = cfg.work_dir.join("meta").join("tasks");
    let known: BTreeSet<String> = tasks
        .values()
        .map(|t| t.paths.dir.display().to_string())
        .collect();
    let needle = format!("--task-dir {}/", tasks_dir.display());
    for pid in procinfo::find_by_cmdline(&needle) {
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_executor = args.iter().any(|a| a == "executor");
        let dir = args
            .iter()
            .position(|a| a == "--task-dir")
            .and_then(|i| args.get(i + 1));
        let (true, Some(dir)) = (is_executor, dir) else {
            continue;
        };
        if !known.contains(dir) && pid != std::process::id() {
            tracing::warn!(pid, task_dir = %dir, "an executor this agent's checkpoint does not know runs under its work dir (was the work dir wiped?); stopping it and its task");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

fn lock_work_dir(work_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let meta = work_dir.join("meta");
    std::fs::create_dir_all(&meta).map_err(|e| format!("creating {}: {e}", meta.display()))?;
    let path = meta.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        format!(
            "another agent is running on --work-dir {}; two agents cannot share a work dir",
            work_dir.display()
        )
    })
}

fn touch_heartbeat(work_dir: &Path) {
    let _ = std::fs::write(checkpoint::heartbeat_file(work_dir), now_ms().to_string());
}

async fn heartbeat_loop(work_dir: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        touch_heartbeat(&work_dir);
    }
}

async fn poll_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let mut any = false;
        let mut tasks = shared.tasks();
        for t in tasks.values_mut() {
            if t.terminal() {
                continue;
            }
            let before = t.pending.len();
            if let Err(c) = t.poll_if_grown() {
                tracing::error!(problem = %c, "an executor's status stream is corrupt");
                let _ = t.push(agent_update(
                    TaskState::TaskLost,
                    TaskReason::ReasonExecutorTerminated,
                    format!("the executor's status stream is corrupt: {c}"),
                ));
            }
            // Liveness: once a second per task is enough (an executor
            // records its task's end itself; this catches executors that
            // die without a word).
            let due = t
                .checked_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if !t.terminal() && due {
                t.checked_at = Some(Instant::now());
                if t.exec_cache.is_none() {
                    t.exec_cache = t.executor().ok().flatten();
                }
                let exec = t.exec_cache.clone();
                let gone = match &exec {
                    Some(e) => !procinfo::same_process(e.pid, e.start_ticks, &e.boot_id),
                    None => t
                        .spawned_at
                        .is_some_and(|at| at.elapsed() > Duration::from_secs(10)),
                };
                if gone {
                    let _ = t.poll_executor();
                    if !t.terminal() {
                        let _ = t.push(agent_update(
                            TaskState::TaskLost,
                            TaskReason::ReasonExecutorTerminated,
                            "the executor exited without reporting the task's end",
                        ));
                    }
                }
            }
            any |= t.pending.len() != before;
        }
        drop(tasks);
        if any {
            shared.wake.notify_one();
        }
    }
}

async fn send_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let Some(agent_id) = shared.agent_id() else {
            continue;
        };
        let now = Instant::now();
        let mut heads = Vec::new();
        {
            let mut tasks = shared.tasks();
            for (key, t) in tasks.iter_mut() {
                if t.sending || t.retry_at.is_some_and(|at| at > now) {
                    continue;
                }
                if let Some(head) = t.pending.front() {
                    t.sending = true;
                    heads.push((key.clone(), head.clone()));
                }
            }
        }
        for (key, rec) in heads {
            let shared = shared.clone();
            let agent_id = agent_id.clone();
            tokio::spawn(async move {
                let _permit = shared.sends.acquire().await;
                let outcome = send_one(&shared.cfg, &agent_id, &key, &rec).await;
                acked(&shared, &key, &rec.uuid, outcome);
                shared.wake.notify_one();
            });
        }
    }
}

/// Sends one update: `Ok(true)` acknowledged, `Ok(false)` refused for
/// good (stale; logged), `Err` retry later.
async fn send_one(
    cfg: &AgentConfig,
    agent_id: &str,
    key: &Key,
    rec: &cp::StatusRecord,
) -> Result<bool, tonic::Status> {
    let req = ap::StatusUpdate {
        agent_id: agent_id.to_owned(),
        framework_id: key.0.clone(),
        task_id: key.1.clone(),
        state: rec.state,
        uuid: rec.uuid.clone(),
        reason: rec.reason,
        message: rec.message.clone(),
        source: rec.source,
        exit_code: rec.exit_code,
        healthy: rec.healthy,
    };
    let r = crate::client::with_leader_within(
        &cfg.transport,
        &cfg.masters,
        Duration::from_secs(2),
        CALL_DEADLINES,
        |ch| {
            let req = req.clone();
            async move { AgentLinkClient::new(ch).update_status(req).await }
        },
    )
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(s)
            if matches!(
                s.code(),
                Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
            ) =>
        {
            tracing::warn!(framework_id = %key.0, task_id = %key.1, uuid = %rec.uuid, error = %s.message(), "the master refused a status update for good; dropping it");
            Ok(false)
        }
        Err(s) => Err(s),
    }
}

fn acked(shared: &Shared, key: &Key, uuid: &str, outcome: Result<bool, tonic::Status>) {
    let mut tasks = shared.tasks();
    let Some(t) = tasks.get_mut(key) else {
        return;
    };
    t.sending = false;
    match outcome {
        Ok(_) => {
            // A duplicate or stale acknowledgement (not our head) is ignored.
            if t.pending.front().is_some_and(|h| h.uuid == uuid) {
                let _ = checkpoint::append(
                    &t.paths.updates(),
                    &cp::StreamRecord {
                        record: Some(cp::stream_record::Record::Ack(uuid.to_owned())),
                    },
                );
                t.pending.pop_front();
                t.backoff = Duration::from_millis(100);
                t.retry_at = None;
            }
            if t.terminal() && t.pending.is_empty() {
                // Done: the master has the end. The checkpoint goes; the
                // sandbox stays for the operator.
                let dir = t.paths.dir.clone();
                tasks.remove(key);
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        Err(_) => {
            t.retry_at = Some(Instant::now() + t.backoff);
            t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The name of the master's refusal (`orrery-rejection`), if it gave one.
fn rejection(s: &tonic::Status) -> Option<&str> {
    s.metadata()
        .get("orrery-rejection")
        .and_then(|v| v.to_str().ok())
}

/// Why a session ended: retry, or stop the agent (the masters refuse it for
/// good, e.g. a fault domain a domain-less master cannot take).
enum SessionEnd {
    Retry(String),
    Refused(String),
}

async fn master_loop(shared: Arc<Shared>, fatal: tokio::sync::oneshot::Sender<String>) {
    let cfg = &shared.cfg;
    let info = ap::AgentInfo {
        hostname: cfg.hostname.clone(),
        ip: cfg.ip.clone(),
        resources: Some(cfg.resources.to_proto()),
        attributes: cfg
            .attributes
            .iter()
            .map(|(n, v)| pb::Attribute {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        domain: cfg.domain.as_ref().map(|d| pb::Domain {
            region: d.region.clone(),
            zone: d.zone.clone(),
        }),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&shared, &info).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(SessionEnd::Refused(why)) => {
                tracing::error!(error = %why, "the master refused this agent's registration");
                let _ = fatal.send(format!("the master refused the registration: {why}"));
                return;
            }
            Err(SessionEnd::Retry(e)) => {
                tracing::warn!(error = %e, "the link to the master failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One registration and message stream, until the stream ends.
async fn session(shared: &Arc<Shared>, info: &ap::AgentInfo) -> Result<(), SessionEnd> {
    let agent_id = shared.agent_id().unwrap_or_default();
    // Every task the agent still holds, terminal ones too (their end is
    // not acknowledged yet): a task left out would be launched again.
    let tasks: Vec<ap::RunningTask> = shared
        .tasks()
        .iter()
        .map(|((f, id), t)| ap::RunningTask {
            framework_id: f.clone(),
            task_id: id.clone(),
            state: t.state as i32,
        })
        .collect();
    let req = ap::RegisterRequest {
        agent_id: agent_id.clone(),
        info: Some(info.clone()),
        tasks,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        incarnation: shared.incarnation.clone(),
    };
    let registered = crate::client::with_leader_within(
        &shared.cfg.transport,
        &shared.cfg.masters,
        Duration::from_secs(10),
        CALL_DEADLINES,
        |ch| {
            let r = req.clone();
            async move { AgentLinkClient::new(ch).register(r).await }
        },
    )
    .await;
    let (resp, addr) = match registered {
        Ok((r, a)) => (r.into_inner(), a),
        Err(s) if s.code() == Code::NotFound && !agent_id.is_empty() => {
            // The master does not know this id (another cluster, or its
            // state was reset): register afresh.
            tracing::warn!(agent_id, error = %s.message(), "the master does not know this agent id; registering as a new agent");
            *shared.agent_id.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(SessionEnd::Retry(s.message().to_owned()));
        }
        Err(s) if rejection(&s) == Some("host_in_maintenance") => {
            // DOWN for maintenance: wait for `host maintenance complete`.
            return Err(SessionEnd::Retry(s.message().to_owned()));
        }
        Err(s) if rejection(&s) == Some("agent_gone") => {
            // This id was retired (its host went DOWN): come back as a new
            // agent.
            tracing::warn!(
                agent_id,
                "this agent's id was retired; registering as a new agent"
            );
            *shared.agent_id.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(SessionEnd::Retry(s.message().to_owned()));
        }
        Err(s) if matches!(rejection(&s), Some("agent_id_in_use" | "hostname_in_use")) => {
            // Another live process holds this id (a copied work dir) or
            // this hostname: refused, and asked again later in case that
            // one is the process that died (its stream not yet seen closed).
            let reason = rejection(&s).unwrap_or_default().to_owned();
            tracing::error!(agent_id, reason, error = %s.message(), "the master refused this agent: another live agent process holds its id or its hostname");
            return Err(SessionEnd::Retry(s.message().to_owned()));
        }
        Err(s) if matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition) => {
            return Err(SessionEnd::Refused(s.message().to_owned()))
        }
        Err(s) => return Err(SessionEnd::Retry(s.message().to_owned())),
    };
    if resp.agent_id != agent_id {
        checkpoint::write_message(
            &checkpoint::agent_file(&shared.cfg.work_dir),
            &cp::AgentCheckpoint {
                agent_id: resp.agent_id.clone(),
                boot_id: procinfo::boot_id(),
            },
        )
        .map_err(|e| SessionEnd::Retry(format!("recording the agent id: {e}")))?;
        *shared.agent_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(resp.agent_id.clone());
    }
    shared.newest_term.fetch_max(resp.term, Ordering::SeqCst);
    tracing::info!(agent_id = %resp.agent_id, master = %addr, term = resp.term, "registered");
    shared.wake.notify_one();
    let retry = |s: tonic::Status| SessionEnd::Retry(s.message().to_owned());
    let ch = crate::client::connect_within(&shared.cfg.transport, &addr, CALL_DEADLINES)
        .await
        .map_err(retry)?;
    let mut client = AgentLinkClient::new(ch);
    let attach = client.attach(ap::AttachRequest {
        agent_id: resp.agent_id.clone(),
    });
    let mut stream = tokio::time::timeout(CALL_DEADLINES.call, attach)
        .await
        .map_err(|_| {
            SessionEnd::Retry(format!(
                "{addr} did not open the message stream within {:?}",
                CALL_DEADLINES.call
            ))
        })?
        .map_err(retry)?
        .into_inner();
    shared.attached.store(true, Ordering::SeqCst);
    *shared.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.clone());
    let _attached = Attached(shared);
    let silence = ping_timeout(&resp);
    loop {
        let m = match tokio::time::timeout(silence, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err(SessionEnd::Retry("the master closed the stream".into())),
            Ok(Err(s)) => return Err(retry(s)),
            Err(_) => {
                // Frozen, paused or cut off without a reset: its kernel may
                // still hold the connection open. Look for the leader again.
                crate::client::forget_leader(&shared.cfg.masters);
                metrics::counter!(crate::telemetry::AGENT_PING_TIMEOUTS).increment(1);
                return Err(SessionEnd::Retry(format!(
                    "no message from the master at {addr} for {silence:?} (its ping interval times its budget of missed pings): taking it for gone and looking for the leader"
                )));
            }
        };
        let newest = shared.newest_term.load(Ordering::SeqCst);
        if m.term < newest {
            tracing::info!(
                term = m.term,
                newest,
                "ignored a message from an old leader's term"
            );
            continue;
        }
        shared.newest_term.store(m.term, Ordering::SeqCst);
        match m.message {
            Some(ap::master_message::Message::Launch(l)) => launch(shared, l),
            Some(ap::master_message::Message::Kill(k)) => {
                kill_task(shared, (k.framework_id, k.task_id))
            }
            Some(ap::master_message::Message::Ping(p)) => {
                // Answered on the side: a master slow to take the pong must
                // not stop the agent reading its stream.
                let mut client = client.clone();
                let pong = ap::PongRequest {
                    agent_id: resp.agent_id.clone(),
                    seq: p.seq,
                };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CALL_DEADLINES.call, client.pong(pong)).await;
                });
            }
            None => {}
        }
    }
}

fn launch(shared: &Arc<Shared>, l: ap::LaunchTask) {
    let key = (l.framework_id.clone(), l.task_id.clone());
    if shared.tasks().contains_key(&key) {
        tracing::info!(framework_id = %key.0, task_id = %key.1, "ignored a launch of a task this agent already has");
        return;
    }
    let cfg = &shared.cfg;
    let paths = TaskPaths::new(&cfg.work_dir, &key.0, &key.1);
    let mut t = Task::new(paths.clone(), l.clone());
    let recorded = std::fs::create_dir_all(&paths.dir)
        .and_then(|_| std::fs::create_dir_all(&paths.sandbox))
        .and_then(|_| {
            checkpoint::write_message(
                &paths.task(),
                &cp::TaskCheckpoint {
                    launch: Some(l.clone()),
                    recorded_at_ms: now_ms(),
                    kill_grace_ms: cfg.kill_grace.as_millis() as u64,
                },
            )
        });
    if let Err(e) = recorded {
        tracing::error!(framework_id = %key.0, task_id = %key.1, error = %e, "cannot record the launch");
        let _ = std::fs::create_dir_all(&paths.dir);
        let _ = t.push(agent_update(
            TaskState::TaskFailed,
            TaskReason::ReasonContainerLaunchFailed,
            format!("the agent could not record the launch: {e}"),
        ));
        shared.tasks().insert(key, t);
        shared.wake.notify_one();
        return;
    }
    failpoint("launch-recorded");
    let stderr = std::fs::File::create(paths.sandbox.join("executor.stderr"));
    let mut cmd = tokio::process::Command::new(&cfg.executor_bin);
    cmd.arg("executor")
        .arg("--task-dir")
        .arg(&paths.dir)
        .arg("--sandbox")
        .arg(&paths.sandbox)
        .arg("--heartbeat")
        .arg(checkpoint::heartbeat_file(&cfg.work_dir))
        .arg("--recovery-timeout-ms")
        .arg(cfg.recovery_timeout.as_millis().to_string())
        .arg("--kill-grace-ms")
        .arg(cfg.kill_grace.as_millis().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Ok(f) = stderr {
        cmd.stderr(f);
    }
    match cmd.spawn() {
        Ok(mut child) => {
            t.spawned_at = Some(Instant::now());
            // Reap it when it exits while we run.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            failpoint("executor-spawned");
        }
        Err(e) => {
            let _ = t.push(agent_update(
                TaskState::TaskFailed,
                TaskReason::ReasonContainerLaunchFailed,
                format!(
                    "could not start the executor {}: {e}",
                    cfg.executor_bin.display()
                ),
            ));
        }
    }
    shared.tasks().insert(key, t);
    shared.wake.notify_one();
}

fn kill_task(shared: &Arc<Shared>, key: Key) {
    let shared = shared.clone();
    tokio::spawn(async move {
        // The executor may not have recorded itself yet: wait a little.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pid = {
                let tasks = shared.tasks();
                let Some(t) = tasks.get(&key) else {
                    tracing::info!(framework_id = %key.0, task_id = %key.1, "kill for a task this agent does not run");
                    return;
                };
                if t.terminal() {
                    return;
                }
                t.executor_alive()
            };
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(framework_id = %key.0, task_id = %key.1, "kill: the task's executor is not running");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

// --- HTTP admin (`orrery agent --http ADDR`) ------------------------------------

/// `/health` (200 `OK\n` while attached to the active master, 503 and why
/// otherwise), `/state` (the agent's tasks as JSON), `/metrics` and
/// `/vars.json`.
fn admin_router(shared: Arc<Shared>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let health = {
        let shared = shared.clone();
        move || {
            let shared = shared.clone();
            async move {
                if shared.attached.load(Ordering::SeqCst) {
                    (StatusCode::OK, "OK\n".to_owned())
                } else {
                    let why = match shared.agent_id.lock().map(|a| a.clone()) {
                        Ok(Some(id)) => format!(
                            "agent {id} is not attached to the active master (reconnecting)\n"
                        ),
                        _ => "not registered with a master yet\n".to_owned(),
                    };
                    (StatusCode::SERVICE_UNAVAILABLE, why)
                }
            }
        }
    };
    let state = {
        let shared = shared.clone();
        move || {
            let shared = shared.clone();
            async move { axum::Json(state_json(&shared)).into_response() }
        }
    };
    let vars = {
        let shared = shared.clone();
        move || {
            let shared = shared.clone();
            async move {
                match render(&shared) {
                    Some(text) => axum::Json(crate::telemetry::flatten(&text)).into_response(),
                    None => no_recorder(),
                }
            }
        }
    };
    let metrics = move || {
        let shared = shared.clone();
        async move {
            match render(&shared) {
                Some(text) => (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
                    .into_response(),
                None => no_recorder(),
            }
        }
    };
    axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/state", axum::routing::get(state))
        .route("/metrics", axum::routing::get(metrics))
        .route("/vars.json", axum::routing::get(vars))
}

/// The agent's gauges, set now, in the recorder's text (`None` without a
/// recorder).
fn render(shared: &Shared) -> Option<String> {
    let h = crate::telemetry::prometheus()?;
    set_agent_gauges(shared);
    Some(h.render())
}

/// `/metrics` and `/vars.json` when no recorder could be installed.
fn no_recorder() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "another metrics recorder is installed in this process\n",
    )
        .into_response()
}

fn state_json(shared: &Shared) -> serde_json::Value {
    let agent_id = shared.agent_id.lock().map(|a| a.clone()).unwrap_or(None);
    let tasks: Vec<serde_json::Value> = shared
        .tasks()
        .iter()
        .map(|((fw, task), t)| {
            serde_json::json!({
                "framework_id": fw,
                "task_id": task,
                "state": t.state.as_str_name(),
                "unacknowledged_updates": t.pending.len(),
                "executor_pid": t.exec_cache.as_ref().map(|e| e.pid),
                "sandbox": t.paths.sandbox.display().to_string(),
            })
        })
        .collect();
    serde_json::json!({
        "agent_id": agent_id,
        "hostname": shared.cfg.hostname,
        "work_dir": shared.cfg.work_dir.display().to_string(),
        "attached": shared.attached.load(Ordering::SeqCst),
        "master": shared.master.lock().map(|m| m.clone()).unwrap_or(None),
        "resources": shared.cfg.resources.to_string(),
        "tasks": tasks,
    })
}

fn set_agent_gauges(shared: &Shared) {
    let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut unacked = 0u64;
    for t in shared.tasks().values() {
        *by_state.entry(t.state.as_str_name()).or_default() += 1;
        unacked += t.pending.len() as u64;
    }
    by_state
        .entry(TaskState::TaskRunning.as_str_name())
        .or_default();
    for (state, n) in by_state {
        metrics::gauge!(crate::telemetry::AGENT_TASKS, "state" => state).set(n as f64);
    }
    metrics::gauge!(crate::telemetry::AGENT_UNACKED).set(unacked as f64);
    let attached = shared.attached.load(Ordering::SeqCst);
    metrics::gauge!(crate::telemetry::AGENT_ATTACHED).set(if attached { 1.0 } else { 0.0 });
}
