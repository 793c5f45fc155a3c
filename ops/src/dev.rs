//! `orrery dev`: Orrery on one machine, for a first look.
//!
//! Starts one master replica (a one-member raft log on a temp dir, the
//! active master's actors, gRPC and HTTP) and one real agent (tasks run
//! under `orrery executor`) in this process, prints their addresses and
//! example commands, and runs until Ctrl-C; then it stops the agent's
//! executors (the work dir is temporary) and removes the temp dir unless
//! `--data-dir` was given.
//!
//! `orrery dev --demo` runs the earlier in-process demo instead: the real
//! functional core (`decide`, `apply`, the allocator, maintenance rules)
//! with one simulated agent and framework, printing every event the master
//! writes, then replaying the encoded log and checking the state digest.

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_events::command::{
    AgentRegistration, Command, ElectLeader, FrameworkSubscription, StatusUpdate, TaskSpec,
};
use orrery_events::pb::{self, StatusSource, TaskReason, TaskState};
use orrery_events::state::MasterConfig;
use orrery_events::{
    apply, codec, decide, digest, envelopes, explain, invariants, Cluster, OfferId, Resources,
    TaskId,
};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Run the in-process demo of the core instead (prints the event log).
    #[arg(long)]
    demo: bool,
    /// With --demo: how many demo tasks the demo framework launches (1-100).
    #[arg(long, default_value_t = 3)]
    tasks: u32,
    /// Keep the master's log and the agent's work dir here (default: a temp
    /// dir, removed on exit).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long)]
    exit_after: Option<String>,
}

