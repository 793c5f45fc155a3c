//! One real `orrery agent` process on a temp work dir, and the clean-up
//! that kills it, its executors and their tasks when a test ends, pass or
//! fail (executors outlive their agent by design).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{wait_exit, Masters};

/// Pids of processes whose working directory is `dir` or below it.
pub fn pids_in(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(dir) && orrery_actors::agent::procinfo::start_ticks(pid).is_some() {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}

/// Pids whose command line mentions `dir`.
pub fn pids_naming(dir: &Path) -> Vec<u32> {
    orrery_actors::agent::procinfo::find_by_cmdline(&dir.display().to_string())
}

pub fn kill9_all(pids: &[u32]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// One agent process on a temp work dir.
pub struct AgentProc {
    pub dir: tempfile::TempDir,
    pub masters: String,
    pub hostname: String,
    pub child: Option<Child>,
    pub starts: u32,
    /// `--resources`.
    pub resources: String,
}

impl AgentProc {
    pub fn new(masters: &Masters) -> Self {
        Self::on_host(masters, "host-1")
    }

    pub fn on_host(masters: &Masters, hostname: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            hostname: hostname.to_owned(),
            masters: masters
                .addrs
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
            child: None,
            starts: 0,
            resources: "cpus:8;mem:8192;disk:1000;ports:[31000-31010]".to_owned(),
        }
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orrery"));
        cmd.env("ORRERY_INSECURE", "1");
        let _ = cmd
            .args(["--master", &self.masters, "agent", "--work-dir"])
            .arg(self.work())
            .args([
                "--hostname",
                &self.hostname,
                "--ip",
                "127.0.0.1",
                "--resources",
                &self.resources,
                "--kill-grace",
                "1s",
            ])
            .args(extra);
        if !extra.contains(&"--recovery-timeout") {
            cmd.args(["--recovery-timeout", "60s"]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn start(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("agent log");
        let mut cmd = self.command(extra);
        cmd.stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn orrery agent"));
        self.starts += 1;
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to exit on its own; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let status = wait_exit(c, limit);
        self.child = None;
        status.and_then(|s| s.code())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn sandbox(&self, fw: &str, task: &str) -> PathBuf {
        self.work().join("sandboxes").join(fw).join(task)
    }

    pub fn task_dir(&self, fw: &str, task: &str) -> PathBuf {
        self.work().join("meta").join("tasks").join(fw).join(task)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.logs());
        }
        // Executors (named by their task dir) first, then what runs in the
        // sandboxes.
        let mut executors = Vec::new();
        for _ in 0..3 {
            let named = pids_naming(self.dir.path());
            kill9_all(&named);
            executors.extend(named);
            kill9_all(&pids_in(self.dir.path()));
            std::thread::sleep(Duration::from_millis(50));
        }
        // The cgroups of executors killed here (they cannot remove them).
        for hierarchy in ["", "cpu", "memory"] {
            let dir = Path::new("/sys/fs/cgroup").join(hierarchy).join("orrery");
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if executors.iter().any(|p| name.starts_with(&format!("{p}-"))) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}
