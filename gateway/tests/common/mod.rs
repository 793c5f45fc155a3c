//! In-process harness: a group of masters (real raft logs in temp dirs, or
//! one log in the TiKV test double; real gRPC on loopback), simulated
//! agents and a framework client, all through the public APIs.

#![allow(dead_code)]

#[path = "framework.rs"]
mod framework;
pub use framework::*;
mod jobs;
#[allow(unused_imports)]
pub use jobs::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orrery_actors::master::Settings;
use orrery_events::pb::{self, StatusSource, TaskReason, TaskState};
use orrery_gateway::client::{connect, with_leader, Transport};
use orrery_gateway::server::{start, start_tikv, RunningMaster};
use orrery_proto::agent::{self as ap, agent_link_client::AgentLinkClient};
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use orrery_storage::raft::RaftConfig;
use orrery_storage::tikv::double::TikvTestDouble;
use orrery_storage::tikv::TikvConfig;

/// Runs a test body in an actix system on a multi-threaded tokio runtime,
/// with an overall deadline.
pub fn run<T, F: Future<Output = T>>(limit: Duration, body: F) -> T {
    // RUST_LOG=orrery_actors=debug shows the masters' logs of a failing test.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
    .block_on(async move {
        tokio::time::timeout(limit, body)
            .await
            .expect("the test finished within its deadline")
    })
}

/// `n` distinct free ports (outside the kernel's ephemeral range: see
/// `orrery_storage::ports`).
fn free_ports(n: usize) -> Vec<u16> {
    orrery_storage::ports::free_ports(n).expect("free ports")
}

pub fn test_settings() -> Settings {
    let mut s = Settings::new(0, String::new());
    s.allocation_interval = Duration::from_millis(100);
    s.tick = Duration::from_millis(20);
    s.agent_ping_timeout = Duration::from_millis(200);
    s.max_agent_ping_timeouts = 5;
    s.framework_heartbeat = Duration::from_secs(1);
    s.default_refuse = Duration::from_millis(200);
    s
}

/// Where the masters keep their log.
pub enum Store {
    /// Each its own raft log on disk (the default).
    Raft,
    /// One log in the in-process TiKV test double, under `prefix`.
    Tikv {
        double: Arc<TikvTestDouble>,
        prefix: String,
    },
}

pub struct Masters {
    pub dir: tempfile::TempDir,
    pub peers: BTreeMap<u64, String>,
    pub running: BTreeMap<u64, RunningMaster>,
    pub settings: Settings,
    pub store: Store,
    /// Mutual TLS and the policy, or None (`--insecure`).
    pub secure: Option<Secure>,
}

/// A secured group's CA and what its masters enforce.
pub struct Secure {
    pub ca: orrery_storage::security::pki::Ca,
    pub policy: orrery_gateway::auth::Policy,
    pub tokens: orrery_gateway::auth::Tokens,
    pub rate: orrery_gateway::auth::RateLimit,
}

impl Secure {
    /// A transport holding a fresh certificate of `principal` from the CA.
    pub fn transport(
        &self,
        principal: orrery_storage::security::Principal,
    ) -> orrery_gateway::client::Transport {
        orrery_gateway::client::Transport::Tls(Arc::new(
            self.ca.local(&principal).expect("issue a certificate"),
        ))
    }
}

impl Masters {
    pub async fn start(n: u64, settings: Settings) -> Masters {
        Self::start_on(n, settings, Store::Raft).await
    }

    /// `n` masters sharing one log in the TiKV test double.
    pub async fn start_tikv(n: u64, settings: Settings) -> Masters {
        let double = TikvTestDouble::start()
            .await
            .expect("start the TiKV test double");
        let store = Store::Tikv {
            double: Arc::new(double),
            prefix: "orrery-test/gateway".into(),
        };
        Self::start_on(n, settings, store).await
    }

    /// `n` masters over mutual TLS, enforcing `secure`'s policy.
    pub async fn start_secure(n: u64, settings: Settings, secure: Secure) -> Masters {
        Self::start_with(n, settings, Store::Raft, Some(secure)).await
    }

    async fn start_on(n: u64, settings: Settings, store: Store) -> Masters {
        Self::start_with(n, settings, store, None).await
    }

    async fn start_with(
        n: u64,
        settings: Settings,
        store: Store,
        secure: Option<Secure>,
    ) -> Masters {
        let peers: BTreeMap<u64, String> = (1..=n)
            .zip(free_ports(n as usize))
            .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect();
        let mut m = Masters {
            dir: tempfile::tempdir().expect("tempdir"),
            peers,
            running: BTreeMap::new(),
            settings,
            store,
            secure,
        };
        let ids: Vec<u64> = m.peers.keys().copied().collect();
        let started = futures::future::join_all(ids.iter().map(|&id| m.start_one(id))).await;
        for (id, r) in ids.into_iter().zip(started) {
            m.running.insert(id, r);
        }
        m
    }

