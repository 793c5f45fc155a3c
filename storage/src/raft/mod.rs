//! The `raft` backend (the default): 1, 3 or 5 masters replicate one log.
//!
//! openraft 0.9 (storage-v2) drives consensus; [`log_store`] keeps the raft
//! log on disk with `raft-log`; [`state_machine`] turns committed entries
//! into gap-free events and keeps protobuf snapshots; [`network`] and
//! [`service`] carry raft RPCs over tonic.
//!
//! The quorum is derived from the voters (floor(N/2)+1, by Raft itself),
//! never a separate setting: at bootstrap they are `--peers`; masters join
//! and leave later through [`membership`] (learners first, then joint
//! consensus), after which the log's membership is the truth and `--peers`
//! only says where to reach masters. Start-up refuses what could break
//! safety:
//! - a data dir written by another node id, or holding another cluster's
//!   log (checked against the peers, and on every raft message);
//! - an empty data dir for a node the cluster already counts as a member
//!   with a log beyond its bootstrap (the node was wiped: letting it vote
//!   again could elect two leaders in one term). `--rebuild` is the explicit
//!   way back: with every peer reachable, it records a vote no older than any
//!   peer's term, then catches up by snapshot.
//!
//! A fresh cluster bootstraps itself: when every peer answers and none has a
//! cluster yet, the lowest id creates it and the others adopt its cluster id
//! from the first raft message they receive. A joining master (`join`)
//! never bootstraps: it finds the cluster through `--peers`, refuses an id
//! the cluster already counts as a voter, and adopts the cluster id from the
//! leader's first message once it is added as a learner.

// openraft's error types are large and its traits return them by value.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod membership;
pub mod network;
pub mod offline;
pub mod service;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use orrery_proto::raft as pb;
use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{
    check_batch, AppendError, AppendedRange, EventLog, Fatal, LeaderInfo, LoggedEvent, ReadError,
    StateMachine,
};
use crate::subscription::{EventSource, Subscription};
use log_store::{LogStore, RlTypes};
use network::{NetworkFactory, RAFT_MESSAGE_BYTES_MAX};
use state_machine::{Shared, SmStore};
use types::{EventBatch, Raft};

/// The gRPC metadata key a follower sets to point at the leader.
pub const LEADER_METADATA: &str = "orrery-leader";

/// A cluster whose log holds no more than this many raft entries is still
/// bootstrapping (the initial membership and the first leader's blank).
const BOOTSTRAP_ENTRIES_MAX: u64 = 2;

/// Who may append pre-built events through the `Log` gRPC service. The
/// master's own actors append through [`EventLog::append`], which this does
/// not restrict.
#[derive(Clone, Default)]
pub enum RawAppends {
    /// Refused (the default for a master: events come from `decide`).
    #[default]
    Refused,
    /// Accepted as they are (benchmarks, storage tests).
    Accepted,
    /// Accepted when the check passes.
    Checked(AppendCheck),
}

/// Checks one pre-built event; `Err` says why it is refused.
pub type AppendCheck = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for RawAppends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RawAppends::Refused => "Refused",
            RawAppends::Accepted => "Accepted",
            RawAppends::Checked(_) => "Checked",
        })
    }
}

/// How a master replica runs its part of the log.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub node_id: u64,
    /// Where this replica listens for raft and log RPCs.
    pub listen: SocketAddr,
    /// Every replica's id and address, this one included.
    pub peers: BTreeMap<u64, String>,
    pub data_dir: PathBuf,
    /// The minimum election timeout; the maximum is twice it.
    pub election_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// Take a snapshot every this many raft entries.
    pub snapshot_every_entries: u64,
    /// Raft entries kept after a snapshot (so slow followers catch up from
    /// the log rather than a snapshot).
    pub keep_after_snapshot_entries: u64,
    /// Start from an empty data dir as an existing member (see module doc).
    pub rebuild: bool,
    /// Join a running group as a new master (`orrery master join`): `peers`
    /// lists masters to reach it by, not this one; the replica waits, empty,
    /// for the leader to add it as a learner (see [`membership`]).
    pub join: bool,
    pub raw_appends: RawAppends,
    /// This master's fault-domain region ("" for none). Start-up refuses a
    /// peer that answers with another: a group shares one region.
    pub region: String,
    /// Mutual TLS between masters (and for the services sharing the
    /// address); None runs plain TCP (`--insecure`).
    pub tls: Option<std::sync::Arc<crate::security::Tls>>,
    /// The runtime raft, its replication and the committer run on; None
    /// for the caller's. `orrery master` gives them a thread of their own,
    /// apart from the one serving the APIs: under a flood that one always
    /// has thousands of requests ready to run, and each step of a commit
    /// (the committer, raft's core, the apply) would wait behind all of
    /// them (`orrery bench overload`, BENCHMARKS.md).
    pub core: Option<tokio::runtime::Handle>,
}

