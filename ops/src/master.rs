//! `orrery master`: one replica of the master group.
//!
//! Today a master replica is its share of the replicated event log (the
//! `raft` backend of orrery-storage) applying committed events to the
//! cluster state. **Not finished**: the actors that make the leader the
//! active master (agents, frameworks, allocation) come with the master
//! issue; until then the log takes pre-built events only from clients
//! allowed by `--accept-raw-appends` (tests, benchmarks).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_actors::cluster_machine::{raw_append_allowed, ClusterMachine};
use orrery_storage::raft::{RaftConfig, RaftNode, RawAppends};

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// This replica's id (a positive integer, listed in --peers).
    #[arg(long)]
    id: u64,
    /// Where to listen for raft and log RPCs, e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: String,
    /// Every replica as ID=HOST:PORT, comma-separated: 1, 3 or 5 of them.
    /// The quorum is derived (a majority), never configured.
    #[arg(long)]
    peers: String,
    /// Where this replica keeps its log and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// The minimum election timeout (the maximum is twice it).
    #[arg(long, default_value = "1s")]
    election_timeout: String,
    /// The leader's heartbeat interval.
    #[arg(long, default_value = "200ms")]
    heartbeat: String,
    /// Take a snapshot every this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log entries kept after a snapshot, for followers to catch up from.
    #[arg(long, default_value_t = 1_000)]
    keep_after_snapshot: u64,
    /// Start from an empty data dir as an existing member, after a lost or
    /// corrupt disk. Every peer must be reachable.
    #[arg(long)]
    rebuild: bool,
    /// Let clients append pre-built, self-contained events through the log
    /// service (for tests and `orrery bench log`).
    #[arg(long)]
    accept_raw_appends: bool,
    /// Log format on stderr.
    #[arg(long, default_value = "text")]
    log_format: String,
}

pub fn parse_duration(flag: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{flag} {text:?} is not a duration (like 500ms, 15s, 10mins, 2h)"))
}

pub fn run(args: &MasterArgs) -> Result<()> {
    crate::logging::init(&args.log_format)?;
    let peers =
        RaftConfig::parse_peers(&args.peers).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
    let listen = tokio::net::lookup_host(&args.listen);
    let election = parse_duration("--election-timeout", &args.election_timeout)?;
    let heartbeat = parse_duration("--heartbeat", &args.heartbeat)?;
    if args.snapshot_every == 0 {
        bail!("--snapshot-every must be at least 1");
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let listen = listen
            .await
            .with_context(|| format!("--listen {:?} is not HOST:PORT", args.listen))?
            .next()
            .with_context(|| format!("--listen {:?} resolves to no address", args.listen))?;
        let mut config = RaftConfig::new(args.id, listen, peers, args.data_dir.clone());
        config.election_timeout_ms = election.as_millis() as u64;
        config.heartbeat_ms = heartbeat.as_millis() as u64;
        config.snapshot_every_entries = args.snapshot_every;
        config.keep_after_snapshot_entries = args.keep_after_snapshot;
        config.rebuild = args.rebuild;
        if args.accept_raw_appends {
            config.raw_appends = RawAppends::Checked(Arc::new(raw_append_allowed));
        }
        let node = RaftNode::start(config, ClusterMachine::default())
            .await
            .map_err(|e| anyhow::anyhow!("master {}: {e}", args.id))?;
        tracing::info!(
            id = args.id,
            addr = %node.local_addr(),
            cluster_id = %node.cluster_id(),
            "master replica started"
        );
        let mut metrics = node.raft().metrics();
        let mut last = (None, 0);
        let outcome = loop {
            tokio::select! {
                _ = shutdown_signal() => break Ok(()),
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break Err(anyhow::anyhow!("raft stopped"));
                    }
                    let m = metrics.borrow_and_update().clone();
                    if let Err(fatal) = &m.running_state {
                        break Err(anyhow::anyhow!("the replica stopped: {fatal}"));
                    }
                    if (m.current_leader, m.current_term) != last {
                        last = (m.current_leader, m.current_term);
                        tracing::info!(term = m.current_term, leader = ?m.current_leader, state = ?m.state, "leadership changed");
                    }
                }
            }
        };
        node.shutdown().await;
        outcome
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
