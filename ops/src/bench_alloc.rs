//! `orrery bench alloc`: the allocator at data-centre scale (Mesos'
//! allocator benchmark grid), and placements per second with every launch
//! committed to the real log on disk.
//!
//! The cluster (agents, frameworks in 10 roles) is built by deciding events
//! with the real core and appending them to a one-replica `raft` log in a
//! temp dir, applying them to a local state as they commit — the shape of the
//! master's own loop: decide, append (group commit), apply.
//!
//! - cycle: the time of one full allocation cycle (`decide(Allocate)`:
//!   weighted DRF over every agent) on a cluster with nothing offered, and
//!   the time to apply its `OffersMade`; the median of `--cycles` runs.
//! - placements/s: every framework accepts its offers with one task each;
//!   the launches are decided in batches of `--batch`, each batch appended as
//!   one log entry (fsynced) and applied when committed.
//!
//! At the end the local state and the log replica's state must have the
//! same digest (the bench checks it and fails otherwise).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_actors::cluster_machine::ClusterMachine;
use orrery_events::command::{
    AgentRegistration, Command, ElectLeader, FrameworkSubscription, TaskSpec,
};
use orrery_events::state::MasterConfig;
use orrery_events::{apply, codec, decide, digest, pb, Cluster, OfferId, Resources, TaskId};
use orrery_storage::raft::{RaftConfig, RaftNode, RawAppends};
use orrery_storage::EventLog;

