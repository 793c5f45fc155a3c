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

/// Reads `data_dir` (as given to `orrery master --data-dir`).
pub async fn read(data_dir: &Path) -> Result<OfflineLog, Fatal> {
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
    let purged = state.purged().map(from_rl).map_or(0, |p| p.index + 1);
    let committed = state.committed().map(from_rl).map_or(0, |c| c.index);
    let raw = log.read_raw(purged, committed + 1).map_err(|e| Fatal::Io {
        what: "the raft log".into(),
        detail: e.to_string(),
    })?;
    // Batches per raft index, then numbered: after the snapshot forward from
    // its last event, before it backward (as the state machine does).
    let mut batches: Vec<(u64, u64, Vec<Vec<u8>>)> = Vec::new();
    for (_, bytes) in raw {
        let entry = decode_entry(&bytes).map_err(|detail| Fatal::Corrupt {
            what: "raft log entry",
            location: raft_dir.display().to_string(),
            detail,
        })?;
        if let EntryPayload::Normal(batch) = entry.payload {
            if !batch.0.is_empty() {
                batches.push((entry.log_id.index, entry.log_id.leader_id.term, batch.0));
            }
        }
    }
    let (snap_log_index, snap_event) = snapshot
        .as_ref()
        .map_or((0, 0), |(i, s)| (*i, s.last_event_index));
    let before: u64 = batches
        .iter()
        .filter(|(i, _, _)| *i <= snap_log_index)
        .map(|(_, _, b)| b.len() as u64)
        .sum();
    let mut next = (snap_event + 1).saturating_sub(before).max(1);
    if snapshot.is_none() && purged > 1 {
        return Err(Fatal::Corrupt {
            what: "data dir",
            location: data_dir.display().to_string(),
            detail: "the raft log was purged but no snapshot exists".into(),
        });
    }
    let mut events = Vec::new();
    for (_, term, batch) in batches {
        for payload in batch {
            events.push(LoggedEvent {
                index: next,
                term,
                payload,
            });
            next += 1;
        }
    }
    Ok(OfflineLog {
        snapshot: snapshot.map(|(_, s)| OfflineSnapshot {
            last_event_index: s.last_event_index,
            last_event_term: s.last_event_term,
            app_state: s.app_state,
        }),
        events,
    })
}
