//! Helpers for tests that run real `orrery` processes: free loopback ports,
//! temp dirs, and children that are killed when the test ends, pass or fail.

#![allow(dead_code)]

pub mod agent;
pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orrery_events::pb::{self, envelope::Payload};
use orrery_proto::raft as rpb;
use orrery_proto::raft::log_client::LogClient;
use orrery_proto::raft::raft_client::RaftClient;

pub const ELECTION_MS: u64 = 500;

/// Multi-process tests take this lock so that their timing claims (a new
/// leader within two election timeouts) are not measured while a dozen other
/// replicas compete for the same two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
pub const HEARTBEAT_MS: u64 = 100;

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports (outside the kernel's ephemeral range: see
/// `orrery_storage::ports`).
pub fn free_ports(n: usize) -> Vec<u16> {
    orrery_storage::ports::free_ports(n).expect("free ports")
}

/// A group of master processes in one temp dir; every child is killed on drop.
#[derive(Debug)]
pub struct Masters {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, String>,
    pub procs: Mutex<BTreeMap<u64, Child>>,
    pub extra: Vec<String>,
}

impl Drop for Masters {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, mut c) in procs {
            // A paused child must be resumed to die promptly.
            let _ = send(c.id(), "-CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Masters {
    pub fn new(n: u64, extra: &[&str]) -> Self {
        let addrs = (1..=n)
            .zip(free_ports(n as usize))
            .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect();
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            addrs,
            procs: Mutex::new(BTreeMap::new()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn peers(&self) -> String {
        self.addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("m{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("m{id}.log"))
    }

    /// `--peers` naming only `ids`.
    pub fn peers_of(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| format!("{id}={}", self.addrs[id]))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn command(&self, id: u64, more: &[&str]) -> Command {
        self.command_with(&["master"], id, &self.peers(), more)
    }

    /// `orrery SUB... --id ID --listen .. --peers PEERS ..` (`SUB` is
    /// `master` or `master join`).
    pub fn command_with(&self, sub: &[&str], id: u64, peers: &str, more: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orrery"));
        cmd.env("ORRERY_INSECURE", "1");
        cmd.args(sub);
        cmd.args([
            "--id",
            &id.to_string(),
            "--listen",
            &self.addrs[&id],
            "--peers",
            peers,
        ])
        .arg("--data-dir")
        .arg(self.data_dir(id))
        .args([
            "--election-timeout",
            &format!("{ELECTION_MS}ms"),
            "--heartbeat",
            &format!("{HEARTBEAT_MS}ms"),
        ])
        .arg("--accept-raw-appends")
        .args(&self.extra)
        .args(more);
        cmd
    }

    pub fn start(&self, id: u64, more: &[&str]) {
        self.spawn(id, self.command(id, more));
    }

    /// Runs `cmd` as master `id`, its stderr appended to the master's log.
    pub fn spawn(&self, id: u64, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn orrery master");
        self.procs.lock().unwrap().insert(id, child);
    }

    pub fn start_all(&self) {
        let ids: Vec<u64> = self.addrs.keys().copied().collect();
        for id in ids {
            self.start(id, &[]);
        }
    }

    pub fn kill9(&self, id: u64) {
        let child = self.procs.lock().unwrap().remove(&id);
        if let Some(mut c) = child {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// Sends `-STOP` or `-CONT` to a master.
    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self.procs.lock().unwrap()[&id].id();
        send(pid, sig).unwrap_or_else(|e| panic!("signal {sig} to master {id}: {e}"));
    }

    pub fn logs(&self) -> String {
        self.addrs
            .keys()
            .map(|id| {
                format!(
                    "--- master {id} ---\n{}",
                    std::fs::read_to_string(self.log_path(*id)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn status(&self, id: u64) -> Option<rpb::StatusResponse> {
        let mut c = RaftClient::connect(format!("http://{}", self.addrs[&id]))
            .await
            .ok()?;
        tokio::time::timeout(Duration::from_millis(500), c.status(rpb::StatusRequest {}))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
    }

    /// The leader a majority of the given replicas agree on, with its term.
    pub async fn leader_among(&self, ids: &[u64], timeout: Duration) -> Option<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
            for id in ids {
                if let Some(st) = self.status(*id).await {
                    if let Some(l) = st.leader_id {
                        *votes.entry((l, st.vote.map_or(0, |v| v.term))).or_default() += 1;
                    }
                }
            }
            if let Some((&(l, t), _)) = votes.iter().find(|(_, &n)| n * 2 > self.addrs.len()) {
                if ids.contains(&l) {
                    return Some((l, t));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn append(
        &self,
        id: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<rpb::AppendResponse, tonic::Status> {
        let mut c = LogClient::connect(format!("http://{}", self.addrs[&id]))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.append(rpb::AppendRequest { events })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn read_all(&self, id: u64) -> Vec<rpb::LoggedEvent> {
        let mut c = LogClient::connect(format!("http://{}", self.addrs[&id]))
            .await
            .expect("connect");
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let batch = c
                .read(rpb::ReadRequest {
                    from_index: from,
                    to_index: 0,
                    max_events: 5000,
                })
                .await
                .expect("read")
                .into_inner()
                .events;
            if batch.is_empty() {
                return out;
            }
            from = batch.last().expect("non-empty").index + 1;
            out.extend(batch);
        }
    }

    /// Waits until every given replica applied the same events with the same
    /// state digest; returns the event count.
    pub async fn converged(&self, ids: &[u64], timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut seen = Vec::new();
            for id in ids {
                match self.status(*id).await {
                    Some(st) => seen.push((st.last_event_index, st.app_digest)),
                    None => seen.push((u64::MAX, vec![])),
                }
            }
            if seen.windows(2).all(|w| w[0] == w[1]) && seen[0].0 != u64::MAX {
                return Ok(seen[0].0);
            }
            last = format!(
                "{:?}",
                seen.iter()
                    .map(|(i, d)| (i, d.iter().take(4).collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("replicas {ids:?} did not converge: {last}"))
    }
}

/// Appends one event at a time to whoever leads among `ids` (which the test
/// may change as masters come and go), following the leader hint; records
/// what was acknowledged. Events are numbered from `first`.
pub fn spawn_writer(
    m: std::sync::Arc<Masters>,
    ids: std::sync::Arc<Mutex<Vec<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<Mutex<Vec<u64>>>,
    first: u64,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut n = first;
        let mut target = ids.lock().unwrap()[0];
        while !stop.load(Ordering::Relaxed) {
            let rotate = |t: u64| {
                let ids = ids.lock().unwrap();
                ids[(ids.iter().position(|i| *i == t).unwrap_or(0) + 1) % ids.len()]
            };
            match tokio::time::timeout(Duration::from_secs(2), m.append(target, vec![event(n)]))
                .await
            {
                Ok(Ok(_)) => acked.lock().unwrap().push(n),
                Ok(Err(status)) => {
                    let hint = status
                        .metadata()
                        .get("orrery-leader")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|a| {
                            m.addrs
                                .iter()
                                .find(|(_, x)| x.as_str() == a)
                                .map(|(id, _)| *id)
                        });
                    target = hint.unwrap_or_else(|| rotate(target));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => target = rotate(target),
            }
            n += 1;
        }
    })
}

/// A self-contained event (RoleWeightsSet) that names itself by `n`.
pub fn event(n: u64) -> Vec<u8> {
    orrery_events::codec::encode(&pb::Envelope {
        index: 0,
        term: 0,
        proposed_at_ms: n,
        request_id: String::new(),
        principal: String::new(),
        idempotency_key: String::new(),
        payload: Some(Payload::RoleWeightsSet(pb::RoleWeightsSet {
            weights: vec![pb::RoleWeight {
                role: format!("role-{n}"),
                weight_milli: 1000,
            }],
        })),
    })
}

/// Sends a signal through the kernel (nix), not an external `kill` tool.
fn send(pid: u32, sig: &str) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    let signal = match sig {
        "-STOP" => Signal::SIGSTOP,
        "-CONT" => Signal::SIGCONT,
        other => return Err(format!("unknown signal {other}")),
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(|e| e.to_string())?);
    kill(pid, signal).map_err(|e| e.to_string())
}

/// Takes a child out of the group (the caller waits for it).
pub fn take(m: &Masters, id: u64) -> Option<Child> {
    m.procs.lock().unwrap().remove(&id)
}

/// Waits for `child` to exit, at most `timeout`; then kills it and says
/// `None`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past the deadline: kill it, so that a failing test leaves no process.
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs a command that is expected to exit, for at most `timeout` (it is
/// killed then): its exit status (None if it had to be killed) and stderr.
pub fn run_to_exit(
    cmd: &mut Command,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
        s
    });
    let status = wait_exit(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (status, reader.join().unwrap_or_default())
}

pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle))
}

impl Masters {
    /// Appends through whoever leads now, retrying through elections.
    pub async fn append_via_leader(
        &self,
        events: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<rpb::AppendResponse, String> {
        let ids: Vec<u64> = self.addrs.keys().copied().collect();
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some((l, _)) = self.leader_among(&ids, Duration::from_millis(500)).await {
                match self.append(l, events.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(s) => last = s.message().to_owned(),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("no leader took the append: {last}"))
    }
}

/// One HTTP/1.0 request on a raw socket; the whole response.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    try_http(addr, method, path, body).expect("connect to --http")
}

/// As [`http`], or None if nothing listens there (yet).
pub fn try_http(addr: &str, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out)
}

/// The body of a raw HTTP/1.1 response (what [`http`] returns).
pub fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Runs the CLI against the masters: (exit code, stdout, stderr).
pub fn cli(m: &Masters) -> impl Fn(&[&str]) -> (Option<i32>, String, String) {
    cli_at(m.addrs.values().cloned().collect::<Vec<_>>().join(","))
}

/// [`cli`] with `--master MASTERS` (ADDR[,ADDR...]).
pub fn cli_at(masters: String) -> impl Fn(&[&str]) -> (Option<i32>, String, String) {
    move |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .env("ORRERY_INSECURE", "1")
            .args(["--master", &masters])
            .args(args)
            .output()
            .expect("run the cli");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

/// Master flags for process tests: fast allocation, a 10 s ping budget,
/// no default refuse filter.
pub fn master_flags() -> Vec<&'static str> {
    vec![
        "--allocation-interval",
        "100ms",
        // A 10 s ping budget: agents here are down for a few seconds and
        // must not be marked unreachable meanwhile.
        "--agent-ping-timeout",
        "1s",
        "--max-agent-ping-timeouts",
        "10",
        "--default-refuse",
        "0s",
    ]
}
