//! `orrery dev`: a first run on one machine.
//!
//! **Not finished**: the master and agent daemons come with later issues;
//! then `dev` will start one master replica and one real agent in this
//! process. Today it drives the real functional core (`decide`, `apply`,
//! the allocator, maintenance rules) in-process: one master, one agent
//! sized like this machine, one framework that launches tasks whose status
//! updates are *simulated* (no process runs). It prints every event the
//! master writes, then replays the encoded log from scratch and checks that
//! the replayed state has the same digest and satisfies the invariants.

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
    /// How many demo tasks the demo framework launches (1-100).
    #[arg(long, default_value_t = 3)]
    tasks: u32,
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
