//! The raft log on disk: openraft's `RaftLogStorage` over the `raft-log`
//! crate.
//!
//! Why raft-log (by openraft's author) rather than a file format of our
//! own: it already does what the log needs and is maintained against
//! openraft — checksummed records, chunked files, vote / committed / purged
//! state in the same write-ahead log, an asynchronous flush worker that lets
//! concurrent appends share one fsync (group commit), and on open a torn
//! record at the tail is truncated (logged with chunk and offset) while a
//! corrupt record anywhere else is an error. This file only adapts types.
//!
//! An append is acknowledged to openraft (and so to a client) only from the
//! flush callback, i.e. after fsync.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::RaftLog;

use super::types::{decode_entry, encode_entry, NodeId, TypeConfig};

/// raft-log's type parameters: tuples it knows how to encode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RlTypes;

/// (term, (node id, index)): ordered like openraft's LogId.
pub type RlLogId = (u64, (u64, u64));
/// (term, (node id, committed)).
pub type RlVote = (u64, (u64, bool));

impl raft_log::Types for RlTypes {
    type LogId = RlLogId;
    /// The protobuf encoding of the whole entry (`orrery.raft.v1.Entry`).
    type LogPayload = Vec<u8>;
    type Vote = RlVote;
    type Callback = FlushCallback;
    /// The protobuf encoding of `orrery.raft.v1.NodeIdentity`.
    type UserData = Vec<u8>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.1 .1
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        payload.len() as u64
    }
}

/// Who to tell when a flush is durable.
pub enum FlushCallback {
    Raft(LogFlushed<TypeConfig>),
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Debug for FlushCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlushCallback::Raft(_) => "FlushCallback::Raft",
            FlushCallback::Wait(_) => "FlushCallback::Wait",
        })
    }
}

impl raft_log::Callback for FlushCallback {
    fn send(self, res: Result<(), io::Error>) {
        match self {
            FlushCallback::Raft(cb) => cb.log_io_completed(res),
            FlushCallback::Wait(tx) => {
                // The waiter may have gone (shutdown); nothing to tell.
                let _ = tx.send(res);
            }
        }
    }
}

pub fn to_rl(id: &LogId<NodeId>) -> RlLogId {
    (id.leader_id.term, (id.leader_id.node_id, id.index))
}

pub fn from_rl(id: &RlLogId) -> LogId<NodeId> {
    LogId::new(openraft::CommittedLeaderId::new(id.0, id.1 .0), id.1 .1)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(format!("{what}: {e}"))).into()
}

fn read_err(what: &str, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::error(format!("{what}: {e}"))).into()
}

/// The shared handle to the on-disk log (the state machine reads events
/// through it too).
#[derive(Clone)]
pub struct LogStore {
    pub(crate) log: Arc<Mutex<RaftLog<RlTypes>>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    pub fn new(log: RaftLog<RlTypes>) -> Self {
        Self {
            log: Arc::new(Mutex::new(log)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RaftLog<RlTypes>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes with `f`, then waits until the write is durable.
    pub(crate) async fn write_durably(
        &self,
        f: impl FnOnce(&mut RaftLog<RlTypes>) -> io::Result<()>,
    ) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut log = self.lock();
            f(&mut log)?;
            log.flush(true, Some(FlushCallback::Wait(tx)))?;
        }
        rx.await
            .map_err(|_| io::Error::other("the log's flush worker stopped"))?
    }

    /// Raw entries (encoded) with index in `[start, end)`.
    pub(crate) fn read_raw(&self, start: u64, end: u64) -> io::Result<Vec<(RlLogId, Vec<u8>)>> {
        let log = self.lock();
        log.read(start, end).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self
            .read_raw(start, end)
            .map_err(|e| read_err("reading the raft log", e))?;
        raw.into_iter()
            .map(|(_, bytes)| {
                decode_entry(&bytes).map_err(|e| read_err("decoding a raft log entry", e))
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.lock();
        let st = log.log_state();
        let last_purged_log_id = st.purged().map(from_rl);
        let last_log_id = st.last().map(from_rl).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let v: RlVote = (
            vote.leader_id.term,
            (vote.leader_id.node_id, vote.committed),
        );
        // A vote must be durable before it is sent (no double vote after a
        // power loss).
        self.write_durably(|log| log.save_vote(v).map(|_| ()))
            .await
            .map_err(|e| {
                StorageError::from(StorageIOError::write_vote(AnyError::error(e.to_string())))
            })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let log = self.lock();
        Ok(log.log_state().vote().map(|&(term, (node_id, committed))| {
            if committed {
                Vote::new_committed(term, node_id)
            } else {
                Vote::new(term, node_id)
            }
        }))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if let Some(c) = committed {
            // Durable with the next flush; a committed index that is a little
            // behind after a crash only means re-applying from the snapshot.
            let mut log = self.lock();
            log.commit(to_rl(&c))
                .map_err(|e| io_err("saving the committed index", e))?;
            log.flush(false, None)
                .map_err(|e| io_err("saving the committed index", e))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().log_state().committed().map(from_rl))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut log = self.lock();
        let batch: Vec<(RlLogId, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (to_rl(&e.log_id), encode_entry(&e)))
            .collect();
        log.append(batch)
            .map_err(|e| io_err("appending to the raft log", e))?;
        // Acknowledged only once fsynced: the flush worker calls back.
        log.flush(true, Some(FlushCallback::Raft(callback)))
            .map_err(|e| io_err("flushing the raft log", e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_durably(|log| log.truncate(log_id.index).map(|_| ()))
            .await
            .map_err(|e| io_err("truncating the raft log", e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_durably(|log| log.purge(to_rl(&log_id)).map(|_| ()))
            .await
            .map_err(|e| io_err("purging the raft log", e))
    }
}
