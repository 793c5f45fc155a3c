//! `orrery master`: one replica of the master group.
//!
//! A replica is its share of the replicated event log (the `raft` backend
//! of orrery-storage) plus the `Master` actor, which serves as the active
//! master while the log makes this replica the leader. The scheduler, agent
//! and operator gRPC APIs share the raft address (`--listen`); followers
//! answer them with UNAVAILABLE and `orrery-leader`. `--http` serves
//! `/health` and `/state`.
//!
//! Runs in an actix system on a multi-threaded tokio runtime: the actors
//! on the system's arbiter, the gRPC server on the workers, and raft with
//! its log on a one-thread runtime of its own (`orrery-log`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use orrery_actors::cluster_machine::raw_append_allowed;
use orrery_actors::master::Settings;
use orrery_storage::raft::{RaftConfig, RawAppends};

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// This replica's id (a positive integer, listed in --peers; with
    /// `orrery master join`, a new id not in it).
    #[arg(long)]
    id: u64,
    /// Where to listen for gRPC, e.g. 127.0.0.1:7001: the scheduler,
    /// agent and operator APIs, and with --store raft the raft and log RPCs
    /// between masters too.
    #[arg(long)]
    listen: String,
    /// Where the log lives: `raft` (embedded, replicated between the
    /// masters of --peers; the default) or `tikv://PD1:2379,PD2:2379/PREFIX`
    /// (kept in TiKV under PREFIX; masters take a lease there).
    #[arg(long, default_value = "raft")]
    store: String,
    /// Every replica as ID=HOST:PORT, comma-separated: 1, 3 or 5 of them.
    /// The quorum is derived (a majority), never configured. With `orrery
    /// master join`: masters already in the group, to reach it by. Raft only.
    #[arg(long)]
    peers: Option<String>,
    /// Where this replica keeps its log and snapshots. Raft only.
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    /// This master's fault domain, Mesos' JSON:
    /// '{"fault_domain":{"region":{"name":"r1"},"zone":{"name":"z1"}}}'.
    /// Every master of a group must share the region.
    #[arg(long)]
    domain: Option<String>,
    /// Where to serve HTTP admin (`/health`, `/state`), e.g.
    /// 127.0.0.1:5050.
    #[arg(long)]
    http: Option<String>,
    /// How long an offer stands before it is rescinded (0s: until used,
    /// declined or rescinded for another reason).
    #[arg(long, default_value = "0s")]
    offer_timeout: String,
    /// The filter on what an accept leaves unused, when the framework names
    /// none (Mesos: 5s).
    #[arg(long, default_value = "5s")]
    default_refuse: String,
    /// The interval between pings to each agent.
    #[arg(long, default_value = "15s")]
    agent_ping_timeout: String,
    /// Pings in a row an agent may miss before it is marked unreachable.
    #[arg(long, default_value_t = 5)]
    max_agent_ping_timeouts: u32,
    /// After a leader change, how long agents have to reregister.
    #[arg(long, default_value = "10mins")]
    agent_reregister_timeout: String,
    /// After a leader change, if more than this share of the known agents
    /// did not reregister in time, none is marked unreachable (a partition,
    /// not a mass failure) until they return or the operator runs
    /// `orrery agents mark-gone` (Mesos' --recovery_agent_removal_limit).
    #[arg(long, default_value = "100%")]
    recovery_agent_removal_limit: String,
    /// At most N agents marked unreachable per DURATION, like `1/10s`
    /// (Mesos' --agent_removal_rate_limit; default: no limit).
    #[arg(long)]
    agent_removal_rate_limit: Option<String>,
    /// Client commands waiting for the log beyond which new ones are
    /// refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 429, with a retry
    /// hint) instead of queueing without bound.
    #[arg(long, default_value_t = 10_000)]
    max_pending_commands: usize,
    /// The time between allocation cycles.
    #[arg(long, default_value = "1s")]
    allocation_interval: String,
    /// The interval of heartbeats on framework streams.
    #[arg(long, default_value = "15s")]
    framework_heartbeat: String,
    /// On a DRAINING host, how long frameworks' tasks may run after the
    /// drain started (a framework that accepts the inverse offer is drained
    /// at once; jobs move within their SLA regardless).
    #[arg(long, default_value = "1min")]
    drain_grace: String,
    /// Log format on stderr.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Outstanding offers one framework may hold; it gets no more until it
    /// answers some (0: no cap).
    #[arg(long, default_value_t = 10_000)]
    max_offers_per_framework: u64,
    /// Who may do what (TOML; see README, Security). Required unless
    /// --insecure: anything it does not grant is denied.
    #[arg(long, value_name = "FILE")]
    policy: Option<std::path::PathBuf>,
    /// Bearer tokens, by SHA-256 (TOML; `orrery certs token` makes one).
    #[arg(long, value_name = "FILE")]
    tokens: Option<std::path::PathBuf>,
    /// Requests per second each client principal may make (bursts of twice
    /// as many); 500 when not given. Needs TLS (it limits authenticated
    /// principals; --insecure has none).
    #[arg(long)]
    client_rate: Option<u32>,
}