#[derive(Debug, Args)]
pub struct BenchAllocArgs {
    /// AGENTSxFRAMEWORKS cells, comma-separated.
    #[arg(long, default_value = "10000x100,20000x2000")]
    grid: String,
    /// Allocation cycles timed per cell (the median is reported).
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Launches decided per log append.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// The leader a benchmark's log starts with: no offer timeout, no default
/// refuse filter.
pub fn bench_leader(term: u64) -> ElectLeader {
    ElectLeader {
        term,
        leader_id: 1,
        leader_addr: "bench".into(),
        http_addr: String::new(),
        domain: None,
        config: MasterConfig {
            offer_timeout_ms: 0,
            default_refuse_ms: 0,
            agent_reregister_timeout_ms: 600_000,
            drain_grace_ms: 60_000,
            offers_per_framework_max: 0,
        },
    }
}

/// The master's loop in miniature: decide against the local state (applied
/// at once, speculatively), append a batch of events as one log entry, check
/// the log gave them the indexes the local state used.
struct Master {
    cluster: Cluster,
    log: RaftNode<ClusterMachine>,
    /// The raft term: the leader's term in events and in every envelope.
    term: u64,
    now_ms: u64,
    appended: u64,
}

fn parse_grid(text: &str) -> Result<Vec<(usize, usize)>> {
    text.split(',')
        .map(|cell| {
            let (a, f) = cell
                .trim()
                .split_once('x')
                .with_context(|| format!("--grid: `{cell}` is not AGENTSxFRAMEWORKS"))?;
            let a: usize = a
                .parse()
                .with_context(|| format!("--grid: `{a}` is not a number"))?;
            let f: usize = f
                .parse()
                .with_context(|| format!("--grid: `{f}` is not a number"))?;
            if a == 0 || f == 0 || a > 100_000 || f > 10_000 {
                bail!("--grid: {a}x{f} is out of range (1..100000 agents, 1..10000 frameworks)");
            }
            Ok((a, f))
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn cell(
    agents: usize,
    frameworks: usize,
    cycles: usize,
    batch: usize,
) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let port = orrery_storage::ports::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut config = RaftConfig::new(
        1,
        addr.parse()?,
        BTreeMap::from([(1, addr)]),
        dir.path().to_path_buf(),
    );
    config.raw_appends = RawAppends::Refused;
    config.snapshot_every_entries = 1_000_000;
    let log = RaftNode::start(config, ClusterMachine::default())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    log.wait_for_leader(Duration::from_secs(20))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let term = log.leader().term;
    let mut m = Master {
        cluster: Cluster::new(),
        log,
        term,
        now_ms: 1_700_000_000_000,
        appended: 0,
    };
    let mut pending = decide_ahead(&mut m, Command::ElectLeader(bench_leader(term)))?;
    // Agents and frameworks, decided and committed in batches.
    let setup = Instant::now();
    let resources = Resources::parse("cpus:32;mem:262144;disk:1000000;ports:[31000-32000]")?;
    for i in 0..agents {
        let cmd = Command::RegisterAgent(AgentRegistration {
            hostname: format!("h{i}"),
            ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            resources: resources.clone(),
            attributes: vec![("rack".into(), format!("r{}", i % 40))],
            domain: None,
        });
        pending.extend(decide_ahead(&mut m, cmd)?);
        if pending.len() >= 1000 {
            flush(&mut m, &mut pending).await?;
        }
    }
    for f in 0..frameworks {
        let cmd = Command::Subscribe(FrameworkSubscription {
            framework_id: None,
            name: format!("fw{f}"),
            role: format!("role{}", f % 10),
            region_aware: false,
            partition_aware: false,
            checkpoint: true,
            failover_timeout_ms: 3_600_000,
            principal: format!("fw{f}"),
        });
        pending.extend(decide_ahead(&mut m, cmd)?);
        if pending.len() >= 1000 {
            flush(&mut m, &mut pending).await?;
        }
    }
    flush(&mut m, &mut pending).await?;
    let setup_time = setup.elapsed();

    // One full allocation cycle, timed on copies of the same state.
    let mut decide_times = Vec::new();
    let mut apply_times = Vec::new();
    let mut offers_made = 0;
    for _ in 0..cycles.max(1) {
        let t = Instant::now();
        let events =
            decide(&m.cluster, Command::Allocate, m.now_ms).map_err(|r| anyhow::anyhow!("{r}"))?;
        decide_times.push(t.elapsed());
        offers_made = events
            .iter()
            .map(|e| match e {
                pb::envelope::Payload::OffersMade(o) => o.offers.len(),
                _ => 0,
            })
            .sum();
        let mut copy = m.cluster.clone();
        let envs = orrery_events::envelopes(&copy, m.term, m.now_ms, events);
        let t = Instant::now();
        for env in &envs {
            apply(&mut copy, env);
        }
        apply_times.push(t.elapsed());
    }
    if offers_made != agents {
        bail!("one cycle offered {offers_made} agents, expected all {agents}");
    }

    // Placements: commit the cycle, then every offer is accepted with one
    // task, decided in batches, each batch one log entry.
    pending.extend(decide_ahead(&mut m, Command::Allocate)?);
    flush(&mut m, &mut pending).await?;
    let offers: Vec<(OfferId, orrery_events::FrameworkId)> = m
        .cluster
        .offers
        .values()
        .map(|o| (o.id.clone(), o.framework_id.clone()))
        .collect();
    let task_resources = Resources::parse("cpus:1;mem:1024")?;
    let t = Instant::now();
    let mut placed = 0u64;
    for chunk in offers.chunks(batch.max(1)) {
        for (i, (offer, fw)) in chunk.iter().enumerate() {
            let cmd = Command::Accept {
                framework_id: fw.clone(),
                offer_ids: vec![offer.clone()],
                launches: vec![TaskSpec {
                    task_id: TaskId::from(format!("t-{}-{i}", offer.as_str())),
                    name: String::new(),
                    resources: task_resources.clone(),
                    command: pb::CommandInfo {
                        shell: "sleep 3600".into(),
                        ..Default::default()
                    },
                    job: None,
                    instance: 0,
                    job_version: 0,
                }],
                refuse_seconds: Some(0.0),
            };
            pending.extend(decide_ahead(&mut m, cmd)?);
            placed += 1;
        }
        flush(&mut m, &mut pending).await?;
    }
    let place_time = t.elapsed();

    // The log replica applied the same events: same state.
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.log.last_applied() < m.cluster.applied_index && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replica = m.log.digest().await;
    let local = digest(&m.cluster).0.to_vec();
    m.log.shutdown().await;
    if replica != local {
        bail!("the log replica's state differs from the local state");
    }
    let cycle = median(decide_times);
    let apply_cycle = median(apply_times);
    Ok(serde_json::json!({
        "agents": agents,
        "frameworks": frameworks,
        "setup_s": setup_time.as_secs_f64(),
        "cycle_ms": cycle.as_secs_f64() * 1000.0,
        "apply_offers_ms": apply_cycle.as_secs_f64() * 1000.0,
        "placements": placed,
        "placements_per_s": placed as f64 / place_time.as_secs_f64(),
        "events_committed": m.appended,
    }))
}

/// Decides `cmd` against a state that already includes what is pending
/// (the local state applies speculatively; `flush` commits it).
fn decide_ahead(m: &mut Master, cmd: Command) -> Result<Vec<pb::Envelope>> {
    let events = decide(&m.cluster, cmd, m.now_ms).map_err(|r| anyhow::anyhow!("refused: {r}"))?;
    let envs = orrery_events::envelopes(&m.cluster, m.term, m.now_ms, events);
    for env in &envs {
        apply(&mut m.cluster, env);
    }
    Ok(envs)
}

/// Appends speculatively applied envelopes as one log entry and checks the
/// log gave them the indexes the local state used.
async fn flush(m: &mut Master, pending: &mut Vec<pb::Envelope>) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let first = pending[0].index;
    let bytes: Vec<Vec<u8>> = pending.iter().map(codec::encode).collect();
    let range = m
        .log
        .append(bytes)
        .await
        .map_err(|e| anyhow::anyhow!("append: {e}"))?;
    if *range.start() != first || range.clone().count() != pending.len() {
        bail!("the log assigned {range:?}, the local state used {first}..");
    }
    m.appended += pending.len() as u64;
    pending.clear();
    Ok(())
}

pub fn run(args: &BenchAllocArgs, json: bool) -> Result<()> {
    let grid = parse_grid(&args.grid)?;
    if args.batch == 0 || args.batch > 50_000 {
        bail!("--batch {} must be between 1 and 50000", args.batch);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for (agents, frameworks) in grid {
        let row = rt.block_on(cell(agents, frameworks, args.cycles, args.batch))?;
        eprintln!("{row}");
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>8} {:>10} {:>12} {:>16} {:>14} {:>16}",
        "agents", "frameworks", "cycle ms", "apply offers ms", "placements", "placements/s"
    );
    for r in &rows {
        println!(
            "{:>8} {:>10} {:>12.1} {:>16.1} {:>14} {:>16.0}",
            r["agents"].as_u64().unwrap_or(0),
            r["frameworks"].as_u64().unwrap_or(0),
            r["cycle_ms"].as_f64().unwrap_or(0.0),
            r["apply_offers_ms"].as_f64().unwrap_or(0.0),
            r["placements"].as_u64().unwrap_or(0),
            r["placements_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
