//! `orrery executor`: the process that runs one task and outlives the agent.
//!
//! The agent spawns it with the task's checkpoint dir. It starts its own
//! session (setsid), records itself in `executor.pb` (pid, start time, boot
//! id) *before* it starts the task, runs the command in its own process
//! group with the sandbox as working dir (stdout and stderr files there),
//! and appends every status update to `executor.log` (fsynced), where the
//! agent — this one or the next, after a restart — picks them up.
//!
//! Signals: SIGTERM from the agent means "kill the task": SIGTERM to the
//! task's process group, SIGKILL after the grace period. The agent proves it
//! is alive by touching `meta/heartbeat`; when that is older than the
//! recovery timeout, the executor kills its task and exits (Mesos' executor
//! recovery timeout), recording why.
//!
//! Resource limits: cgroups v2, or v1 (cpu and memory controllers), when
//! the hierarchy is writable; otherwise a line in `executor.stderr` says the
//! limits are not enforced.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use orrery_events::pb::{StatusSource, TaskReason, TaskState};
use orrery_proto::checkpoint as cp;

use super::checkpoint::{self, TaskPaths};
use super::procinfo;

#[derive(Clone, Debug)]
pub struct ExecutorArgs {
    pub task_dir: PathBuf,
    pub sandbox: PathBuf,
    pub heartbeat: PathBuf,
    pub recovery_timeout: Duration,
    pub kill_grace: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Recorder {
    path: PathBuf,
}

impl Recorder {
    fn record(
        &self,
        state: TaskState,
        reason: TaskReason,
        message: impl Into<String>,
        exit_code: Option<i32>,
    ) {
        self.record_health(state, reason, message, exit_code, None)
    }

    fn record_health(
        &self,
        state: TaskState,
        reason: TaskReason,
        message: impl Into<String>,
        exit_code: Option<i32>,
        healthy: Option<bool>,
    ) {
        let rec = cp::StreamRecord {
            record: Some(cp::stream_record::Record::Update(cp::StatusRecord {
                uuid: uuid::Uuid::new_v4().to_string(),
                state: state as i32,
                reason: reason as i32,
                message: message.into(),
                source: StatusSource::SourceExecutor as i32,
                exit_code,
                at_ms: now_ms(),
                healthy,
            })),
        };
        if let Err(e) = checkpoint::append(&self.path, &rec) {
            eprintln!(
                "orrery executor: cannot record {} in {}: {e}",
                state.as_str_name(),
                self.path.display()
            );
        }
    }
}

/// Puts this process (and so the task it starts) into a cgroup with the
/// task's cpu and memory limits, when the kernel lets us.
fn limit(name: &str, cpus_milli: u64, mem_mb: u64) -> Result<Vec<PathBuf>, String> {
    let root = Path::new("/sys/fs/cgroup");
    let pid = std::process::id().to_string();
    let w = |p: PathBuf, v: &str| {
        std::fs::write(&p, v).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    if root.join("cgroup.controllers").exists() {
        let dir = root.join("orrery").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory");
        let _ = std::fs::write(
            root.join("orrery").join("cgroup.subtree_control"),
            "+cpu +memory",
        );
        if cpus_milli > 0 {
            w(dir.join("cpu.max"), &format!("{} 100000", cpus_milli * 100))?;
        }
        if mem_mb > 0 {
            w(dir.join("memory.max"), &(mem_mb << 20).to_string())?;
        }
        w(dir.join("cgroup.procs"), &pid)?;
        return Ok(vec![dir]);
    }
    let cpu = root.join("cpu").join("orrery").join(name);
    let mem = root.join("memory").join("orrery").join(name);
    if !root.join("cpu").is_dir() || !root.join("memory").is_dir() {
        return Err("no cgroup v2 or v1 cpu and memory hierarchies under /sys/fs/cgroup".into());
    }
    for d in [&cpu, &mem] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    if cpus_milli > 0 {
        w(cpu.join("cpu.cfs_period_us"), "100000")?;
        w(
            cpu.join("cpu.cfs_quota_us"),
            &(cpus_milli * 100).to_string(),
        )?;
    }
    if mem_mb > 0 {
        w(
            mem.join("memory.limit_in_bytes"),
            &(mem_mb << 20).to_string(),
        )?;
    }
    w(cpu.join("cgroup.procs"), &pid)?;
    w(mem.join("cgroup.procs"), &pid)?;
    Ok(vec![cpu, mem])
}

/// One health check: whether the task is healthy now.
pub async fn check_once(
    hc: &orrery_events::pb::HealthCheck,
    sandbox: &Path,
    ports: &[u32],
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = Duration::from_millis(hc.timeout_ms.max(1));
    let port = || ports.get(hc.port_index as usize).copied();
    let check = async {
        match hc.kind.as_str() {
            "command" => tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&hc.command)
                .current_dir(sandbox)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success()),
            "tcp" => match port() {
                Some(p) => tokio::net::TcpStream::connect(("127.0.0.1", p as u16))
                    .await
                    .is_ok(),
                None => false,
            },
            "http" => {
                let Some(p) = port() else { return false };
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", p as u16)).await
                else {
                    return false;
                };
                let path = if hc.path.is_empty() {
                    "/"
                } else {
                    hc.path.as_str()
                };
                let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n]);
                line.split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .is_some_and(|c| (200..400).contains(&c))
            }
            _ => false,
        }
    };
    tokio::time::timeout(limit, check).await.unwrap_or(false)
}