impl RaftConfig {
    /// A config with Orrery's defaults.
    pub fn new(
        node_id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, String>,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            node_id,
            listen,
            peers,
            data_dir,
            election_timeout_ms: 1_000,
            heartbeat_ms: 200,
            snapshot_every_entries: 10_000,
            keep_after_snapshot_entries: 1_000,
            rebuild: false,
            join: false,
            raw_appends: RawAppends::Refused,
            region: String::new(),
            tls: None,
            core: None,
        }
    }

    /// Parses `--peers 1=127.0.0.1:7001,2=127.0.0.1:7002`.
    pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
        let mut peers = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("`{id}` in `{part}` is not a node id (a positive integer)"))?;
            if id == 0 {
                return Err(format!("node id 0 in `{part}`: ids start at 1"));
            }
            let addr = addr.trim();
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| format!("`{addr}` in `{part}` has no :PORT"))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!(
                    "`{addr}` in `{part}` is not HOST:PORT with a port from 1 to 65535"
                ));
            }
            if peers.insert(id, addr.to_owned()).is_some() {
                return Err(format!("node {id} is listed twice"));
            }
        }
        if peers.is_empty() {
            return Err("no peers given".into());
        }
        Ok(peers)
    }

    pub fn validate(&self) -> Result<(), Fatal> {
        let refuse = |m: String| Err(Fatal::Refused(m));
        if self.join {
            if self.peers.contains_key(&self.node_id) {
                return refuse(format!(
                    "--id {} is in --peers: a joining master lists the masters already in the \
                     group, not itself",
                    self.node_id
                ));
            }
            if self.rebuild {
                return refuse("--rebuild is for a member that lost its data, not for join".into());
            }
        } else if !self.peers.contains_key(&self.node_id) {
            return refuse(format!(
                "--id {} is not in --peers ({})",
                self.node_id,
                self.peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let addrs: BTreeSet<&String> = self.peers.values().collect();
        if addrs.len() != self.peers.len() {
            return refuse("two peers share one address in --peers".into());
        }
        if self.election_timeout_ms < 2 * self.heartbeat_ms || self.heartbeat_ms == 0 {
            return refuse(format!(
                "the election timeout ({} ms) must be at least twice the heartbeat ({} ms)",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        Ok(())
    }

    /// A new cluster is bootstrapped with 1, 3 or 5 masters; a running
    /// group may pass through other sizes while it grows or shrinks.
    fn check_bootstrap_size(&self) -> Result<(), Fatal> {
        if ![1, 3, 5].contains(&self.peers.len()) {
            return Err(Fatal::Refused(format!(
                "--peers lists {} masters; a cluster has 1, 3 or 5 (an even count adds no fault tolerance)",
                self.peers.len()
            )));
        }
        Ok(())
    }

    fn openraft(&self) -> Result<openraft::Config, Fatal> {
        let c = openraft::Config {
            cluster_name: "orrery".into(),
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            heartbeat_interval: self.heartbeat_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries.max(1)),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot_entries,
            max_payload_entries: 2_000,
            snapshot_max_chunk_size: 4 << 20,
            ..Default::default()
        };
        c.validate()
            .map_err(|e| Fatal::Refused(format!("raft settings: {e}")))
    }

    fn others(&self) -> impl Iterator<Item = (u64, &String)> {
        self.peers
            .iter()
            .filter(|(id, _)| **id != self.node_id)
            .map(|(id, a)| (*id, a))
    }
}

pub(crate) struct Inner<S: StateMachine> {
    pub(crate) raft: Raft,
    pub(crate) shared: Arc<Shared<S>>,
    log: LogStore,
    config: RaftConfig,
    /// A fresh replica may take the cluster id of the first raft message
    /// only once the bootstrap checks said it is fresh (not wiped).
    adoption_allowed: AtomicBool,
    adopt_lock: tokio::sync::Mutex<()>,
    /// One change of the group at a time (see [`membership`]).
    pub(crate) change_slot: Arc<tokio::sync::Mutex<()>>,
}

/// A member's address: from the group's configuration in `m`, else from
/// `--peers` (a replica that has not heard the membership yet).
pub(crate) fn member_addr(
    m: &openraft::RaftMetrics<u64, BasicNode>,
    peers: &BTreeMap<u64, String>,
    id: u64,
) -> Option<String> {
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())
        .or_else(|| peers.get(&id).cloned())
}

fn save_identity<'a>(
    log: &'a LogStore,
    cluster_id: &str,
    node_id: u64,
) -> impl std::future::Future<Output = std::io::Result<()>> + 'a {
    let bytes = pb::NodeIdentity {
        cluster_id: cluster_id.to_owned(),
        node_id,
    }
    .encode_to_vec();
    log.write_durably(move |l| {
        use raft_log::api::raft_log_writer::RaftLogWriter;
        l.save_user_data(Some(bytes)).map(|_| ())
    })
}

impl<S: StateMachine> Inner<S> {
    pub(crate) async fn check_or_adopt_cluster(&self, theirs: &str) -> Result<(), tonic::Status> {
        let ours = self.shared.cluster_id();
        if !ours.is_empty() {
            if theirs == ours {
                return Ok(());
            }
            return Err(tonic::Status::failed_precondition(format!(
                "master {} belongs to cluster {ours}; this message comes from cluster {theirs:?}",
                self.config.node_id
            )));
        }
        if theirs.is_empty() {
            return Err(tonic::Status::failed_precondition(
                "a raft message without a cluster id",
            ));
        }
        if !self.adoption_allowed.load(Ordering::Acquire) {
            return Err(tonic::Status::unavailable(format!(
                "master {} is still checking its empty data dir against its peers",
                self.config.node_id
            )));
        }
        let _guard = self.adopt_lock.lock().await;
        if !self.shared.cluster_id().is_empty() {
            return Box::pin(self.check_or_adopt_cluster(theirs)).await;
        }
        if self.log.lock().log_state().last().is_some() {
            return Err(tonic::Status::failed_precondition(
                "a log without a cluster id; refusing to adopt one",
            ));
        }
        save_identity(&self.log, theirs, self.config.node_id)
            .await
            .map_err(|e| tonic::Status::internal(format!("saving the cluster id: {e}")))?;
        *self
            .shared
            .cluster_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = theirs.to_owned();
        tracing::info!(
            cluster_id = theirs,
            node_id = self.config.node_id,
            "joined the cluster"
        );
        Ok(())
    }

    pub(crate) fn status(&self) -> pb::StatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let (last_event_index, app_digest, last_applied) = {
            let core = self.shared.lock();
            (core.last_event_index, core.app.digest(), core.last_applied)
        };
        let log_state = self.log.lock().log_state().clone();
        pb::StatusResponse {
            node_id: self.config.node_id,
            cluster_id: self.shared.cluster_id(),
            vote: Some(types::vote_to_pb(&m.vote)),
            last_log_id: log_state
                .last()
                .map(|l| service::log_id_pb(&log_store::from_rl(l))),
            committed: log_state
                .committed()
                .map(|l| service::log_id_pb(&log_store::from_rl(l))),
            last_applied: last_applied.as_ref().map(service::log_id_pb),
            leader_id: m.current_leader,
            leader_addr: m
                .current_leader
                .and_then(|id| member_addr(&m, &self.config.peers, id))
                .unwrap_or_default(),
            membership: Some(service::membership_pb(m.membership_config.membership())),
            last_event_index,
            app_digest,
            snapshot_last_log_id: state_machine::snapshot_last_log_id(&self.shared),
            purged: log_state
                .purged()
                .map(|l| service::log_id_pb(&log_store::from_rl(l))),
            ready_to_join: self.adoption_allowed.load(Ordering::Acquire),
            region: self.config.region.clone(),
            membership_changed: m.membership_config.log_id().is_some_and(|l| l.index > 0),
        }
    }
}

