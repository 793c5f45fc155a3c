//! `orrery bench replay`: the state at any point of a long log, from
//! checkpoints (`replay_checkpoints`), as `orrery replay --log-file FILE
//! state --at N` computes it.
//!
//! The log is made by the real core (decide + apply) and written as an
//! export: `--agents` agents (64 cpus each) registered, one framework with
//! `--tasks-per-agent` RUNNING tasks on each, then agents disconnecting and
//! reregistering with their tasks, one after another, with an allocation
//! cycle and a decline every `--agents` events — the churn of a large cluster
//! whose state stays bounded — until `--events` events.
//!
//! The same events go to an export file and, 5,000 per entry, into a
//! one-replica raft log (a master's data dir, with no snapshot: replay must
//! get through the whole history by its own checkpoints).
//!
//! Reported, for the file and for the data dir: the first replay to the end
//! (which writes the checkpoints; for the data dir, also the one-time
//! export its queries are answered from), then the state at `--queries` points
//! spread over the log, each from a fresh start (checkpoints on disk only):
//! the median and the slowest. The target is under 2 s per query at
//! 10,000,000 events.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_actors::cluster_machine::ClusterMachine;
use orrery_events::command::{
    AgentRegistration, Command, FrameworkSubscription, ReportedTask, StatusUpdate, TaskSpec,
};
use orrery_events::{codec, decide, digest, pb, try_apply, Cluster, Resources, TaskId};
use orrery_storage::raft::{RaftConfig, RaftNode, RawAppends};
use orrery_storage::EventLog;

#[derive(Debug, Args)]
pub struct BenchReplayArgs {
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    #[arg(long, default_value_t = 1_000)]
    agents: u64,
    #[arg(long, default_value_t = 10)]
    tasks_per_agent: u64,
    #[arg(long, default_value_t = 7)]
    queries: u64,
    /// Where the log and its checkpoints go (default: a temp dir, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Writer {
    c: Cluster,
    out: std::io::BufWriter<std::fs::File>,
    now_ms: u64,
    term: u64,
    /// The same events for the raft log, appended in batches.
    raft: Option<RaftNode<ClusterMachine>>,
    rt: tokio::runtime::Runtime,
    batch: Vec<Vec<u8>>,
}

/// Events per raft append (one raft entry).
const BATCH: usize = 5_000;

impl Writer {
    fn run(&mut self, cmd: Command) -> Result<Vec<pb::envelope::Payload>> {
        let events = decide(&self.c, cmd, self.now_ms).map_err(|r| anyhow::anyhow!("{r}"))?;
        for env in orrery_events::envelopes(&self.c, self.term, self.now_ms, events.clone()) {
            try_apply(&mut self.c, &env)?;
            let bytes = codec::encode(&env);
            self.out.write_all(&(bytes.len() as u32).to_le_bytes())?;
            self.out.write_all(&bytes)?;
            self.batch.push(bytes);
            if self.batch.len() >= BATCH {
                self.flush()?;
            }
        }
        self.now_ms += 1;
        Ok(events)
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len() as u64;
        let raft = self
            .raft
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the raft log is closed"))?;
        let range = self
            .rt
            .block_on(raft.append(batch))
            .map_err(|e| anyhow::anyhow!("appending to the raft log: {e}"))?;
        if *range.end() != self.c.applied_index || range.count() as u64 != n {
            bail!("the raft log numbered the events differently");
        }
        Ok(())
    }
}

fn registration(i: u64) -> AgentRegistration {
    AgentRegistration {
        hostname: format!("h{i}"),
        ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        resources: Resources::parse("cpus:64;mem:262144;disk:1000000").unwrap_or_default(),
        attributes: vec![("rack".into(), format!("r{}", i % 40))],
        domain: None,
    }
}