fn heartbeat_age(path: &Path, started: SystemTime) -> Duration {
    let last = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(started)
        .max(started);
    SystemTime::now().duration_since(last).unwrap_or_default()
}

/// Runs the executor to its end. Errors are for the executor's own stderr.
pub fn run(args: ExecutorArgs) -> Result<(), String> {
    // Our own session: the agent's death (or its terminal's) must not reach
    // us. Fails only if we already lead one, which is as good.
    let _ = nix::unistd::setsid();
    let started = SystemTime::now();
    let me = std::process::id();
    let paths = TaskPaths {
        dir: args.task_dir.clone(),
        sandbox: args.sandbox.clone(),
    };
    let ticks = procinfo::start_ticks(me).ok_or("cannot read our own start time from /proc")?;
    checkpoint::write_message(
        &paths.executor(),
        &cp::ExecutorCheckpoint {
            pid: me,
            start_ticks: ticks,
            boot_id: procinfo::boot_id(),
        },
    )
    .map_err(|e| format!("recording {}: {e}", paths.executor().display()))?;
    let recorder = Recorder {
        path: paths.executor_log(),
    };
    let task: cp::TaskCheckpoint = checkpoint::read_message(&paths.task())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} does not exist", paths.task().display()))?;
    let launch = task.launch.unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(supervise(args, paths, launch, recorder, started))
}