/// The master's security, from the global --ca/--cert/--key (or
/// --insecure) and --policy/--tokens. The certificate must be a master's.
fn security(args: &MasterArgs) -> Result<Option<Arc<orrery_gateway::auth::Security>>> {
    use orrery_gateway::auth::{Policy, RateLimit, Security, Tokens};
    let flags = crate::creds::flags();
    let Some(tls) = flags.tls()? else {
        if args.policy.is_some() || args.tokens.is_some() {
            bail!("--policy and --tokens need TLS: they cannot be used with --insecure");
        }
        if args.client_rate.is_some() {
            bail!("--client-rate limits each authenticated client; with --insecure there are none, so it would do nothing");
        }
        return Ok(None);
    };
    if !matches!(
        tls.principal(),
        orrery_storage::security::Principal::Master(_)
    ) {
        bail!(
            "--cert is the certificate of {}; a master needs a master certificate (orrery certs master)",
            tls.principal()
        );
    }
    let Some(policy) = &args.policy else {
        bail!("--policy is required with TLS: the file that says who may do what (see README, Security)");
    };
    let policy = Policy::load(policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokens = match &args.tokens {
        Some(t) => Tokens::load(t).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Tokens::default(),
    };
    let client_rate = args.client_rate.unwrap_or(500);
    if client_rate == 0 {
        bail!("--client-rate must be at least 1");
    }
    let rate = RateLimit {
        per_sec: f64::from(client_rate),
        burst: 2.0 * f64::from(client_rate),
    };
    Ok(Some(Security::new(tls, policy, tokens, rate)))
}

pub fn parse_duration(flag: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{flag} {text:?} is not a duration (like 500ms, 15s, 10mins, 2h)"))
}

fn positive(flag: &str, text: &str) -> Result<Duration> {
    let d = parse_duration(flag, text)?;
    if d.is_zero() {
        bail!("{flag} must be longer than zero");
    }
    Ok(d)
}

fn settings(args: &MasterArgs) -> Result<Settings> {
    let mut s = Settings::new(args.id, args.listen.clone());
    s.offer_timeout = parse_duration("--offer-timeout", &args.offer_timeout)?;
    s.default_refuse = parse_duration("--default-refuse", &args.default_refuse)?;
    s.agent_ping_timeout = positive("--agent-ping-timeout", &args.agent_ping_timeout)?;
    if args.max_agent_ping_timeouts == 0 {
        bail!("--max-agent-ping-timeouts must be at least 1");
    }
    s.max_agent_ping_timeouts = args.max_agent_ping_timeouts;
    s.agent_reregister_timeout =
        positive("--agent-reregister-timeout", &args.agent_reregister_timeout)?;
    s.recovery_agent_removal_limit_pct =
        orrery_actors::removals::parse_percent(&args.recovery_agent_removal_limit)
            .map_err(|e| anyhow::anyhow!("--recovery-agent-removal-limit: {e}"))?;
    s.agent_removal_rate_limit = args
        .agent_removal_rate_limit
        .as_deref()
        .map(orrery_actors::removals::RateLimit::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--agent-removal-rate-limit: {e}"))?;
    if args.max_pending_commands == 0
        || args.max_pending_commands > orrery_actors::master::QUEUE_MAX
    {
        bail!(
            "--max-pending-commands must be between 1 and {}",
            orrery_actors::master::QUEUE_MAX
        );
    }
    s.max_pending_commands = args.max_pending_commands;
    s.allocation_interval = positive("--allocation-interval", &args.allocation_interval)?;
    s.framework_heartbeat = positive("--framework-heartbeat", &args.framework_heartbeat)?;
    s.drain_grace = parse_duration("--drain-grace", &args.drain_grace)?;
    s.offers_per_framework_max = args.max_offers_per_framework;
    if s.drain_grace.as_millis() > u128::from(orrery_events::decide::limits::DURATION_MS_MAX) {
        bail!("--drain-grace must be at most a year");
    }
    if let Some(d) = &args.domain {
        s.domain = Some(orrery_actors::agent::flags::domain(d).map_err(|e| anyhow::anyhow!(e))?);
    }
    Ok(s)
}

pub fn run(args: &MasterArgs, join: bool) -> Result<()> {
    crate::logging::init(&args.log_format)?;
    if args.store.starts_with("tikv://") {
        if join {
            bail!(
                "orrery master join applies to --store raft only: masters on TiKV keep no raft \
                 group; start another with `orrery master --store tikv://...`"
            );
        }
        return run_tikv(args);
    }
    if args.store != "raft" {
        bail!(
            "--store {:?}: expected raft or tikv://PD1:2379,PD2:2379/PREFIX",
            args.store
        );
    }
    let settings = settings(args)?;
    let security = security(args)?;
    let peers_flag = args
        .peers
        .as_deref()
        .context("--peers is required with --store raft (every replica as ID=HOST:PORT)")?;
    let data_dir = args
        .data_dir
        .clone()
        .context("--data-dir is required with --store raft")?;
    let peers = RaftConfig::parse_peers(peers_flag).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
    let listen = tokio::net::lookup_host(&args.listen);
    let election = parse_duration("--election-timeout", &args.election_timeout)?;
    let heartbeat = parse_duration("--heartbeat", &args.heartbeat)?;
    if args.snapshot_every == 0 {
        bail!("--snapshot-every must be at least 1");
    }
    let http = http_flag(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Raft, its replication and the committer on a thread of their own
    // (`RaftConfig::core`): a commit's steps do not wait behind the API
    // requests the server has ready. At 10x overload this kept 2,386
    // admitted calls/s against 727/s sharing the API runtime.
    let core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("orrery-log")
        .enable_all()
        .build()
        .context("starting the log's runtime")?;
    let core_handle = Some(core.handle().clone());
    actix_rt::System::with_tokio_rt(move || rt).block_on(async {
        let listen = resolve_listen(&args.listen, listen).await?;
        let mut config = RaftConfig::new(args.id, listen, peers, data_dir);
        config.core = core_handle;
        config.election_timeout_ms = election.as_millis() as u64;
        config.heartbeat_ms = heartbeat.as_millis() as u64;
        config.snapshot_every_entries = args.snapshot_every;
        config.keep_after_snapshot_entries = args.keep_after_snapshot;
        config.rebuild = args.rebuild;
        config.join = join;
        let join_via: Vec<String> = config.peers.values().cloned().collect();
        config.region = settings
            .domain
            .as_ref()
            .map(|d| d.region.clone())
            .unwrap_or_default();
        if args.accept_raw_appends {
            config.raw_appends = RawAppends::Checked(Arc::new(raw_append_allowed));
        }
        let running_tls = security.as_ref().map(|s| s.tls.clone());
        let running = orrery_gateway::server::start(config, settings, http, security)
            .await
            .map_err(|e| anyhow::anyhow!("master {}: {e}", args.id))?;
        let orrery_actors::log::Log::Raft(node) = running.node.clone() else {
            bail!("--store raft started a replica on another store");
        };
        if join && node.status().cluster_id.is_empty() {
            // Found the cluster, not yet a member: ask its leader.
            let addr = if listen.port() == 0 {
                node.local_addr().to_string()
            } else {
                args.listen.clone()
            };
            let transport = match &running_tls {
                Some(tls) => orrery_gateway::client::Transport::Tls(tls.clone()),
                None => orrery_gateway::client::Transport::Plain,
            };
            match crate::masters::request_join(&transport, &join_via, args.id, &addr).await {
                Ok(g) => tracing::info!(
                    id = args.id,
                    %addr,
                    leader = g.leader_id,
                    "joined the masters' group as a learner; promote it with `orrery masters add {}` once it has caught up",
                    args.id
                ),
                Err(e) => {
                    running.shutdown().await;
                    return Err(e);
                }
            }
        }
        tracing::info!(
            id = args.id,
            addr = %node.local_addr(),
            http = ?running.http_addr.map(|a| a.to_string()),
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
        running.shutdown().await;
        outcome
    })
}

/// `--store tikv://…`: the log in TiKV; the replica leads while it holds
/// the lease there.
fn run_tikv(args: &MasterArgs) -> Result<()> {
    for (given, flag) in [
        (args.peers.is_some(), "--peers"),
        (args.data_dir.is_some(), "--data-dir"),
        (args.rebuild, "--rebuild"),
        (args.accept_raw_appends, "--accept-raw-appends"),
    ] {
        if given {
            bail!(
                "{flag} applies to --store raft only: masters on TiKV keep no local log and meet in TiKV"
            );
        }
    }
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    let settings = settings(args)?;
    let security = security(args)?;
    let mut config =
        orrery_storage::tikv::TikvConfig::from_url(&args.store, args.id, args.listen.clone())
            .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    config.snapshot_every = args.snapshot_every;
    if args.snapshot_every == 0 {
        bail!("--snapshot-every must be at least 1");
    }
    let http = http_flag(args)?;
    let listen = tokio::net::lookup_host(args.listen.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    actix_rt::System::with_tokio_rt(move || rt).block_on(async {
        let listen = resolve_listen(&args.listen, listen).await?;
        let running = orrery_gateway::server::start_tikv(config, listen, settings, http, security)
            .await
            .map_err(|e| anyhow::anyhow!("master {}: {e}", args.id))?;
        let node = running.node.clone();
        tracing::info!(
            id = args.id,
            addr = %running.addr,
            http = ?running.http_addr.map(|a| a.to_string()),
            store = %node.store(),
            "master replica started"
        );
        let mut last = (None, 0);
        let outcome = loop {
            tokio::select! {
                _ = shutdown_signal() => break Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(e) = node.stopped() {
                        break Err(anyhow::anyhow!("the replica stopped: {e}"));
                    }
                    let l = orrery_storage::EventLog::leader(&node);
                    if (l.leader_id, l.term) != last {
                        last = (l.leader_id, l.term);
                        tracing::info!(term = l.term, leader = ?l.leader_id, is_leader = l.is_leader, "leadership changed");
                    }
                }
            }
        };
        running.shutdown().await;
        outcome
    })
}

fn http_flag(args: &MasterArgs) -> Result<Option<std::net::SocketAddr>> {
    args.http
        .as_deref()
        .map(|h| {
            h.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--http {h:?} is not IP:PORT"))
        })
        .transpose()
}

async fn resolve_listen(
    flag: &str,
    lookup: impl std::future::Future<
        Output = std::io::Result<impl Iterator<Item = std::net::SocketAddr>>,
    >,
) -> Result<std::net::SocketAddr> {
    lookup
        .await
        .with_context(|| format!("--listen {flag:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("--listen {flag:?} resolves to no address"))
}

pub async fn shutdown_signal() {
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