pub(crate) fn free_addr() -> Result<std::net::SocketAddr> {
    let port = orrery_storage::ports::free_port().context("finding a free port")?;
    Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One master and one agent in this process.
pub fn run_cluster(args: &DevArgs) -> Result<()> {
    use orrery_actors::agent::runner::{self, AgentConfig, Recover};
    use orrery_actors::master::{Serving, Settings};
    use orrery_storage::raft::RaftConfig;

    crate::logging::init("text")?;
    let exit_after = match &args.exit_after {
        Some(t) => Some(crate::master::parse_duration("--exit-after", t)?),
        None => None,
    };
    let (dir, temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("orrery-dev-")
                .tempdir()
                .context("creating a temp dir")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let grpc = free_addr()?;
    let http = free_addr()?;
    let agent_http = free_addr()?;
    let config = RaftConfig::new(
        1,
        grpc,
        std::collections::BTreeMap::from([(1, grpc.to_string())]),
        dir.join("master"),
    );
    let settings = Settings::new(1, grpc.to_string());
    let hostname = detect_hostname();
    let tls = dev_certs(&dir.join("tls"), &hostname)?;
    let agent = AgentConfig {
        masters: vec![grpc.to_string()],
        transport: orrery_actors::client::Transport::Tls(tls.agent.clone()),
        work_dir: dir.join("agent"),
        hostname: hostname.clone(),
        ip: "127.0.0.1".into(),
        resources: orrery_actors::agent::flags::detect(&dir),
        attributes: vec![("os".into(), std::env::consts::OS.into())],
        domain: None,
        recover: Recover::Reconnect,
        strict: true,
        recovery_timeout: std::time::Duration::from_secs(15 * 60),
        kill_grace: std::time::Duration::from_secs(3),
        http: Some(agent_http),
        executor_bin: std::env::current_exe().context("finding the orrery binary")?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = actix_rt::System::with_tokio_rt(move || rt).block_on(async {
        let running =
            orrery_gateway::server::start(config, settings, Some(http), Some(tls.security.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("the master: {e}"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !matches!(running.master.send(Serving).await, Ok(Ok(_))) {
            if std::time::Instant::now() > deadline {
                bail!("the master did not become the leader within 20 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        println!(
            "Orrery dev: one master and one agent, data in {}",
            dir.display()
        );
        println!("  master (gRPC: scheduler, agent, operator APIs)  {grpc}");
        println!("  master HTTP                                     https://{http}/state");
        println!("  agent HTTP                                      http://{agent_http}/health");
        println!("  web UI                                          https://{http}/ui/login");
        println!(
            "    sign in with the token {} (the certificate is the throwaway CA's: {}/ca.pem)",
            tls.ui_token,
            tls.dir.display()
        );
        println!(
            "TLS is on, with a throwaway CA in {0}; the CLI is the operator with:\n  export ORRERY_MASTER={grpc} ORRERY_CA={0}/ca.pem ORRERY_CERT={0}/operator.pem ORRERY_KEY={0}/operator.key",
            tls.dir.display()
        );
        println!("Try: orrery agent list");
        println!("Stop with Ctrl-C.");
        let stop = async {
            match exit_after {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = crate::master::shutdown_signal() => {}
                    }
                }
                None => crate::master::shutdown_signal().await,
            }
        };
        let agent_result = runner::run(agent.clone(), stop).await;
        runner::stop_all(&agent);
        running.shutdown().await;
        agent_result.map_err(|e| anyhow::anyhow!("the agent: {e}"))
    });
    drop(temp);
    outcome
}

/// The throwaway TLS set-up of `orrery dev`.
struct DevTls {
    dir: std::path::PathBuf,
    agent: std::sync::Arc<orrery_storage::security::Tls>,
    security: std::sync::Arc<orrery_gateway::auth::Security>,
    /// The web UI's sign-in token (principal `ui`, view only).
    ui_token: String,
}

/// A CA made for this run, and from it: the master's certificate, the
/// agent's (for `hostname`), and an operator's for the CLI (`operator`,
/// granted everything, frameworks in any role included). Written to `dir`
/// so the CLI can use them; the keys are readable by the owner only.
fn dev_certs(dir: &std::path::Path, hostname: &str) -> Result<DevTls> {
    use orrery_gateway::auth::{Policy, RateLimit, Security, Tokens};
    use orrery_storage::security::pki::{write_pem, Ca, Validity};
    use orrery_storage::security::Principal;
    let fail = |e: String| anyhow::anyhow!("making the dev certificates: {e}");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Ca::generate("Orrery dev CA (throwaway)", Validity::days(30)).map_err(fail)?;
    let local = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let issue = |p: Principal, sans: &[String]| ca.issue(&p, sans, Validity::days(30));
    let master = issue(Principal::Master("dev".into()), &local).map_err(fail)?;
    let agent = issue(Principal::Agent(hostname.to_owned()), &[]).map_err(fail)?;
    let operator = issue(Principal::Client("operator".into()), &[]).map_err(fail)?;
    let write = |name: &str, pem: &str, secret: bool| {
        write_pem(&dir.join(name), pem, secret).map_err(|e| anyhow::anyhow!("{e}"))
    };
    write("ca.pem", &ca.pair.cert_pem, false)?;
    write("operator.pem", &operator.cert_pem, false)?;
    write("operator.key", &operator.key_pem, true)?;
    let tls = |pair| ca.tls(pair).map_err(|e| anyhow::anyhow!("{e}"));
    // A bearer token for the web UI (view only): a browser signs in with it
    // at /ui/login.
    let ui_token = orrery_storage::security::random_token().map_err(|e| fail(e.to_string()))?;
    let tokens = Tokens::parse(&format!(
        "[[token]]\nprincipal = \"ui\"\nsha256 = {:?}\n",
        orrery_gateway::auth::token_hash(&ui_token)
    ))
    .map_err(fail)?;
    let security = Security::new(
        std::sync::Arc::new(tls(&master)?),
        Policy::default().allow_all("operator").allow_view("ui"),
        tokens,
        RateLimit::default(),
    );
    Ok(DevTls {
        dir: dir.to_owned(),
        ui_token,
        agent: std::sync::Arc::new(tls(&agent)?),
        security,
    })
}

/// This machine's size, as an agent would declare it.
fn detect_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1024, |kb| kb / 1024);
    Resources::new(cpus * 1000, mem_mb, 10_000)
        .with_ports(&[(31000, 32000)])
        .expect("a fixed, valid port range")
}

fn detect_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

struct Master {
    cluster: Cluster,
    log: Vec<pb::Envelope>,
    now_ms: u64,
}

impl Master {
    fn run(&mut self, cmd: Command) -> Result<Vec<orrery_events::Event>> {
        let shown = format!("{cmd:?}");
        let events = decide(&self.cluster, cmd, self.now_ms).map_err(|r| {
            anyhow::anyhow!(
                "the core refused {}: {r}",
                shown.split('(').next().unwrap_or("")
            )
        })?;
        let term = self.cluster.term().max(1);
        for env in envelopes(&self.cluster, term, self.now_ms, events.clone()) {
            apply(&mut self.cluster, &env);
            self.log.push(env);
        }
        self.now_ms += 100;
        Ok(events)
    }
}

pub fn run(args: &DevArgs, json: bool) -> Result<()> {
    if !args.demo {
        return run_cluster(args);
    }
    if !(1..=100).contains(&args.tasks) {
        bail!("--tasks {} is out of range: give 1 to 100", args.tasks);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis() as u64;
    let mut m = Master {
        cluster: Cluster::new(),
        log: Vec::new(),
        now_ms,
    };
    let hostname = detect_hostname();

    m.run(Command::ElectLeader(ElectLeader {
        term: 1,
        leader_id: 1,
        leader_addr: "127.0.0.1:7001".into(),
        http_addr: String::new(),
        domain: None,
        config: MasterConfig {
            offer_timeout_ms: 0,
            default_refuse_ms: 5_000,
            agent_reregister_timeout_ms: 600_000,
            drain_grace_ms: 60_000,
            offers_per_framework_max: 0,
        },
    }))?;
    m.run(Command::RegisterAgent(AgentRegistration {
        hostname: hostname.clone(),
        ip: "127.0.0.1".into(),
        resources: detect_resources(),
        attributes: vec![("os".into(), std::env::consts::OS.into())],
        domain: None,
    }))?;
    let agent_id = m
        .cluster
        .agents
        .keys()
        .next()
        .cloned()
        .context("the agent registered")?;
    m.run(Command::Subscribe(FrameworkSubscription {
        framework_id: None,
        name: "orrery-dev".into(),
        role: "dev".into(),
        region_aware: false,
        partition_aware: true,
        checkpoint: true,
        failover_timeout_ms: 60_000,
        principal: "dev".into(),
    }))?;
    let framework_id = m
        .cluster
        .frameworks
        .keys()
        .next()
        .cloned()
        .context("the framework subscribed")?;
    m.run(Command::Allocate)?;
    let offer: OfferId = m
        .cluster
        .offers
        .keys()
        .next()
        .cloned()
        .context("an offer was made")?;
    let launches = (0..args.tasks)
        .map(|i| TaskSpec {
            task_id: TaskId::from(format!("hello-{i}")),
            name: format!("hello-{i}"),
            resources: Resources::new(100, 32, 0),
            command: pb::CommandInfo {
                shell: "echo hello from orrery".into(),
                ..Default::default()
            },
            job: None,
            instance: i,
            job_version: 0,
        })
        .collect();
    m.run(Command::Accept {
        framework_id: framework_id.clone(),
        offer_ids: vec![offer],
        launches,
        refuse_seconds: None,
    })?;
    for i in 0..args.tasks {
        let task_id = TaskId::from(format!("hello-{i}"));
        for (k, state) in [
            TaskState::TaskStarting,
            TaskState::TaskRunning,
            TaskState::TaskFinished,
        ]
        .into_iter()
        .enumerate()
        {
            let uuid = format!("dev-{i}-{k}");
            m.run(Command::UpdateStatus(StatusUpdate {
                agent_id: agent_id.clone(),
                framework_id: framework_id.clone(),
                task_id: task_id.clone(),
                state,
                uuid: uuid.clone(),
                reason: if state == TaskState::TaskFinished {
                    TaskReason::ReasonCommandExited
                } else {
                    TaskReason::Unspecified
                },
                message: if state == TaskState::TaskFinished {
                    "simulated: no process runs yet".into()
                } else {
                    String::new()
                },
                source: StatusSource::SourceExecutor,
                exit_code: (state == TaskState::TaskFinished).then_some(0),
                healthy: None,
            }))?;
            m.run(Command::Acknowledge {
                framework_id: framework_id.clone(),
                task_id: task_id.clone(),
                uuid,
            })?;
        }
    }
    m.run(Command::StartMaintenance {
        hostnames: vec![hostname.clone()],
    })?;
    m.run(Command::MarkMachinesDown {
        machines: vec![orrery_events::state::MachineId {
            hostname: hostname.clone(),
            ip: String::new(),
        }],
    })?;
    m.run(Command::CompleteMaintenance {
        hostnames: vec![hostname],
    })?;

    // Replay the encoded log from scratch: same digest, invariants hold.
    let live = digest(&m.cluster);
    let mut replayed = Cluster::new();
    for env in &m.log {
        let decoded = codec::decode(&codec::encode(env)).context("the log decodes")?;
        orrery_events::try_apply(&mut replayed, &decoded).context("the log replays")?;
        invariants::check(&replayed).context("an invariant broke during replay")?;
    }
    let replayed_digest = digest(&replayed);
    if replayed_digest != live {
        bail!("replay diverged: live state {live}, replayed {replayed_digest}");
    }

    if json {
        let events: Vec<serde_json::Value> = m
            .log
            .iter()
            .map(|e| {
                let p = e.payload.as_ref().expect("decided events have payloads");
                serde_json::json!({
                    "index": e.index.to_string(),
                    "term": e.term.to_string(),
                    "event": codec::event_name(p),
                    "explanation": explain::explain(p),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "mode": "core-demo",
            "events": events,
            "digest": live.to_string(),
            "replayed_digest": replayed_digest.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("Orrery dev — core demo (the master and agent daemons are not built yet:");
    println!("this drives the real decide/apply core in-process; task updates are simulated)");
    println!();
    for e in &m.log {
        let p = e.payload.as_ref().expect("decided events have payloads");
        println!(
            "  #{:<3} {:<27} {}",
            e.index,
            codec::event_name(p),
            explain::explain(p)
        );
    }
    println!();
    let c = &m.cluster;
    println!(
        "state: {} agent(s), {} framework(s), {} task(s), {} host(s); digest {}",
        c.agents.len(),
        c.frameworks.len(),
        c.tasks.len(),
        c.hosts.len(),
        &live.to_string()[..16]
    );
    println!(
        "replayed {} events from an encoded log: same digest, invariants hold",
        m.log.len()
    );
    Ok(())
}