async fn supervise(
    args: ExecutorArgs,
    paths: TaskPaths,
    launch: orrery_proto::agent::LaunchTask,
    recorder: Recorder,
    started: SystemTime,
) -> Result<(), String> {
    std::fs::create_dir_all(&paths.sandbox)
        .map_err(|e| format!("creating the sandbox {}: {e}", paths.sandbox.display()))?;
    let resources = launch.resources.clone().unwrap_or_default();
    // Named by our pid too: two agents on one machine may run tasks with
    // the same ids (different clusters), and a test may have left one.
    let cgroups = match limit(
        &format!(
            "{}-{}-{}",
            std::process::id(),
            launch.framework_id,
            launch.task_id
        ),
        resources.cpus_milli,
        resources.mem_mb,
    ) {
        Ok(dirs) => dirs,
        Err(why) => {
            eprintln!("orrery executor: resource limits are not enforced for this task: {why}");
            Vec::new()
        }
    };
    let command = launch.command.clone().unwrap_or_default();
    let mut cmd = if !command.shell.is_empty() {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(&command.shell);
        c
    } else if let Some((prog, rest)) = command.argv.split_first() {
        let mut c = tokio::process::Command::new(prog);
        c.args(rest);
        c
    } else {
        recorder.record(
            TaskState::TaskFailed,
            TaskReason::ReasonContainerLaunchFailed,
            "the task has no command (neither shell nor argv)",
            None,
        );
        return Ok(());
    };
    let open = |name: &str| {
        File::create(paths.sandbox.join(name))
            .map_err(|e| format!("creating {name} in the sandbox: {e}"))
    };
    // A clean environment: the task gets PATH, its own variables and what
    // the framework set, not whatever the agent was started with.
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", &paths.sandbox)
        .current_dir(&paths.sandbox)
        .stdin(std::process::Stdio::null())
        .stdout(open("stdout")?)
        .stderr(open("stderr")?)
        .env("ORRERY_TASK_ID", &launch.task_id)
        .env("ORRERY_FRAMEWORK_ID", &launch.framework_id)
        .env("ORRERY_SANDBOX", &paths.sandbox)
        .process_group(0);
    let mut n = 0;
    for range in &resources.ports {
        for port in range.begin..=range.end {
            cmd.env(format!("PORT{n}"), port.to_string());
            n += 1;
            if n >= 64 {
                break;
            }
        }
    }
    for var in &command.environment {
        cmd.env(&var.name, &var.value);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            recorder.record(
                TaskState::TaskFailed,
                TaskReason::ReasonContainerLaunchFailed,
                format!("could not start the command: {e}"),
                None,
            );
            return Ok(());
        }
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    recorder.record(TaskState::TaskRunning, TaskReason::Unspecified, "", None);
    // Health checks run beside the task and report each result here.
    let (health_tx, mut health_rx) = tokio::sync::mpsc::channel::<bool>(16);
    let mut healthy: Option<bool> = None;
    let mut failures = 0u32;
    let threshold = launch
        .health_check
        .as_ref()
        .map_or(1, |h| h.consecutive_failures.max(1));
    if let Some(hc) = launch.health_check.clone() {
        let sandbox = paths.sandbox.clone();
        let ports: Vec<u32> = resources
            .ports
            .iter()
            .flat_map(|r| r.begin..=r.end)
            .take(64)
            .collect();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(hc.grace_period_ms)).await;
            loop {
                let ok = check_once(&hc, &sandbox, &ports).await;
                if health_tx.send(ok).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(hc.interval_ms.max(100))).await;
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("handling SIGTERM: {e}"))?;
    let mut killing: Option<(TaskReason, &str, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(ok) = health_rx.recv() => {
                failures = if ok { 0 } else { failures + 1 };
                let now_healthy = if ok { Some(true) } else if failures >= threshold { Some(false) } else { healthy };
                if now_healthy != healthy {
                    healthy = now_healthy;
                    let message = if ok { "the health check passes".to_owned() } else { format!("the health check failed {failures} times in a row") };
                    recorder.record_health(TaskState::TaskRunning, TaskReason::ReasonTaskUnhealthy, message, None, healthy);
                }
            }
            _ = term.recv() => {
                if killing.is_none() {
                    killing = Some((TaskReason::ReasonKilledByFramework, "killed on request", tokio::time::Instant::now() + args.kill_grace));
                    if let Some(g) = pgid { let _ = killpg(g, Signal::SIGTERM); }
                }
            }
            _ = tick.tick() => {
                if let Some((_, _, deadline)) = killing {
                    if tokio::time::Instant::now() >= deadline {
                        if let Some(g) = pgid { let _ = killpg(g, Signal::SIGKILL); }
                    }
                } else if !args.task_dir.exists() {
                    // The agent's work dir was wiped (or this task's record
                    // removed): no agent will ever know this task again, so
                    // it must not run on, unknown, beside its replacement.
                    eprintln!("orrery executor: the task dir {} is gone (the agent's work dir was wiped); killing the task", args.task_dir.display());
                    killing = Some((TaskReason::ReasonExecutorTerminated, "the agent's work dir was wiped", tokio::time::Instant::now() + args.kill_grace));
                    if let Some(g) = pgid { let _ = killpg(g, Signal::SIGTERM); }
                } else if heartbeat_age(&args.heartbeat, started) > args.recovery_timeout {
                    eprintln!("orrery executor: the agent has been gone longer than the recovery timeout ({:?}); killing the task", args.recovery_timeout);
                    killing = Some((TaskReason::ReasonExecutorRecoveryTimeout, "the agent did not come back within the recovery timeout", tokio::time::Instant::now() + args.kill_grace));
                    if let Some(g) = pgid { let _ = killpg(g, Signal::SIGTERM); }
                }
            }
        }
    };
    // The task's group may hold children that outlived it.
    if let Some(g) = pgid {
        let _ = killpg(g, Signal::SIGKILL);
    }
    let (state, reason, message, code) = match (&status, killing) {
        (_, Some((reason, why, _))) => (
            TaskState::TaskKilled,
            reason,
            why.to_string(),
            status.as_ref().ok().and_then(|s| s.code()),
        ),
        (Ok(s), None) if s.success() => (
            TaskState::TaskFinished,
            TaskReason::ReasonCommandExited,
            "the command exited with 0".into(),
            Some(0),
        ),
        (Ok(s), None) => match s.code() {
            Some(c) => (
                TaskState::TaskFailed,
                TaskReason::ReasonCommandExited,
                format!("the command exited with {c}"),
                Some(c),
            ),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let sig = s.signal().unwrap_or(0);
                (
                    TaskState::TaskFailed,
                    TaskReason::ReasonCommandExited,
                    format!("the command was killed by signal {sig}"),
                    Some(128 + sig),
                )
            }
        },
        (Err(e), None) => (
            TaskState::TaskFailed,
            TaskReason::ReasonExecutorTerminated,
            format!("lost track of the command: {e}"),
            None,
        ),
    };
    recorder.record(state, reason, message, code);
    // Leave the task's cgroups (back to each hierarchy's root) and remove
    // them.
    for dir in cgroups {
        if let Some(root) = dir.parent().and_then(Path::parent) {
            let _ = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string());
        }
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_events::pb::HealthCheck;

    fn hc(kind: &str) -> HealthCheck {
        HealthCheck {
            kind: kind.into(),
            timeout_ms: 1_000,
            interval_ms: 100,
            consecutive_failures: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn command_tcp_and_http_checks_tell_healthy_from_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = hc("command");
        c.command = "true".into();
        assert!(check_once(&c, dir.path(), &[]).await);
        c.command = "exit 1".into();
        assert!(!check_once(&c, dir.path(), &[]).await);
        c.command = "sleep 5".into();
        c.timeout_ms = 100;
        assert!(
            !check_once(&c, dir.path(), &[]).await,
            "a check past its timeout fails"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port() as u32;
        let served = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for reply in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.0 503 Busy\r\n\r\n", ""] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let mut h = hc("http");
        h.path = "/health".into();
        assert!(check_once(&h, dir.path(), &[port]).await);
        assert!(
            !check_once(&h, dir.path(), &[port]).await,
            "503 is unhealthy"
        );
        assert!(check_once(&hc("tcp"), dir.path(), &[port]).await);
        served.await.unwrap();
        assert!(
            !check_once(&hc("tcp"), dir.path(), &[port]).await,
            "nobody listens"
        );
        assert!(
            !check_once(&hc("tcp"), dir.path(), &[]).await,
            "no such port"
        );
    }
}
