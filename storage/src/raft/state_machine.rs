//! openraft's `RaftStateMachine` around Orrery's domain-agnostic
//! [`StateMachine`]: committed raft entries become gap-free events.
//!
//! Event indexes are assigned here, at apply time: every replica applies the
//! same raft entries in the same order, so every replica assigns the same
//! indexes, and blank or membership entries leave no gap. The map from event
//! index to raft entry (kept for `read` and `subscribe`) is rebuilt on start
//! from the snapshot and the entries still in the log.
//!
//! Snapshots are `orrery.raft.v1.StorageSnapshot` protobufs written
//! atomically (temp file, fsync, rename, fsync of the directory), so a crash
//! mid-write leaves the previous snapshot, never half of a new one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use orrery_proto::raft as pb;
use prost::Message;
use tokio::sync::watch;

use super::log_store::{from_rl, LogStore};
use super::types::{
    decode_entry, log_id_to_pb, opt_log_id_from_pb, opt_log_id_to_pb, stored_membership_from_pb,
    stored_membership_to_pb, Applied, NodeId, TypeConfig,
};
use crate::api::{Fatal, LoggedEvent, ReadError, StateMachine};
use crate::subscription::EventSource;

pub const SNAPSHOT_FILE: &str = "snapshot.pb";

/// Where one raft entry's events sit: raft index, event count, term.
#[derive(Clone, Copy, Debug)]
struct Span {
    raft_index: u64,
    count: u64,
    term: u64,
}

pub(crate) struct Core<S> {
    pub(crate) app: S,
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) membership: StoredMembership<NodeId, BasicNode>,
    pub(crate) last_event_index: u64,
    last_event_term: u64,
    /// First event index of each applied entry still in the raft log.
    spans: BTreeMap<u64, Span>,
    /// The first event index `read` can serve.
    first_readable: u64,
    /// The current snapshot: its meta and encoded bytes.
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

pub(crate) struct Shared<S> {
    pub(crate) core: Mutex<Core<S>>,
    pub(crate) log: LogStore,
    applied_tx: watch::Sender<u64>,
    snapshot_dir: PathBuf,
    pub(crate) cluster_id: Arc<Mutex<String>>,
}

