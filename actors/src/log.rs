//! The log a master runs on: the embedded raft backend (the default) or
//! TiKV (`--store tikv://…`). One enum rather than a type parameter on the
//! `Master` actor: the actor, the gateway and the tools stay one set of
//! types, and each call is a plain match.

use std::path::PathBuf;

use orrery_storage::raft::RaftNode;
use orrery_storage::tikv::TikvLog;
use orrery_storage::{
    AppendError, AppendedRange, EventLog, Fatal, LeaderInfo, LoggedEvent, ReadError, StateAccess,
    Subscription,
};

use crate::cluster_machine::ClusterMachine;

#[derive(Clone, Debug)]
pub enum Log {
    Raft(RaftNode<ClusterMachine>),
    Tikv(TikvLog<ClusterMachine>),
}

impl From<RaftNode<ClusterMachine>> for Log {
    fn from(n: RaftNode<ClusterMachine>) -> Self {
        Log::Raft(n)
    }
}

impl From<TikvLog<ClusterMachine>> for Log {
    fn from(n: TikvLog<ClusterMachine>) -> Self {
        Log::Tikv(n)
    }
}

impl Log {
    /// The latest snapshot: (the last event it includes, the state's bytes).
    pub fn latest_snapshot(&self) -> Option<(u64, Vec<u8>)> {
        match self {
            Log::Raft(n) => n.latest_snapshot(),
            Log::Tikv(t) => t.latest_snapshot(),
        }
    }

    /// Where the log lives on this machine's disk (raft only).
    pub fn data_dir(&self) -> Option<PathBuf> {
        match self {
            Log::Raft(n) => Some(n.data_dir()),
            Log::Tikv(_) => None,
        }
    }

    /// Why this replica's log stopped for good, if it did.
    pub fn stopped(&self) -> Option<String> {
        match self {
            Log::Raft(n) => n
                .raft()
                .metrics()
                .borrow()
                .running_state
                .as_ref()
                .err()
                .map(|e| e.to_string()),
            Log::Tikv(t) => t.fatal().map(|f| f.to_string()),
        }
    }

    /// Why the log's store is not answering right now, if it is not (TiKV:
    /// the last failed call, until one succeeds).
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Log::Raft(_) => None,
            Log::Tikv(t) => t.health(),
        }
    }

    /// Which store this is, for /health and logs.
    pub fn store(&self) -> String {
        match self {
            Log::Raft(_) => "raft".into(),
            Log::Tikv(t) => format!(
                "tikv://{}/{}",
                t.config().pd_endpoints.join(","),
                t.config().prefix
            ),
        }
    }

    /// Stops the replica's log (raft: its server and raft; TiKV: the
    /// background follower, handing the lease back).
    pub async fn shutdown(&self) {
        match self {
            Log::Raft(n) => n.shutdown().await,
            Log::Tikv(t) => t.shutdown().await,
        }
    }
}

impl StateAccess<ClusterMachine> for Log {
    fn with_state<R>(&self, f: impl FnOnce(&ClusterMachine) -> R) -> R {
        match self {
            Log::Raft(n) => n.with_state(f),
            Log::Tikv(t) => t.with_state(f),
        }
    }
}

impl EventLog for Log {
    async fn append(&self, events: Vec<Vec<u8>>) -> Result<AppendedRange, AppendError> {
        match self {
            Log::Raft(n) => n.append(events).await,
            Log::Tikv(t) => t.append(events).await,
        }
    }

    async fn read(&self, from: u64, to: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        match self {
            Log::Raft(n) => n.read(from, to, max).await,
            Log::Tikv(t) => t.read(from, to, max).await,
        }
    }

    fn subscribe(&self, from: u64) -> Subscription {
        match self {
            Log::Raft(n) => n.subscribe(from),
            Log::Tikv(t) => t.subscribe(from),
        }
    }

    fn last_applied(&self) -> u64 {
        match self {
            Log::Raft(n) => n.last_applied(),
            Log::Tikv(t) => t.last_applied(),
        }
    }

    fn leader(&self) -> LeaderInfo {
        match self {
            Log::Raft(n) => n.leader(),
            Log::Tikv(t) => t.leader(),
        }
    }

    async fn snapshot_now(&self) -> Result<u64, Fatal> {
        match self {
            Log::Raft(n) => n.snapshot_now().await,
            Log::Tikv(t) => t.snapshot_now().await,
        }
    }

    async fn digest(&self) -> Vec<u8> {
        match self {
            Log::Raft(n) => n.digest().await,
            Log::Tikv(t) => t.digest().await,
        }
    }
}
