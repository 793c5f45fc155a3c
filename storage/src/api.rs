//! The event log's API, the same for every backend.
//!
//! Domain-agnostic: a log stores opaque event bytes at gap-free indexes
//! (1, 2, 3, ...) and feeds them, in order, to a [`StateMachine`]. It never
//! interprets an event. Errors are split by who reacts: [`AppendError`]
//! (forward to the leader, retry, or give up) and [`Fatal`] (the replica
//! must stop and say why).

use std::future::Future;
use std::ops::RangeInclusive;

use thiserror::Error;

/// One committed event as the log hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Gap-free, from 1.
    pub index: u64,
    /// The leader term under which it was committed.
    pub term: u64,
    pub payload: Vec<u8>,
}

/// What a backend applies committed events to (the master: the cluster
/// state). Called from one task at a time, in index order.
pub trait StateMachine: Send + 'static {
    /// Applies one committed event. An error means the log holds something
    /// this replica cannot apply: fatal, the replica stops.
    fn apply(&mut self, event: &LoggedEvent) -> Result<(), String>;
    /// The whole state, encoded (the master: a protobuf snapshot).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// A fingerprint of the state, equal on replicas that applied the same
    /// prefix (the master: the state digest).
    fn digest(&self) -> Vec<u8>;
}

/// Who leads, as far as this replica knows.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaderInfo {
    pub term: u64,
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    /// Whether this replica is the leader.
    pub is_leader: bool,
    /// A leader that has applied an entry of its own term: everything
    /// committed before it took over is applied here, so state read now is
    /// complete (Raft's "leader completeness", observed locally).
    pub ready: bool,
}

/// Why an append was not acknowledged. Nothing unacknowledged may be
/// assumed committed — nor assumed absent (after `Unavailable` it may still
/// commit; callers make appends idempotent or re-read).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AppendError {
    #[error("not the leader; the leader is {}", leader_addr.as_deref().unwrap_or("unknown"))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    #[error("a batch of {count} events / {bytes} bytes exceeds the limit ({limit})")]
    TooLarge {
        count: usize,
        bytes: usize,
        limit: &'static str,
    },
    #[error(transparent)]
    Fatal(#[from] Fatal),
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The range starts before what the log keeps; start from a snapshot.
    #[error("events before {first_available} were compacted into a snapshot")]
    Compacted { first_available: u64 },
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Fatal(#[from] Fatal),
}

/// The replica cannot go on: corrupt data or failed I/O. Never skipped.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Fatal {
    #[error("corrupt {what} at {location}: {detail}")]
    Corrupt {
        what: &'static str,
        location: String,
        detail: String,
    },
    #[error("I/O error on {what}: {detail}")]
    Io { what: String, detail: String },
    #[error("the state machine refused event {index}: {detail}")]
    Apply { index: u64, detail: String },
    #[error("{0}")]
    Refused(String),
}

/// The committed index range of an append.
pub type AppendedRange = RangeInclusive<u64>;

/// Limits on one append (TigerStyle: bound everything).
pub const APPEND_EVENTS_MAX: usize = 100_000;
pub const APPEND_BYTES_MAX: usize = 64 << 20;

/// Refuses an empty batch or one over the limits.
pub fn check_batch(events: &[Vec<u8>]) -> Result<(), AppendError> {
    if events.is_empty() {
        return Err(AppendError::TooLarge {
            count: 0,
            bytes: 0,
            limit: "an append needs at least one event",
        });
    }
    let bytes: usize = events.iter().map(Vec::len).sum();
    if events.len() > APPEND_EVENTS_MAX || bytes > APPEND_BYTES_MAX {
        return Err(AppendError::TooLarge {
            count: events.len(),
            bytes,
            limit: "100,000 events and 64 MiB per append",
        });
    }
    Ok(())
}

/// Read access to the state machine a log applies to, for the shell that
/// decides against it (the master's actors) and serves it (`/state`).
pub trait StateAccess<S> {
    /// Runs `f` on the state machine under the lock that applies hold: keep
    /// it short.
    fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R;
}

/// The event log, as every backend provides it.
pub trait EventLog: Send + Sync + 'static {
    /// Appends a batch; resolves once it is durably committed (a quorum
    /// fsynced it) and applied here, with the indexes it got.
    fn append(
        &self,
        events: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<AppendedRange, AppendError>> + Send;

    /// Committed events in `[from, to)` (`to = u64::MAX` for "all"), at most
    /// `max` of them.
    fn read(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> impl Future<Output = Result<Vec<LoggedEvent>, ReadError>> + Send;

    /// A stream of committed events starting exactly at `from`.
    fn subscribe(&self, from: u64) -> crate::subscription::Subscription;

    /// The last event index applied on this replica.
    fn last_applied(&self) -> u64;

    fn leader(&self) -> LeaderInfo;

    /// Takes a snapshot now (and lets the log purge what it covers);
    /// resolves with the last event index the snapshot includes.
    fn snapshot_now(&self) -> impl Future<Output = Result<u64, Fatal>> + Send;

    /// The state machine's fingerprint after `last_applied()`.
    fn digest(&self) -> impl Future<Output = Vec<u8>> + Send;
}