impl<S> Shared<S> {
    /// The latest snapshot: (the last event it includes, the application's
    /// state), if one was taken or received.
    pub(crate) fn latest_snapshot(&self) -> Option<(u64, Vec<u8>)> {
        let core = self.lock();
        let (_, bytes) = core.snapshot.as_ref()?;
        let s = pb::StorageSnapshot::decode(&bytes[..]).ok()?;
        Some((s.last_event_index, s.app_state))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core<S>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn cluster_id(&self) -> String {
        self.cluster_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn applied_rx(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// Writes `bytes` to `dir/name` so that a crash leaves either the old file
/// or the new one, whole.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl<S: StateMachine> Shared<S> {
    /// Opens the state machine: restores the snapshot on disk, if any, and
    /// indexes the events of the entries the log still holds up to it.
    pub(crate) fn open(
        app: S,
        log: LogStore,
        snapshot_dir: PathBuf,
        cluster_id: String,
    ) -> Result<Arc<Self>, Fatal> {
        let mut core = Core {
            app,
            last_applied: None,
            membership: StoredMembership::default(),
            last_event_index: 0,
            last_event_term: 0,
            spans: BTreeMap::new(),
            first_readable: 1,
            snapshot: None,
            snapshot_seq: 0,
        };
        let path = snapshot_dir.join(SNAPSHOT_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |detail: String| Fatal::Corrupt {
                    what: "snapshot",
                    location: path.display().to_string(),
                    detail,
                };
                let snap =
                    pb::StorageSnapshot::decode(&bytes[..]).map_err(|e| corrupt(e.to_string()))?;
                if !cluster_id.is_empty()
                    && !snap.cluster_id.is_empty()
                    && snap.cluster_id != cluster_id
                {
                    return Err(corrupt(format!(
                        "it belongs to cluster {}, this data dir to {cluster_id}",
                        snap.cluster_id
                    )));
                }
                core.app.restore(&snap.app_state).map_err(corrupt)?;
                core.last_applied = opt_log_id_from_pb(snap.last_log_id.as_ref());
                core.membership = stored_membership_from_pb(snap.last_membership.as_ref());
                core.last_event_index = snap.last_event_index;
                core.last_event_term = snap.last_event_term;
                core.first_readable = snap.last_event_index + 1;
                let meta = SnapshotMeta {
                    last_log_id: core.last_applied,
                    last_membership: core.membership.clone(),
                    snapshot_id: snap.snapshot_id.clone(),
                };
                core.snapshot = Some((meta, bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Fatal::Io {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })
            }
        }
        // Index the events of entries at or below the snapshot that the log
        // still holds, walking back from the snapshot's last event.
        if let Some(upto) = core.last_applied {
            let purged = log
                .lock()
                .log_state()
                .purged()
                .map(from_rl)
                .map_or(0, |p| p.index + 1);
            let raw = log
                .read_raw(purged, upto.index + 1)
                .map_err(|e| Fatal::Io {
                    what: "the raft log".into(),
                    detail: e.to_string(),
                })?;
            let mut end = core.last_event_index; // inclusive
            for (_, bytes) in raw.iter().rev() {
                let entry = decode_entry(bytes).map_err(|detail| Fatal::Corrupt {
                    what: "raft log entry",
                    location: "the raft log".into(),
                    detail,
                })?;
                if let EntryPayload::Normal(batch) = entry.payload {
                    let count = batch.0.len() as u64;
                    if count == 0 {
                        continue;
                    }
                    let first = end + 1 - count;
                    core.spans.insert(
                        first,
                        Span {
                            raft_index: entry.log_id.index,
                            count,
                            term: entry.log_id.leader_id.term,
                        },
                    );
                    core.first_readable = first;
                    end = first - 1;
                }
            }
        }
        let (applied_tx, _) = watch::channel(core.last_event_index);
        Ok(Arc::new(Shared {
            core: Mutex::new(core),
            log,
            applied_tx,
            snapshot_dir,
            cluster_id: Arc::new(Mutex::new(cluster_id)),
        }))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut core = self.lock();
        core.snapshot_seq += 1;
        let last = core.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, core.snapshot_seq),
            None => format!("empty-{}", core.snapshot_seq),
        };
        let snap = pb::StorageSnapshot {
            last_log_id: opt_log_id_to_pb(last.as_ref()),
            last_membership: Some(stored_membership_to_pb(&core.membership)),
            last_event_index: core.last_event_index,
            last_event_term: core.last_event_term,
            app_state: core.app.snapshot(),
            snapshot_id: snapshot_id.clone(),
            cluster_id: self.cluster_id(),
        };
        let bytes = snap.encode_to_vec();
        write_atomically(&self.snapshot_dir, SNAPSHOT_FILE, &bytes).map_err(snap_err)?;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: core.membership.clone(),
            snapshot_id,
        };
        core.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl<S: StateMachine> EventSource for Shared<S> {
    fn read_from(&self, from: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        // Which raft entries hold [from, from + max)?
        let purged = self.log.lock().log_state().purged().map_or(0, |p| p.1 .1);
        let wanted: Vec<(u64, Span)> = {
            let mut core = self.lock();
            // Entries purged from the raft log are readable no more.
            while let Some((&first, &span)) = core.spans.iter().next() {
                if span.raft_index > purged {
                    break;
                }
                core.spans.remove(&first);
                core.first_readable = first + span.count;
            }
            if from < core.first_readable {
                return Err(ReadError::Compacted {
                    first_available: core.first_readable,
                });
            }
            let start = core
                .spans
                .range(..=from)
                .next_back()
                .map_or(from, |(&k, _)| k);
            let mut total = 0u64;
            let mut out = Vec::new();
            for (&first, &span) in core.spans.range(start..) {
                if total >= max as u64 {
                    break;
                }
                total += span.count - from.saturating_sub(first).min(span.count);
                out.push((first, span));
            }
            out
        };
        let mut events = Vec::new();
        for (first, span) in wanted {
            let raw = self
                .log
                .read_raw(span.raft_index, span.raft_index + 1)
                .map_err(|e| {
                    ReadError::Unavailable(format!("reading raft entry {}: {e}", span.raft_index))
                })?;
            let Some((_, bytes)) = raw.into_iter().next() else {
                return Err(ReadError::Compacted {
                    first_available: first + span.count,
                });
            };
            let entry = decode_entry(&bytes).map_err(|detail| {
                ReadError::Fatal(Fatal::Corrupt {
                    what: "raft log entry",
                    location: format!("raft index {}", span.raft_index),
                    detail,
                })
            })?;
            let EntryPayload::Normal(batch) = entry.payload else {
                return Err(ReadError::Fatal(Fatal::Corrupt {
                    what: "raft log entry",
                    location: format!("raft index {}", span.raft_index),
                    detail: "expected a batch of events".into(),
                }));
            };
            for (k, payload) in batch.0.into_iter().enumerate() {
                let index = first + k as u64;
                if index >= from && events.len() < max {
                    events.push(LoggedEvent {
                        index,
                        term: span.term,
                        payload,
                    });
                }
            }
        }
        Ok(events)
    }

    fn applied(&self) -> watch::Receiver<u64> {
        self.applied_rx()
    }
}

/// The state machine as openraft sees it.
pub struct SmStore<S> {
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S> Clone for SmStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for SmStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.shared.build()
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for SmStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let core = self.shared.lock();
        Ok((core.last_applied, core.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let last = {
            let mut core = self.shared.lock();
            for entry in entries {
                core.last_applied = Some(entry.log_id);
                let term = entry.log_id.leader_id.term;
                match entry.payload {
                    EntryPayload::Blank => out.push(Applied::default()),
                    EntryPayload::Membership(m) => {
                        core.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(Applied::default());
                    }
                    EntryPayload::Normal(batch) => {
                        let first = core.last_event_index + 1;
                        let count = batch.0.len() as u64;
                        for (k, payload) in batch.0.into_iter().enumerate() {
                            let event = LoggedEvent {
                                index: first + k as u64,
                                term,
                                payload,
                            };
                            if let Err(detail) = core.app.apply(&event) {
                                // Fatal: the replica stops rather than skip.
                                tracing::error!(index = event.index, %detail, "the state machine refused a committed event; stopping");
                                return Err(sm_err(format!("event {}: {detail}", event.index)));
                            }
                        }
                        if count > 0 {
                            core.last_event_index += count;
                            core.last_event_term = term;
                            core.spans.insert(
                                first,
                                Span {
                                    raft_index: entry.log_id.index,
                                    count,
                                    term,
                                },
                            );
                        }
                        out.push(Applied {
                            first,
                            last: (first + count).saturating_sub(1),
                            term,
                        });
                    }
                }
            }
            core.last_event_index
        };
        self.shared.applied_tx.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let snap = pb::StorageSnapshot::decode(&bytes[..])
            .map_err(|e| snap_err(format!("undecodable snapshot: {e}")))?;
        let ours = self.shared.cluster_id();
        if !ours.is_empty() && snap.cluster_id != ours {
            return Err(snap_err(format!(
                "snapshot of cluster {} offered to a replica of cluster {ours}",
                snap.cluster_id
            )));
        }
        let last = {
            let mut core = self.shared.lock();
            core.app.restore(&snap.app_state).map_err(sm_err)?;
            core.last_applied = meta.last_log_id;
            core.membership = meta.last_membership.clone();
            core.last_event_index = snap.last_event_index;
            core.last_event_term = snap.last_event_term;
            core.spans.clear();
            core.first_readable = snap.last_event_index + 1;
            // Durable before it counts: write it, then make it current.
            write_atomically(&self.shared.snapshot_dir, SNAPSHOT_FILE, &bytes).map_err(snap_err)?;
            core.snapshot = Some((meta.clone(), bytes));
            core.last_event_index
        };
        self.shared.applied_tx.send_replace(last);
        tracing::info!(last_event_index = last, snapshot = %meta.snapshot_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let core = self.shared.lock();
        Ok(core.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

pub(crate) fn snapshot_last_log_id<S>(shared: &Shared<S>) -> Option<pb::LogId> {
    shared
        .lock()
        .snapshot
        .as_ref()
        .and_then(|(m, _)| m.last_log_id.as_ref().map(log_id_to_pb))
}

impl<S> std::fmt::Debug for SmStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmStore")
    }
}