    fn config(&self, id: u64) -> RaftConfig {
        let mut c = RaftConfig::new(
            id,
            self.peers[&id].parse().expect("addr"),
            self.peers.clone(),
            PathBuf::from(self.dir.path()).join(format!("m{id}")),
        );
        c.election_timeout_ms = 300;
        c.heartbeat_ms = 50;
        c
    }

    async fn start_one(&self, id: u64) -> RunningMaster {
        let mut settings = self.settings.clone();
        settings.node_id = id;
        let http = Some("127.0.0.1:0".parse().expect("addr"));
        let security = self.secure.as_ref().map(|s| {
            orrery_gateway::auth::Security::new(
                Arc::new(
                    s.ca.local(&orrery_storage::security::Principal::Master(format!(
                        "m{id}"
                    )))
                    .expect("a master certificate"),
                ),
                s.policy.clone(),
                s.tokens.clone(),
                s.rate,
            )
        });
        let started = match &self.store {
            Store::Raft => start(self.config(id), settings, http, security).await,
            Store::Tikv { double, prefix } => {
                let url = format!("tikv://{}/{prefix}", double.pd_endpoint());
                let mut cfg = TikvConfig::from_url(&url, id, String::new()).expect("store URL");
                cfg.lease_ttl = Duration::from_millis(900);
                cfg.poll = Duration::from_millis(20);
                cfg.request_timeout = Duration::from_millis(800);
                let listen = self.peers[&id].parse().expect("addr");
                start_tikv(cfg, listen, settings, http, security).await
            }
        };
        started.unwrap_or_else(|e| panic!("master {id} started: {e}"))
    }

    pub async fn restart(&mut self, id: u64) {
        let r = self.start_one(id).await;
        self.running.insert(id, r);
    }

    pub fn addrs(&self) -> Vec<String> {
        self.peers.values().cloned().collect()
    }

    /// The id of the master that serves as the active master.
    /// How tests reach the masters: plain, or as the policy's `operator`.
    pub fn client(&self) -> Transport {
        match &self.secure {
            None => Transport::Plain,
            Some(s) => s.transport(orrery_storage::security::Principal::Client(
                "operator".into(),
            )),
        }
    }

