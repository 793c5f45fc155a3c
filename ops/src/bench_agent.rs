//! `orrery bench agent`: one agent running `--tasks` real `sleep` tasks.
//!
//! A master replica runs in this process (a one-member log in a temp dir);
//! the agent is a child process (`orrery agent`), so that it can be killed
//! with SIGKILL. A scheduler subscribes, accepts one offer with every task
//! (1,000 per accept at most), and acknowledges every update.
//!
//! - launch: from the accept until the master has every task RUNNING;
//! - recovery: SIGKILL the agent, start it again, and time until the master
//!   shows the agent reregistered with every task RUNNING (the agent has
//!   adopted every executor). None may be lost: every task must still be
//!   RUNNING, and the same processes must run.
//!
//! At the end every executor and task is stopped (`--recover cleanup`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_actors::master::{Serving, Settings};
use orrery_events::pb::{self, TaskState};
use orrery_gateway::client::connect;
use orrery_proto::operator::{self as op, operator_client::OperatorClient};
use orrery_proto::scheduler::{self as sp, scheduler_client::SchedulerClient};
use orrery_storage::raft::RaftConfig;

#[derive(Debug, Args)]
pub struct BenchAgentArgs {
    /// Tasks to run on the agent (1-1000).
    #[arg(long, default_value_t = 1000)]
    tasks: u32,
}