struct Handles {
    server: Mutex<Option<JoinHandle<()>>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// One caller's append waiting for the committer.
struct Pending {
    events: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Committed, AppendError>>,
}

/// A caller's share of a committed raft entry: its events' indexes and the
/// term they were committed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub range: AppendedRange,
    pub term: u64,
}

/// Times the committer yields to gather company for a batch (see
/// [`committer`]); each costs one pass of the runtime's ready tasks.
const GATHER_YIELDS: usize = 8;

/// Appends queued for the committer at most (the mailbox bound): callers
/// beyond it wait, which is the back-pressure.
const COMMIT_QUEUE_MAX: usize = 10_000;

/// Group commit. openraft 0.9 waits for each log flush before it takes the
/// next write, so concurrent `client_write`s would cost one fsync each. The
/// committer drains every append queued while the previous write was in
/// flight into one raft entry (one fsync, one round of replication), then
/// hands each caller its own contiguous range of the entry's events.
///
/// When the previous round served more than one caller, the committer also
/// lets the runtime run its ready tasks a few times ([`GATHER_YIELDS`])
/// before it cuts the batch: the requests that arrived while the last write
/// was in flight are mostly still being decoded by tasks ready to run, and
/// gathering them makes fewer, larger rounds (`orrery bench log`, 1 replica,
/// 64 single-event writers: ~17,000 → ~23,000 events/s, BENCHMARKS.md). A
/// lone writer never waits: its previous round had no company. (On a
/// runtime of its own, [`RaftConfig::core`], the yields gather only what
/// that runtime has ready; in `orrery master` the master is the usual
/// one appender, the log service's raw appends the exception, so they
/// seldom happen there.)
async fn committer(raft: Raft, mut rx: tokio::sync::mpsc::Receiver<Pending>) {
    let mut last_round = 0usize;
    while let Some(first) = rx.recv().await {
        let mut count = first.events.len();
        let mut bytes: usize = first.events.iter().map(Vec::len).sum();
        let mut batch = vec![first];
        let room = |count: usize, bytes: usize| {
            count < crate::api::APPEND_EVENTS_MAX && bytes < crate::api::APPEND_BYTES_MAX
        };
        let mut yields = 0;
        loop {
            while room(count, bytes) {
                match rx.try_recv() {
                    Ok(p) => {
                        count += p.events.len();
                        bytes += p.events.iter().map(Vec::len).sum::<usize>();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            if !room(count, bytes) || last_round < 2 || yields == GATHER_YIELDS {
                break;
            }
            yields += 1;
            tokio::task::yield_now().await;
        }
        last_round = batch.len();
        let mut events = Vec::with_capacity(count);
        let mut sizes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            sizes.push(p.events.len() as u64);
            events.extend(p.events);
            replies.push(p.reply);
        }
        let result = match raft.client_write(EventBatch(events)).await {
            Ok(resp) => Ok((resp.data.first, resp.data.term)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(AppendError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(AppendError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(AppendError::Fatal(Fatal::Refused(format!(
                "raft stopped: {e}"
            )))),
        };
        let mut next = result.as_ref().map_or(0, |(first, _)| *first);
        for (reply, n) in replies.into_iter().zip(sizes) {
            let r = match &result {
                Ok((_, term)) => Ok(Committed {
                    range: next..=next + n - 1,
                    term: *term,
                }),
                Err(e) => Err(e.clone()),
            };
            next += n;
            // A caller that gave up waiting needs no answer.
            let _ = reply.send(r);
        }
    }
}

/// A running master replica's share of the log. Cheap to clone.
pub struct RaftNode<S: StateMachine> {
    inner: Arc<Inner<S>>,
    handles: Arc<Handles>,
    local_addr: SocketAddr,
    commits: tokio::sync::mpsc::Sender<Pending>,
}

impl<S: StateMachine> Clone for RaftNode<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            handles: self.handles.clone(),
            local_addr: self.local_addr,
            commits: self.commits.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for RaftNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("node_id", &self.inner.config.node_id)
            .field("addr", &self.local_addr)
            .finish()
    }
}

/// Sizes of the raft-log chunk files, to name any that opening truncated.
fn chunk_sizes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "wal") {
                if let Ok(m) = e.metadata() {
                    out.insert(p, m.len());
                }
            }
        }
    }
    out
}