pub fn run(args: &BenchReplayArgs, json: bool) -> Result<()> {
    if args.agents == 0 || args.events < args.agents * 4 {
        bail!("--events must be at least 4 × --agents, and --agents at least 1");
    }
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("bench.log");
    let cps = crate::replay_checkpoints::default_dir(&log);
    let _ = std::fs::remove_dir_all(&cps);

    let data_dir = dir.join("master");
    let _ = std::fs::remove_dir_all(&data_dir);
    let data_cps = crate::replay_checkpoints::default_dir_for_data(&data_dir);
    let _ = std::fs::remove_dir_all(&data_cps);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let raft = rt.block_on(async {
        let port = orrery_storage::ports::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = RaftConfig::new(
            1,
            addr.parse()?,
            BTreeMap::from([(1, addr)]),
            data_dir.clone(),
        );
        config.raw_appends = RawAppends::Accepted;
        // No snapshot: the whole history stays in the log, and replay
        // must get through it by its own checkpoints.
        config.snapshot_every_entries = u64::MAX / 2;
        let log = RaftNode::start(config, ClusterMachine::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        log.wait_for_leader(Duration::from_secs(20))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(log)
    })?;
    let term = raft.leader().term;
    let raft = Some(raft);
    let started = Instant::now();
    let mut w = Writer {
        c: Cluster::new(),
        out: std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?,
        ),
        now_ms: 1_700_000_000_000,
        term,
        raft,
        rt,
        batch: Vec::new(),
    };
    w.run(Command::ElectLeader(crate::bench_alloc::bench_leader(term)))?;
    let mut agent_ids = Vec::new();
    for i in 0..args.agents {
        for e in w.run(Command::RegisterAgent(registration(i)))? {
            if let pb::envelope::Payload::AgentRegistered(a) = e {
                agent_ids.push(orrery_events::AgentId::new(a.agent_id));
            }
        }
    }
    let fw = w.run(Command::Subscribe(FrameworkSubscription {
        framework_id: None,
        name: "bench".into(),
        role: "bench".into(),
        region_aware: false,
        partition_aware: false,
        checkpoint: true,
        failover_timeout_ms: 3_600_000,
        principal: String::new(),
    }))?;
    let fw_id = match fw.first() {
        Some(pb::envelope::Payload::FrameworkSubscribed(s)) => {
            orrery_events::FrameworkId::new(s.framework_id.clone())
        }
        _ => bail!("the framework did not subscribe"),
    };
    // Tasks on every agent, RUNNING.
    w.run(Command::Allocate)?;
    let offers: Vec<_> = w.c.offers.values().cloned().collect();
    let mut reported: Vec<Vec<ReportedTask>> = vec![Vec::new(); agent_ids.len()];
    for o in offers {
        let a = agent_ids.iter().position(|x| *x == o.agent_id).unwrap_or(0);
        let launches: Vec<TaskSpec> = (0..args.tasks_per_agent)
            .map(|k| TaskSpec {
                task_id: TaskId::new(format!("t-{a}-{k}")),
                name: format!("t-{a}-{k}"),
                resources: Resources::parse("cpus:1;mem:1024").unwrap_or_default(),
                command: orrery_events::pb::CommandInfo {
                    shell: "sleep 1000".into(),
                    ..Default::default()
                },
                job: None,
                instance: 0,
                job_version: 0,
            })
            .collect();
        w.run(Command::Accept {
            framework_id: fw_id.clone(),
            offer_ids: vec![o.id.clone()],
            launches: launches.clone(),
            refuse_seconds: Some(0.0),
        })?;
        for t in launches {
            w.run(Command::UpdateStatus(StatusUpdate {
                agent_id: o.agent_id.clone(),
                framework_id: fw_id.clone(),
                task_id: t.task_id.clone(),
                state: pb::TaskState::TaskRunning,
                uuid: format!("u-{}", t.task_id.0),
                reason: pb::TaskReason::Unspecified,
                message: String::new(),
                source: pb::StatusSource::SourceExecutor,
                exit_code: None,
                healthy: None,
            }))?;
            reported[a].push(ReportedTask {
                framework_id: fw_id.clone(),
                task_id: t.task_id,
                state: pb::TaskState::TaskRunning,
            });
        }
    }
    // Churn until the log is long enough.
    let mut i = 0usize;
    while w.c.applied_index < args.events {
        let a = i % agent_ids.len();
        w.run(Command::DisconnectAgent {
            agent_id: agent_ids[a].clone(),
        })?;
        w.run(Command::ReregisterAgent {
            agent_id: agent_ids[a].clone(),
            registration: registration(a as u64),
            tasks: reported[a].clone(),
        })?;
        if a == 0 {
            let made = w.run(Command::Allocate)?;
            let ids: Vec<orrery_events::OfferId> = w.c.offers.keys().cloned().collect();
            if !made.is_empty() && !ids.is_empty() {
                w.run(Command::Decline {
                    framework_id: fw_id.clone(),
                    offer_ids: ids,
                    refuse_seconds: Some(0.0),
                })?;
            }
        }
        i += 1;
    }
    w.out.flush()?;
    w.flush()?;
    if let Some(raft) = w.raft.take() {
        w.rt.block_on(raft.shutdown());
        drop(raft);
    }
    let last = w.c.applied_index;
    let live = digest(&w.c);
    let bytes = std::fs::metadata(&log)?.len();
    let written = started.elapsed();

    let every = crate::replay_checkpoints::EVERY;
    let t = Instant::now();
    let (end, first) = crate::replay_checkpoints::state_at(&log, last, &cps, every)?;
    let first_pass = t.elapsed();
    if digest(&end) != live {
        bail!("the replayed state differs from the state that wrote the log");
    }
    let mut times: Vec<Duration> = Vec::new();
    let mut applied_most = 0;
    for q in 0..args.queries {
        // Points spread over the log, none on a checkpoint.
        let at = (last * (q + 1) / (args.queries + 1)).max(1) | 1;
        let t = Instant::now();
        let (c, stats) = crate::replay_checkpoints::state_at(&log, at, &cps, every)?;
        times.push(t.elapsed());
        applied_most = applied_most.max(stats.events_applied);
        if c.applied_index != at {
            bail!("asked for event {at}, got {}", c.applied_index);
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    let slowest = times[times.len() - 1];

    // The same from the stopped master's data dir.
    let t = Instant::now();
    let (end, data_first) =
        w.rt.block_on(crate::replay_checkpoints::state_at_data_dir_cached(
            &data_dir, last, &data_cps, every,
        ))?;
    let data_first_pass = t.elapsed();
    if digest(&end) != live {
        bail!("the state replayed from the data dir differs from the state that wrote the log");
    }
    let mut data_times: Vec<Duration> = Vec::new();
    for q in 0..args.queries {
        let at = (last * (q + 1) / (args.queries + 1)).max(1) | 1;
        let t = Instant::now();
        let (c, _) =
            w.rt.block_on(crate::replay_checkpoints::state_at_data_dir_cached(
                &data_dir, at, &data_cps, every,
            ))?;
        data_times.push(t.elapsed());
        if c.applied_index != at {
            bail!("asked the data dir for event {at}, got {}", c.applied_index);
        }
    }
    data_times.sort();
    let data_median = data_times[data_times.len() / 2];
    let data_slowest = data_times[data_times.len() - 1];
    if json {
        println!(
            "{}",
            serde_json::json!({
                "events": last, "log_bytes": bytes, "write_s": written.as_secs_f64(),
                "first_replay_s": first_pass.as_secs_f64(), "checkpoints": first.checkpoints_written,
                "query_median_s": median.as_secs_f64(), "query_max_s": slowest.as_secs_f64(),
                "most_events_applied_by_a_query": applied_most,
                "data_dir_first_replay_s": data_first_pass.as_secs_f64(),
                "data_dir_checkpoints": data_first.checkpoints_written,
                "data_dir_query_median_s": data_median.as_secs_f64(),
                "data_dir_query_max_s": data_slowest.as_secs_f64(),
            })
        );
    } else {
        println!(
            "log: {last} events, {} MB, written in {:.1} s",
            bytes >> 20,
            written.as_secs_f64()
        );
        println!(
            "first replay to the end: {:.2} s ({} checkpoints written, one every {every} events)",
            first_pass.as_secs_f64(),
            first.checkpoints_written
        );
        println!(
            "state at {} points: median {:.3} s, slowest {:.3} s (at most {applied_most} events applied after a checkpoint)",
            args.queries,
            median.as_secs_f64(),
            slowest.as_secs_f64()
        );
        println!(
            "from the master's data dir: first replay {:.2} s ({} checkpoints); state at {} points: median {:.3} s, slowest {:.3} s",
            data_first_pass.as_secs_f64(),
            data_first.checkpoints_written,
            args.queries,
            data_median.as_secs_f64(),
            data_slowest.as_secs_f64()
        );
    }
    Ok(())
}
