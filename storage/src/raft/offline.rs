//! Reading a stopped replica's data dir: its latest snapshot and every
//! committed event the raft log still holds, numbered as the state machine
//! numbers them. Used by `orrery replay --data-dir` (never while a master
//! runs on the dir: the log is locked, and this says so).

use std::path::Path;

use openraft::EntryPayload;
use orrery_proto::raft as pb;
use prost::Message;

use super::log_store::{from_rl, LogStore};
use super::state_machine::SNAPSHOT_FILE;
use super::types::decode_entry;
use crate::api::{Fatal, LoggedEvent};

/// The snapshot on disk, if any: the state after `last_event_index`.
#[derive(Clone, Debug)]
pub struct OfflineSnapshot {
    pub last_event_index: u64,
    pub last_event_term: u64,
    pub app_state: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct OfflineLog {
    pub snapshot: Option<OfflineSnapshot>,
    /// Committed events the log holds, in order, gap-free.
    pub events: Vec<LoggedEvent>,
}

/// One raft entry's events: (raft index, term, encoded events).
type Batch = (u64, u64, Vec<Vec<u8>>);

/// A stopped replica's log, open for reading in pieces.
pub struct Reader {
    log: LogStore,
    dir: std::path::PathBuf,
    pub snapshot: Option<OfflineSnapshot>,
    /// The raft index of the snapshot's last entry (0: none).
    pub snapshot_raft_index: u64,
    /// The first raft index the log still holds, and the last committed.
    pub first_raft_index: u64,
    pub committed_raft_index: u64,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.dir)
            .field("first_raft_index", &self.first_raft_index)
            .field("committed_raft_index", &self.committed_raft_index)
            .finish()
    }
}

/// One committed event and the raft entry that holds it.
#[derive(Clone, Debug)]
pub struct RaftEvent {
    pub raft_index: u64,
    /// Whether it is the last event of its raft entry.
    pub last_in_entry: bool,
    pub event: LoggedEvent,
}

impl Reader {
    /// Opens `data_dir` (as given to `orrery master --data-dir`).
    pub async fn open(data_dir: &Path) -> Result<Reader, Fatal> {
        let raft_dir = data_dir.join("raft");
        if !raft_dir.is_dir() {
            return Err(Fatal::Refused(format!(
                "{} holds no raft log (no {}): is it a master's --data-dir?",
                data_dir.display(),
                raft_dir.display()
            )));
        }
        let snap_path = data_dir.join("snapshots").join(SNAPSHOT_FILE);
        let snapshot = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let s = pb::StorageSnapshot::decode(&bytes[..]).map_err(|e| Fatal::Corrupt {
                    what: "snapshot",
                    location: snap_path.display().to_string(),
                    detail: e.to_string(),
                })?;
                Some((s.last_log_id.map_or(0, |l| l.index), s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Fatal::Io {
                    what: snap_path.display().to_string(),
                    detail: e.to_string(),
                })
            }
        };
        let log = LogStore::new(super::open_log(&raft_dir).await?);
        let state = log.lock().log_state().clone();
        let first = state.purged().map(from_rl).map_or(0, |p| p.index + 1);
        let committed = state.committed().map(from_rl).map_or(0, |c| c.index);
        if snapshot.is_none() && first > 1 {
            return Err(Fatal::Corrupt {
                what: "data dir",
                location: data_dir.display().to_string(),
                detail: "the raft log was purged but no snapshot exists".into(),
            });
        }
        Ok(Reader {
            log,
            dir: raft_dir,
            snapshot_raft_index: snapshot.as_ref().map_or(0, |(i, _)| *i),
            snapshot: snapshot.map(|(_, s)| OfflineSnapshot {
                last_event_index: s.last_event_index,
                last_event_term: s.last_event_term,
                app_state: s.app_state,
            }),
            first_raft_index: first,
            committed_raft_index: committed,
        })
    }

    /// Event batches of the committed raft entries in [from, to).
    fn batches(&self, from: u64, to: u64) -> Result<Vec<Batch>, Fatal> {
        let raw = self
            .log
            .read_raw(from, to.min(self.committed_raft_index + 1))
            .map_err(|e| Fatal::Io {
                what: "the raft log".into(),
                detail: e.to_string(),
            })?;
        let mut out = Vec::new();
        for (_, bytes) in raw {
            let entry = decode_entry(&bytes).map_err(|detail| Fatal::Corrupt {
                what: "raft log entry",
                location: self.dir.display().to_string(),
                detail,
            })?;
            if let EntryPayload::Normal(batch) = entry.payload {
                if !batch.0.is_empty() {
                    out.push((entry.log_id.index, entry.log_id.leader_id.term, batch.0));
                }
            }
        }
        Ok(out)
    }

    /// The term of the committed raft entry at `raft_index`, if the log
    /// holds it (Raft's log matching: the same index and term means the
    /// same history up to there).
    pub fn entry_term(&self, raft_index: u64) -> Option<u64> {
        if raft_index < self.first_raft_index || raft_index > self.committed_raft_index {
            return None;
        }
        let raw = self.log.read_raw(raft_index, raft_index + 1).ok()?;
        let (_, bytes) = raw.into_iter().next()?;
        decode_entry(&bytes).ok().map(|e| e.log_id.leader_id.term)
    }

    /// The index of the first event the log holds (before it: the snapshot).
    pub fn first_event_index(&self) -> Result<u64, Fatal> {
        let snap_event = self.snapshot.as_ref().map_or(0, |s| s.last_event_index);
        let before: u64 = self
            .batches(self.first_raft_index, self.snapshot_raft_index + 1)?
            .iter()
            .map(|(_, _, b)| b.len() as u64)
            .sum();
        Ok((snap_event + 1).saturating_sub(before).max(1))
    }

    /// The committed events of the raft entries [raft_index, raft_index +
    /// entries), the first of them numbered `first_event`, up to event
    /// `until` (inclusive).
    pub fn events_from(
        &self,
        raft_index: u64,
        first_event: u64,
        until: u64,
        entries: u64,
    ) -> Result<Vec<RaftEvent>, Fatal> {
        let mut out = Vec::new();
        let mut next = first_event;
        for (ri, term, batch) in self.batches(raft_index, raft_index + entries.max(1))? {
            let n = batch.len();
            for (k, payload) in batch.into_iter().enumerate() {
                if next > until {
                    return Ok(out);
                }
                out.push(RaftEvent {
                    raft_index: ri,
                    last_in_entry: k + 1 == n,
                    event: LoggedEvent {
                        index: next,
                        term,
                        payload,
                    },
                });
                next += 1;
            }
        }
        Ok(out)
    }
}

/// Reads all of `data_dir` (as given to `orrery master --data-dir`).
pub async fn read(data_dir: &Path) -> Result<OfflineLog, Fatal> {
    let r = Reader::open(data_dir).await?;
    let mut next = r.first_event_index()?;
    let mut raft_index = r.first_raft_index;
    let mut events = Vec::new();
    const ENTRIES: u64 = 10_000;
    while raft_index <= r.committed_raft_index {
        let got = r.events_from(raft_index, next, u64::MAX, ENTRIES)?;
        next += got.len() as u64;
        events.extend(got.into_iter().map(|e| e.event));
        raft_index += ENTRIES;
    }
    Ok(OfflineLog {
        snapshot: r.snapshot,
        events,
    })
}