/// How long opening waits for the log's directory lock: a replica of this
/// process that was just shut down may still be releasing it.
const LOCK_WAIT: Duration = Duration::from_secs(3);

fn corrupt_log(dir: &Path, e: &std::io::Error) -> Fatal {
    Fatal::Corrupt {
        what: "raft log",
        location: dir.display().to_string(),
        detail: format!(
            "{e}. The replica stops rather than skip a record; rebuild it from its peers \
             with `orrery master ... --rebuild` after moving the data dir aside"
        ),
    }
}

pub(crate) async fn open_log(dir: &Path) -> Result<raft_log::RaftLog<RlTypes>, Fatal> {
    std::fs::create_dir_all(dir).map_err(|e| Fatal::Io {
        what: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    let before = chunk_sizes(dir);
    let mut config = raft_log::Config::new(dir.display().to_string());
    // raft-log's flush worker would wait up to 1 ms for more writes to share
    // an fsync. openraft 0.9 waits for each flush before it issues the next,
    // so nothing arrives in that window: it is pure latency. Batching happens
    // above, in the committer (group commit).
    config.wal.flush_batch_wait = Some(Duration::ZERO);
    let config = Arc::new(config);
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let log = loop {
        match raft_log::RaftLog::<RlTypes>::open(config.clone()) {
            Ok(log) => break log,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("already locked") =>
            {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Fatal::Refused(format!(
                        "the raft log in {} is locked by another running master; \
                         two masters cannot share a data dir",
                        dir.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(corrupt_log(dir, &e)),
        }
    };
    for (path, after) in chunk_sizes(dir) {
        if let Some(&was) = before.get(&path) {
            if after < was {
                tracing::warn!(
                    file = %path.display(),
                    offset = after,
                    dropped_bytes = was - after,
                    "truncated a torn record at the tail of the raft log (a crash mid-write); \
                     nothing acknowledged was in it"
                );
            }
        }
    }
    Ok(log)
}

async fn peer_status(
    addr: &str,
    tls: Option<&crate::security::Tls>,
    wait: Duration,
) -> Result<pb::StatusResponse, String> {
    let mut c = network::client(addr, tls)?;
    tokio::time::timeout(wait, c.status(pb::StatusRequest {}))
        .await
        .map_err(|_| format!("{addr} did not answer in {wait:?}"))?
        .map(|r| r.into_inner())
        .map_err(|s| format!("{addr}: {}", s.message()))
}

/// Refuses `--peers` that disagree with the membership a peer reports (a
/// typo in one master's flags would otherwise point it at the wrong
/// replicas). An empty membership (a peer not bootstrapped yet) says nothing.
///
/// Before the group's membership first changes, the two must be equal.
/// After (masters joined or left, see [`membership`]), the log's membership
/// is the truth and `--peers` only says where to reach masters, so it may
/// be out of date; an id listed at another address is still refused.
fn check_peers_match(
    config: &RaftConfig,
    peer_id: u64,
    st: &pb::StatusResponse,
) -> Result<(), Fatal> {
    let Some(m) = st.membership.as_ref().filter(|m| !m.nodes.is_empty()) else {
        return Ok(());
    };
    let theirs: BTreeMap<u64, String> = m
        .nodes
        .iter()
        .map(|n| (n.node_id, n.addr.clone()))
        .collect();
    let show = |p: &BTreeMap<u64, String>| {
        p.iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let refuse = || {
        Err(Fatal::Refused(format!(
            "--peers {} disagrees with the cluster's membership {} (per master {peer_id}); \
             every master must be given the same --peers",
            show(&config.peers),
            show(&theirs)
        )))
    };
    let changed = st.membership_changed;
    if !changed && !config.join && theirs != config.peers {
        return refuse();
    }
    let moved = config
        .peers
        .iter()
        .any(|(id, a)| theirs.get(id).is_some_and(|t| t != a));
    if moved {
        return refuse();
    }
    Ok(())
}

/// Refuses a peer in another fault-domain region (Mesos: the masters of a
/// group share a region; agents and frameworks are local or remote to it).
fn check_region(config: &RaftConfig, peer_id: u64, st: &pb::StatusResponse) -> Result<(), Fatal> {
    if st.region == config.region {
        return Ok(());
    }
    let show = |r: &str| {
        if r.is_empty() {
            "no --domain".to_owned()
        } else {
            format!("region {r:?}")
        }
    };
    Err(Fatal::Refused(format!(
        "this master has {} but master {peer_id} has {}; every master of a group must share \
         one region (give each the same --domain region)",
        show(&config.region),
        show(&st.region)
    )))
}

fn member_of(st: &pb::StatusResponse, node_id: u64) -> bool {
    st.membership.as_ref().is_some_and(|m| {
        m.configs.iter().any(|c| c.voters.contains(&node_id))
            || m.nodes.iter().any(|n| n.node_id == node_id)
    })
}

impl<S: StateMachine> RaftNode<S> {
    /// Appends through the committer (group commit) and answers with the
    /// events' indexes and the term of the raft entry that holds them.
    pub async fn commit(&self, events: Vec<Vec<u8>>) -> Result<Committed, AppendError> {
        check_batch(&events)?;
        let (reply, rx) = oneshot::channel();
        self.commits
            .send(Pending { events, reply })
            .await
            .map_err(|_| AppendError::Unavailable("the committer stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Unavailable("the committer stopped".into()))?
    }

    /// Opens the data dir, checks it against the peers, and starts serving.
    pub async fn start(config: RaftConfig, app: S) -> Result<Self, Fatal> {
        Self::start_with_services(config, app, |_, routes| routes).await
    }

    /// As [`RaftNode::start`], and serves more gRPC services on the same
    /// address: `services` gets the node (for the services to append
    /// through) and the raft routes, and returns them with its own added.
    /// The master serves its scheduler, agent and operator APIs this way,
    /// so a replica's one address is both its raft peer address and the
    /// address `orrery-leader` redirects name.
    pub async fn start_with_services(
        config: RaftConfig,
        app: S,
        services: impl FnOnce(&RaftNode<S>, tonic::service::Routes) -> tonic::service::Routes,
    ) -> Result<Self, Fatal> {
        config.validate()?;
        let raft_dir = config.data_dir.join("raft");
        let snap_dir = config.data_dir.join("snapshots");
        if config.rebuild {
            Self::prepare_rebuild(&config, &raft_dir, &snap_dir).await?;
        }
        let log = LogStore::new(open_log(&raft_dir).await?);
        let identity = {
            let l = log.lock();
            match l.log_state().user_data.as_ref() {
                Some(bytes) => {
                    Some(
                        pb::NodeIdentity::decode(&bytes[..]).map_err(|e| Fatal::Corrupt {
                            what: "node identity",
                            location: raft_dir.display().to_string(),
                            detail: e.to_string(),
                        })?,
                    )
                }
                None => None,
            }
        };
        if let Some(id) = &identity {
            if id.node_id != config.node_id {
                return Err(Fatal::Refused(format!(
                    "data dir {} belongs to master {}, not --id {}",
                    config.data_dir.display(),
                    id.node_id,
                    config.node_id
                )));
            }
        } else if log.lock().log_state().last().is_some() {
            return Err(Fatal::Corrupt {
                what: "data dir",
                location: config.data_dir.display().to_string(),
                detail: "a raft log without a node identity".into(),
            });
        }
        if identity.is_none() && !config.join {
            config.check_bootstrap_size()?;
        }
        let cluster_id = identity
            .as_ref()
            .map(|i| i.cluster_id.clone())
            .unwrap_or_default();
        let shared = Shared::open(app, log.clone(), snap_dir, cluster_id.clone())?;
        let network = NetworkFactory {
            cluster_id: shared.cluster_id.clone(),
            tls: config.tls.clone(),
        };
        let core = config
            .core
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        // Raft spawns its tasks where it is made: on `core`.
        let raft = core
            .spawn(Raft::new(
                config.node_id,
                Arc::new(config.openraft()?),
                network,
                log.clone(),
                SmStore {
                    shared: shared.clone(),
                },
            ))
            .await
            .map_err(|e| Fatal::Refused(format!("starting raft: {e}")))?
            .map_err(|e| Fatal::Refused(format!("starting raft: {e}")))?;
        let inner = Arc::new(Inner {
            raft,
            shared,
            log,
            config: config.clone(),
            adoption_allowed: AtomicBool::new(false),
            adopt_lock: tokio::sync::Mutex::new(()),
            change_slot: Arc::new(tokio::sync::Mutex::new(())),
        });

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Fatal::Io {
                what: format!("listening on {}", config.listen),
                detail: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| Fatal::Io {
            what: "the listening socket".into(),
            detail: e.to_string(),
        })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (commits, commit_rx) = tokio::sync::mpsc::channel(COMMIT_QUEUE_MAX);
        core.spawn(committer(inner.raft.clone(), commit_rx));
        let node = RaftNode {
            commits,
            inner: inner.clone(),
            handles: Arc::new(Handles {
                server: Mutex::new(None),
                stop: Mutex::new(Some(stop_tx)),
            }),
            local_addr,
        };
        let raft_svc = pb::raft_server::RaftServer::new(service::RaftService {
            inner: inner.clone(),
        })
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let log_svc = pb::log_server::LogServer::new(service::LogService { node: node.clone() })
            .max_decoding_message_size(crate::api::APPEND_BYTES_MAX + (1 << 20));
        let routes = services(
            &node,
            tonic::service::Routes::new(raft_svc).add_service(log_svc),
        );
        let server = match crate::serve::spawn_routes(
            listener,
            routes,
            stop_rx,
            "raft",
            config.tls.as_deref(),
        ) {
            Ok(s) => s,
            Err(e) => {
                node.shutdown().await;
                return Err(e);
            }
        };
        *node
            .handles
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(server);

        if let Err(e) = node.bootstrap(identity.is_some()).await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    /// `--rebuild`: every peer must answer and agree on one cluster; this
    /// replica then starts empty with a vote no older than any peer's term.
    async fn prepare_rebuild(
        config: &RaftConfig,
        raft_dir: &Path,
        snap_dir: &Path,
    ) -> Result<(), Fatal> {
        let mut cluster: Option<String> = None;
        let mut max_term = 0;
        for (id, addr) in config.others() {
            let st = peer_status(addr, config.tls.as_deref(), Duration::from_secs(5))
                .await
                .map_err(|e| {
                    Fatal::Refused(format!(
                        "--rebuild needs every peer to answer; master {id} does not: {e}"
                    ))
                })?;
            if st.cluster_id.is_empty() {
                return Err(Fatal::Refused(format!(
                    "--rebuild: master {id} has no cluster to rebuild from"
                )));
            }
            if cluster.as_ref().is_some_and(|c| *c != st.cluster_id) {
                return Err(Fatal::Refused(
                    "--rebuild: the peers belong to different clusters".into(),
                ));
            }
            max_term = max_term
                .max(st.vote.as_ref().map_or(0, |v| v.term))
                .max(st.last_log_id.as_ref().map_or(0, |l| l.term));
            cluster = Some(st.cluster_id);
        }
        let cluster = cluster
            .ok_or_else(|| Fatal::Refused("--rebuild needs peers to rebuild from".into()))?;
        for dir in [raft_dir, snap_dir] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| Fatal::Io {
                    what: dir.display().to_string(),
                    detail: e.to_string(),
                })?;
            }
        }
        let log = LogStore::new(open_log(raft_dir).await?);
        save_identity(&log, &cluster, config.node_id)
            .await
            .map_err(|e| Fatal::Io {
                what: "saving the node identity".into(),
                detail: e.to_string(),
            })?;
        // Never vote again in a term this replica may have voted in before
        // its data was lost: record a vote for itself in the newest term any
        // peer has seen.
        log.write_durably(|l| {
            use raft_log::api::raft_log_writer::RaftLogWriter;
            l.save_vote((max_term, (config.node_id, false))).map(|_| ())
        })
        .await
        .map_err(|e| Fatal::Io {
            what: "saving the fencing vote".into(),
            detail: e.to_string(),
        })?;
        tracing::warn!(cluster_id = %cluster, term = max_term, "rebuilding this replica from its peers");
        Ok(())
    }

    async fn bootstrap(&self, has_identity: bool) -> Result<(), Fatal> {
        let config = &self.inner.config;
        let ours = self.inner.shared.cluster_id();
        if has_identity {
            // A peer of another cluster means this data dir (or --peers) is
            // wrong. Peers are asked in parallel, for up to 3 s in all; ones
            // that do not answer (a whole group restarting) cannot be checked
            // and do not hold the start-up back.
            let asks = config.others().map(|(id, addr)| {
                let addr = addr.clone();
                let tls = config.tls.clone();
                async move {
                    (
                        id,
                        addr.clone(),
                        peer_status(&addr, tls.as_deref(), Duration::from_secs(3)).await,
                    )
                }
            });
            for (id, addr, answer) in futures::future::join_all(asks).await {
                if let Ok(st) = answer {
                    check_region(config, id, &st)?;
                    if st.cluster_id == ours {
                        check_peers_match(config, id, &st)?;
                    }
                    if !st.cluster_id.is_empty() && st.cluster_id != ours {
                        return Err(Fatal::Refused(format!(
                            "data dir {} belongs to cluster {ours}, but master {id} at {addr} is in cluster {}",
                            config.data_dir.display(),
                            st.cluster_id
                        )));
                    }
                }
            }
            self.inner.adoption_allowed.store(true, Ordering::Release);
            return Ok(());
        }
        if config.join {
            return self.await_join().await;
        }
        let mut last_report = std::time::Instant::now();
        loop {
            if !self.inner.shared.cluster_id().is_empty() {
                return Ok(());
            }
            let mut unreachable = Vec::new();
            let mut existing = None;
            let mut all_ready = true;
            for (id, addr) in config.others() {
                let answer =
                    peer_status(addr, config.tls.as_deref(), Duration::from_millis(500)).await;
                if let Ok(st) = &answer {
                    check_region(config, id, st)?;
                }
                match answer {
                    Ok(st) if !st.cluster_id.is_empty() => existing = Some((id, st)),
                    Ok(st) => all_ready &= st.ready_to_join,
                    Err(e) => unreachable.push(format!("master {id} ({e})")),
                }
            }
            // A raft message may have made this replica join while it asked.
            if !self.inner.shared.cluster_id().is_empty() {
                return Ok(());
            }
            // A peer that joined a moment ago may not have the membership
            // yet: it tells nothing about who is a member — but it does say
            // a cluster exists, so this replica must not create another.
            let saw_cluster = existing.is_some();
            let existing = existing
                .filter(|(_, st)| st.membership.as_ref().is_some_and(|m| !m.nodes.is_empty()));
            if let Some((id, st)) = existing {
                if !member_of(&st, config.node_id) {
                    return Err(Fatal::Refused(format!(
                        "cluster {} (per master {id}) does not count master {} as a member; \
                         a new master joins a running cluster with `orrery master join`",
                        st.cluster_id, config.node_id
                    )));
                }
                check_peers_match(config, id, &st)?;
                let applied = st.last_applied.as_ref().map_or(0, |l| l.index);
                // Judged only on first sight: once this replica has seen the
                // cluster bootstrapping (and may adopt its id), a log that
                // grew meanwhile is the cluster moving on, not data lost.
                let judged_fresh = self.inner.adoption_allowed.load(Ordering::Acquire);
                if member_of(&st, config.node_id)
                    && applied > BOOTSTRAP_ENTRIES_MAX
                    && !judged_fresh
                {
                    return Err(Fatal::Refused(format!(
                        "master {}'s data dir {} is empty, but cluster {} (per master {id}) already counts it \
                         as a member and has a log up to entry {applied}: its data was lost. Starting it empty \
                         could let it vote twice in one term. Start it with --rebuild to rejoin safely.",
                        config.node_id,
                        config.data_dir.display(),
                        st.cluster_id
                    )));
                }
                // A cluster bootstrapping right now: take its id from the
                // first raft message.
                self.inner.adoption_allowed.store(true, Ordering::Release);
            } else if saw_cluster {
                // Wait for that cluster's membership (or its first message).
            } else if unreachable.is_empty() {
                self.inner.adoption_allowed.store(true, Ordering::Release);
                // The lowest id creates the cluster once every peer has
                // judged itself fresh too, so no cluster exists before each
                // member has made that judgement (see `ready_to_join`).
                if all_ready
                    && config.node_id
                        == *config
                            .peers
                            .keys()
                            .next()
                            .expect("validated: peers is not empty")
                {
                    return self.initialize().await;
                }
            } else if last_report.elapsed() > Duration::from_secs(5) {
                tracing::info!(
                    waiting_for = %unreachable.join(", "),
                    "empty data dir: waiting for every peer to answer before bootstrapping a cluster"
                );
                last_report = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `orrery master join`, empty data dir: finds the running cluster
    /// through `--peers`, refuses an id it already counts (a wiped member)
    /// and then lets the first raft message from its leader make this
    /// replica a learner of it. Returns once a peer has answered; adding it
    /// is the caller's request to the leader.
    async fn await_join(&self) -> Result<(), Fatal> {
        let config = &self.inner.config;
        let mut last_report = std::time::Instant::now();
        loop {
            let mut unreachable = Vec::new();
            for (id, addr) in config.others() {
                match peer_status(addr, config.tls.as_deref(), Duration::from_millis(500)).await {
                    Ok(st) if !st.cluster_id.is_empty() => {
                        check_region(config, id, &st)?;
                        check_peers_match(config, id, &st)?;
                        // A learner never voted: an empty data dir is safe
                        // for it (it restarted before its first message).
                        let learner_here = st.membership.as_ref().is_some_and(|m| {
                            !m.configs.iter().any(|c| c.voters.contains(&config.node_id))
                                && m.nodes.iter().any(|n| {
                                    n.node_id == config.node_id
                                        && config.listen.to_string() == n.addr
                                })
                        });
                        if member_of(&st, config.node_id) && !learner_here {
                            return Err(Fatal::Refused(format!(
                                "cluster {} (per master {id}) already counts master {} as a \
                                 member and this data dir is empty: its data was lost. Start it \
                                 with --rebuild to rejoin with its id, or remove it (`orrery \
                                 masters remove {}`) and join a master with a new id",
                                st.cluster_id, config.node_id, config.node_id
                            )));
                        }
                        self.inner.adoption_allowed.store(true, Ordering::Release);
                        tracing::info!(cluster_id = %st.cluster_id, via = id, "found the cluster to join");
                        return Ok(());
                    }
                    Ok(_) => unreachable.push(format!("master {id} (no cluster yet)")),
                    Err(e) => unreachable.push(format!("master {id} ({e})")),
                }
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                tracing::info!(
                    waiting_for = %unreachable.join(", "),
                    "joining: waiting for a master of the running cluster to answer"
                );
                last_report = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn initialize(&self) -> Result<(), Fatal> {
        let config = &self.inner.config;
        let cluster_id = uuid::Uuid::new_v4().to_string();
        save_identity(&self.inner.log, &cluster_id, config.node_id)
            .await
            .map_err(|e| Fatal::Io {
                what: "saving the node identity".into(),
                detail: e.to_string(),
            })?;
        *self
            .inner
            .shared
            .cluster_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = cluster_id.clone();
        let members: BTreeMap<u64, BasicNode> = config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| Fatal::Refused(format!("bootstrapping the cluster: {e}")))?;
        tracing::info!(%cluster_id, masters = config.peers.len(), "bootstrapped a new cluster");
        Ok(())
    }

    /// The address this replica actually listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The latest snapshot: (the last event it includes, the application's
    /// state). Readers of compacted history start from it.
    pub fn latest_snapshot(&self) -> Option<(u64, Vec<u8>)> {
        self.inner.shared.latest_snapshot()
    }

    /// Where this replica keeps its log and snapshots.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.inner.config.data_dir.clone()
    }

    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn cluster_id(&self) -> String {
        self.inner.shared.cluster_id()
    }

    pub fn status(&self) -> pb::StatusResponse {
        self.inner.status()
    }

    pub(crate) fn raw_appends(&self) -> &RawAppends {
        &self.inner.config.raw_appends
    }

    /// Waits until this replica knows a leader (any), up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, Fatal> {
        let mut rx = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .map_err(|_| Fatal::Refused(format!("no leader within {timeout:?}")))?
                .map_err(|_| Fatal::Refused("raft stopped".into()))?;
        }
    }

    /// Stops serving and stops raft. Idempotent.
    pub async fn shutdown(&self) {
        if let Some(stop) = self
            .handles
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        let server = self
            .handles
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(server) = server {
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        }
        let _ = self.inner.raft.shutdown().await;
    }
}

impl<S: StateMachine> crate::api::StateAccess<S> for RaftNode<S> {
    fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.inner.shared.lock().app)
    }
}

impl<S: StateMachine> EventLog for RaftNode<S> {
    async fn append(&self, events: Vec<Vec<u8>>) -> Result<AppendedRange, AppendError> {
        self.commit(events).await.map(|c| c.range)
    }

    async fn read(&self, from: u64, to: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        let mut events = self.inner.shared.read_from(from.max(1), max)?;
        events.retain(|e| e.index < to);
        Ok(events)
    }

    fn subscribe(&self, from: u64) -> Subscription {
        Subscription::new(self.inner.shared.clone(), from)
    }

    fn last_applied(&self) -> u64 {
        *self.inner.shared.applied_rx().borrow()
    }

    fn leader(&self) -> LeaderInfo {
        let m = self.inner.raft.metrics().borrow().clone();
        LeaderInfo {
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr: m
                .current_leader
                .and_then(|id| member_addr(&m, &self.inner.config.peers, id)),
            is_leader: m.state == ServerState::Leader,
            ready: m.state == ServerState::Leader
                && m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term),
        }
    }

    async fn snapshot_now(&self) -> Result<u64, Fatal> {
        let target = self.inner.shared.lock().last_applied;
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Fatal::Refused(format!("snapshot: {e}")))?;
        let mut rx = self.inner.raft.metrics();
        loop {
            let snap = rx.borrow_and_update().snapshot;
            if snap.map(|s| s.index) >= target.map(|t| t.index) {
                break;
            }
            tokio::time::timeout(Duration::from_secs(30), rx.changed())
                .await
                .map_err(|_| Fatal::Refused("the snapshot did not finish in 30 s".into()))?
                .map_err(|_| Fatal::Refused("raft stopped".into()))?;
        }
        Ok(self.inner.shared.lock().last_event_index)
    }

    async fn digest(&self) -> Vec<u8> {
        self.inner.shared.lock().app.digest()
    }
}