    pub async fn leader(&self) -> u64 {
        let (state, _) = with_leader(&self.client(), &self.addrs(), PATIENCE, |ch| async move {
            OperatorClient::new(ch)
                .get_state(op::GetStateRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await
        .expect("a leader serves GetState");
        state.leader_id
    }

    pub async fn state(&self) -> op::State {
        with_leader(&self.client(), &self.addrs(), PATIENCE, |ch| async move {
            OperatorClient::new(ch)
                .get_state(op::GetStateRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await
        .expect("a leader serves GetState")
        .0
    }

    /// Stops a master as abruptly as an in-process test can: its server and
    /// log stop, every stream to it breaks.
    pub async fn kill(&mut self, id: u64) {
        if let Some(r) = self.running.remove(&id) {
            r.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

// --- a simulated agent --------------------------------------------------------

#[derive(Default)]
pub struct AgentShared {
    pub id: Mutex<Option<String>>,
    /// (framework id, task id) → state.
    pub tasks: Mutex<BTreeMap<(String, String), i32>>,
    /// Ignores pings and does not reregister while set.
    pub silent: AtomicBool,
    /// Drops its stream at the next message (which is lost) and stays away
    /// while set; then reregisters with its tasks.
    pub detached: AtomicBool,
    pub stop: AtomicBool,
    pub newest_term: AtomicU64,
    pub registrations: AtomicU64,
    /// Plain, or TLS with this host's agent certificate.
    pub transport: Transport,
}

/// An agent that runs every task at once (TASK_RUNNING), kills on request
/// (TASK_KILLED), answers pings, and reregisters with its tasks whenever
/// its stream to the master breaks.
pub struct SimAgent {
    pub shared: Arc<AgentShared>,
    pub hostname: String,
}

impl SimAgent {
    pub fn spawn(masters: Vec<String>, hostname: &str, cpus: u64) -> SimAgent {
        Self::spawn_in(masters, hostname, cpus, None)
    }

    /// An agent reaching the masters over `transport` (its certificate).
    pub fn spawn_via(
        transport: Transport,
        masters: Vec<String>,
        hostname: &str,
        cpus: u64,
    ) -> SimAgent {
        Self::spawn_with(transport, masters, hostname, cpus, None)
    }

    /// An agent in a fault domain (region, zone).
    pub fn spawn_in(
        masters: Vec<String>,
        hostname: &str,
        cpus: u64,
        domain: Option<(&str, &str)>,
    ) -> SimAgent {
        Self::spawn_with(Transport::Plain, masters, hostname, cpus, domain)
    }

    fn spawn_with(
        transport: Transport,
        masters: Vec<String>,
        hostname: &str,
        cpus: u64,
        domain: Option<(&str, &str)>,
    ) -> SimAgent {
        let shared = Arc::new(AgentShared {
            transport,
            ..AgentShared::default()
        });
        let info = ap::AgentInfo {
            hostname: hostname.to_owned(),
            ip: "127.0.0.1".into(),
            resources: Some(pb::Resources {
                cpus_milli: cpus * 1000,
                mem_mb: cpus * 1024,
                disk_mb: 0,
                ports: vec![],
                ..Default::default()
            }),
            attributes: vec![],
            domain: domain.map(|(region, zone)| pb::Domain {
                region: region.into(),
                zone: zone.into(),
            }),
        };
        tokio::spawn(agent_loop(masters, info, shared.clone()));
        SimAgent {
            shared,
            hostname: hostname.to_owned(),
        }
    }

    pub fn id(&self) -> Option<String> {
        self.shared.id.lock().unwrap().clone()
    }

    pub fn task_count(&self) -> usize {
        self.shared.tasks.lock().unwrap().len()
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

async fn send_status(transport: Transport, masters: Vec<String>, update: ap::StatusUpdate) {
    // Retried until acknowledged (the master commits a uuid once).
    let _ = with_leader(&transport, &masters, Duration::from_secs(60), |ch| {
        let u = update.clone();
        async move { AgentLinkClient::new(ch).update_status(u).await }
    })
    .await;
}

async fn agent_loop(masters: Vec<String>, info: ap::AgentInfo, shared: Arc<AgentShared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.silent.load(Ordering::SeqCst) || shared.detached.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let agent_id = shared.id.lock().unwrap().clone().unwrap_or_default();
        let tasks: Vec<ap::RunningTask> = shared
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| **s == TaskState::TaskRunning as i32)
            .map(|((f, t), s)| ap::RunningTask {
                framework_id: f.clone(),
                task_id: t.clone(),
                state: *s,
            })
            .collect();
        let req = ap::RegisterRequest {
            version: String::new(),
            incarnation: String::new(),
            agent_id,
            info: Some(info.clone()),
            tasks,
        };
        let registered = with_leader(&shared.transport, &masters, Duration::from_secs(5), |ch| {
            let r = req.clone();
            async move { AgentLinkClient::new(ch).register(r).await }
        })
        .await;
        let (resp, addr) = match registered {
            Ok(ok) => ok,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let resp = resp.into_inner();
        shared.registrations.fetch_add(1, Ordering::SeqCst);
        *shared.id.lock().unwrap() = Some(resp.agent_id.clone());
        shared.newest_term.fetch_max(resp.term, Ordering::SeqCst);
        let Ok(ch) = connect(&shared.transport, &addr).await else {
            continue;
        };
        let mut client = AgentLinkClient::new(ch);
        let Ok(stream) = client
            .attach(ap::AttachRequest {
                agent_id: resp.agent_id.clone(),
            })
            .await
        else {
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(m)) = stream.message().await {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            if shared.detached.load(Ordering::SeqCst) {
                break;
            }
            if m.term < shared.newest_term.load(Ordering::SeqCst) {
                continue;
            }
            shared.newest_term.store(m.term, Ordering::SeqCst);
            match m.message {
                Some(ap::master_message::Message::Launch(l)) => {
                    // A task whose shell line is `false` fails at once.
                    let fails = l.command.as_ref().is_some_and(|c| c.shell == "false");
                    let state = if fails {
                        TaskState::TaskFailed
                    } else {
                        TaskState::TaskRunning
                    };
                    shared
                        .tasks
                        .lock()
                        .unwrap()
                        .insert((l.framework_id.clone(), l.task_id.clone()), state as i32);
                    tokio::spawn(send_status(
                        shared.transport.clone(),
                        masters.clone(),
                        update(&resp.agent_id, &l.framework_id, &l.task_id, state),
                    ));
                }
                Some(ap::master_message::Message::Kill(k)) => {
                    shared.tasks.lock().unwrap().insert(
                        (k.framework_id.clone(), k.task_id.clone()),
                        TaskState::TaskKilled as i32,
                    );
                    tokio::spawn(send_status(
                        shared.transport.clone(),
                        masters.clone(),
                        update(
                            &resp.agent_id,
                            &k.framework_id,
                            &k.task_id,
                            TaskState::TaskKilled,
                        ),
                    ));
                }
                Some(ap::master_message::Message::Ping(p))
                    if !shared.silent.load(Ordering::SeqCst) =>
                {
                    let _ = client
                        .pong(ap::PongRequest {
                            agent_id: resp.agent_id.clone(),
                            seq: p.seq,
                        })
                        .await;
                }
                Some(ap::master_message::Message::Ping(_)) => {}
                None => {}
            }
        }
    }
}

fn update(agent_id: &str, framework_id: &str, task_id: &str, state: TaskState) -> ap::StatusUpdate {
    ap::StatusUpdate {
        agent_id: agent_id.to_owned(),
        framework_id: framework_id.to_owned(),
        task_id: task_id.to_owned(),
        state: state as i32,
        uuid: uuid::Uuid::new_v4().to_string(),
        reason: if state == TaskState::TaskKilled {
            TaskReason::ReasonKilledByFramework as i32
        } else {
            TaskReason::Unspecified as i32
        },
        message: String::new(),
        source: StatusSource::SourceExecutor as i32,
        exit_code: None,
        healthy: None,
    }
}