async fn state(grpc: &str) -> Result<op::State> {
    let ch = connect(&orrery_actors::client::Transport::Plain, grpc)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(OperatorClient::new(ch)
        .get_state(op::GetStateRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetState: {}", s.message()))?
        .into_inner())
}

fn running(s: &op::State) -> usize {
    s.tasks
        .iter()
        .filter(|t| t.state == TaskState::TaskRunning as i32)
        .count()
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut(&op::State) -> bool,
    grpc: &str,
) -> Result<op::State> {
    let deadline = Instant::now() + limit;
    loop {
        let s = state(grpc).await?;
        if ok(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {limit:?} ({} tasks RUNNING)",
                running(&s)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn agent_cmd(grpc: &str, work: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::current_exe().unwrap_or_else(|_| "orrery".into()));
    // The benchmark's master is in-process and plain TCP: it measures the
    // agent and its executors, not TLS.
    c.args(["--master", grpc, "--insecure", "agent", "--work-dir"])
        .arg(work)
        .args([
            "--hostname",
            "bench-agent",
            "--ip",
            "127.0.0.1",
            "--resources",
            "cpus:64;mem:65536;disk:1000",
            "--kill-grace",
            "1s",
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

pub fn run(args: &BenchAgentArgs, json: bool) -> Result<()> {
    if !(1..=1000).contains(&args.tasks) {
        bail!("--tasks {} is out of range: give 1 to 1000", args.tasks);
    }
    let n = args.tasks as usize;
    let dir = tempfile::Builder::new()
        .prefix("orrery-bench-agent-")
        .tempdir()
        .context("creating a temp dir")?;
    let work = dir.path().join("agent");
    let grpc = std::net::SocketAddr::from(([127, 0, 0, 1], orrery_storage::ports::free_port()?));
    let config = RaftConfig::new(
        1,
        grpc,
        std::collections::BTreeMap::from([(1, grpc.to_string())]),
        dir.path().join("master"),
    );
    let mut settings = Settings::new(1, grpc.to_string());
    settings.allocation_interval = Duration::from_millis(100);
    let grpc = grpc.to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = actix_rt::System::with_tokio_rt(move || rt).block_on(async {
        let master = orrery_gateway::server::start(config, settings, None, None)
            .await
            .map_err(|e| anyhow::anyhow!("the master: {e}"))?;
        while !matches!(master.master.send(Serving).await, Ok(Ok(_))) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut agent = agent_cmd(&grpc, &work, &[])
            .spawn()
            .context("starting the agent")?;
        let outcome = measure(&grpc, n, &work, &mut agent).await;
        let _ = agent.kill();
        let _ = agent.wait();
        // Stop every executor and task.
        let _ = agent_cmd(&grpc, &work, &["--recover", "cleanup"]).status();
        master.shutdown().await;
        outcome
    });
    let (launch, recovery) = result?;
    if json {
        println!(
            "{}",
            serde_json::json!({"tasks": n, "launch_ms": launch.as_millis(), "recovery_ms": recovery.as_millis()})
        );
    } else {
        println!(
            "tasks {n}: all RUNNING {:.0} ms after the accept",
            launch.as_secs_f64() * 1000.0
        );
        println!(
            "tasks {n}: after kill -9 and restart, all reconnected in {:.0} ms (target < 2000), none lost",
            recovery.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

async fn measure(
    grpc: &str,
    n: usize,
    work: &std::path::Path,
    agent: &mut std::process::Child,
) -> Result<(Duration, Duration)> {
    wait_for(
        "the agent registers",
        Duration::from_secs(30),
        |s| !s.agents.is_empty(),
        grpc,
    )
    .await?;
    let ch = connect(&orrery_actors::client::Transport::Plain, grpc)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut client = SchedulerClient::new(ch);
    let mut stream = client
        .subscribe(sp::SubscribeRequest {
            framework: Some(sp::FrameworkInfo {
                name: "bench".into(),
                role: "bench".into(),
                checkpoint: true,
                failover_timeout_ms: 600_000,
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| anyhow::anyhow!("subscribe: {}", s.message()))?
        .into_inner();
    let mut ids = None;
    let offer = loop {
        let ev = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .context("the event stream ended")?;
        match ev.event {
            Some(sp::event::Event::Subscribed(s)) => ids = Some((s.framework_id, s.stream_id)),
            Some(sp::event::Event::Offers(o)) if !o.offers.is_empty() => break o.offers[0].clone(),
            _ => {}
        }
    };
    let (framework_id, stream_id) = ids.context("no Subscribed event")?;
    let launches = (0..n)
        .map(|i| sp::TaskInfo {
            task_id: format!("sleep-{i}"),
            name: format!("sleep-{i}"),
            resources: Some(pb::Resources {
                cpus_milli: 10,
                mem_mb: 1,
                disk_mb: 0,
                ports: vec![],
                ..Default::default()
            }),
            command: Some(pb::CommandInfo {
                shell: String::new(),
                argv: vec!["sleep".into(), "100000".into()],
                environment: vec![],
            }),
        })
        .collect();
    let started = Instant::now();
    client
        .call(sp::Call {
            framework_id: framework_id.clone(),
            stream_id: stream_id.clone(),
            call: Some(sp::call::Call::Accept(sp::Accept {
                offer_ids: vec![offer.offer_id],
                launches,
                filters: None,
            })),
        })
        .await
        .map_err(|s| anyhow::anyhow!("accept: {}", s.message()))?;
    // Acknowledge updates as they come (the agent's streams need it).
    let acker = {
        let mut client = client.clone();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                if let Some(sp::event::Event::Update(u)) = ev.event {
                    if let Some(s) = u.status.filter(|s| !s.uuid.is_empty()) {
                        let _ = client
                            .call(sp::Call {
                                framework_id: framework_id.clone(),
                                stream_id: stream_id.clone(),
                                call: Some(sp::call::Call::Acknowledge(sp::Acknowledge {
                                    task_id: s.task_id,
                                    uuid: s.uuid,
                                })),
                            })
                            .await;
                    }
                }
            }
        })
    };
    wait_for(
        "every task RUNNING",
        Duration::from_secs(300),
        |s| running(s) == n,
        grpc,
    )
    .await?;
    let launch = started.elapsed();
    let before = orrery_actors::agent::procinfo::find_by_cmdline(&format!(
        "executor --task-dir {}",
        work.display()
    ))
    .len();

    let _ = agent.kill();
    let _ = agent.wait();
    wait_for(
        "the master sees the agent gone",
        Duration::from_secs(30),
        |s| s.agents.first().is_some_and(|a| a.state != "REGISTERED"),
        grpc,
    )
    .await?;
    let restarted = Instant::now();
    *agent = agent_cmd(grpc, work, &[])
        .spawn()
        .context("restarting the agent")?;
    wait_for(
        "the agent back with every task",
        Duration::from_secs(60),
        |s| s.agents.first().is_some_and(|a| a.state == "REGISTERED") && running(s) == n,
        grpc,
    )
    .await?;
    let recovery = restarted.elapsed();
    let after = orrery_actors::agent::procinfo::find_by_cmdline(&format!(
        "executor --task-dir {}",
        work.display()
    ))
    .len();
    acker.abort();
    if before != n || after != n {
        bail!(
            "executors: {before} before the kill, {after} after the restart (want {n} both times)"
        );
    }
    Ok((launch, recovery))
}
