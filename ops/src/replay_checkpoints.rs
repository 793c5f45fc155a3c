//! Checkpoints for `orrery replay` over long exported logs: the state at
//! any event of a 10,000,000-event log without replaying from the start.
//!
//! The first replay through a log file writes, every `every` events, a
//! protobuf snapshot of the state (`orrery_events::snapshot`, the master's
//! own format) and a small JSON record: the event index, the byte offset of
//! the next event in the file, the SHA-256 of the last event's bytes, and
//! the file's length and modification time. A later replay to event N
//! starts from the newest checkpoint at or before N made from this very
//! file (same length and mtime: an edited or rewritten file invalidates
//! every checkpoint) whose last event still hashes the same, seeks to its
//! offset and applies only the events after it.
//!
//! Why files next to the log (`FILE.checkpoints/`): they live and die with
//! the export, need no server, and a checkpoint that does not match the
//! file is ignored (and rewritten), never trusted.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use orrery_events::{codec, snapshot, Cluster};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A checkpoint every this many events by default.
pub const EVERY: u64 = 500_000;

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    index: u64,
    /// The byte offset of event `index` (its length prefix) in the file.
    last_offset: u64,
    /// The byte offset of event `index + 1`.
    next_offset: u64,
    /// SHA-256 of event `index`'s encoded bytes, hex.
    last_sha256: String,
    /// The file when the checkpoint was made.
    file_len: u64,
    file_mtime_ns: u128,
}

/// The file's length and modification time (ns since the epoch).
fn identity(file: &File) -> (u64, u128) {
    let meta = file.metadata().ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    (len, mtime)
}

/// How a replay went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// The checkpoint it started from (0: the start of the log).
    pub from_checkpoint: u64,
    pub events_applied: u64,
    pub checkpoints_written: u64,
}

pub fn default_dir(log_file: &Path) -> PathBuf {
    let mut name = log_file.as_os_str().to_owned();
    name.push(".checkpoints");
    PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn meta_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("cp-{index:020}.json"))
}

fn state_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("cp-{index:020}.pb"))
}

/// Reads one length-prefixed event at the reader's position; `None` at the
/// end of the file.
fn next_event(r: &mut impl Read, offset: u64) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).context("reading the log file"),
    }
    let len = u32::from_le_bytes(len) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|_| anyhow!("a torn event at byte {offset} of the log file"))?;
    Ok(Some(body))
}

/// The newest checkpoint at or before `at` that matches the file.
fn best_checkpoint(dir: &Path, file: &mut File, at: u64) -> Option<(Meta, Cluster)> {
    let mut metas: Vec<Meta> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Meta>(&b).ok())
        .filter(|m| m.index <= at)
        .filter(|m| (m.file_len, m.file_mtime_ns) == identity(file))
        .collect();
    metas.sort_by_key(|m| std::cmp::Reverse(m.index));
    for m in metas {
        let matches = file.seek(SeekFrom::Start(m.last_offset)).is_ok()
            && next_event(file, m.last_offset)
                .ok()
                .flatten()
                .is_some_and(|b| hex(&Sha256::digest(&b)) == m.last_sha256);
        if !matches {
            continue;
        }
        let Ok(bytes) = std::fs::read(state_path(dir, m.index)) else {
            continue;
        };
        match snapshot::decode(&bytes) {
            Ok(c) if c.applied_index == m.index => return Some((m, c)),
            _ => continue,
        }
    }
    None
}

/// The state after event `at` of the exported log `path`, using and
/// writing checkpoints in `dir`.
pub fn state_at(path: &Path, at: u64, dir: &Path, every: u64) -> Result<(Cluster, Stats)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut stats = Stats::default();
    let (mut c, mut offset) = match best_checkpoint(dir, &mut file, at) {
        Some((m, c)) => {
            stats.from_checkpoint = m.index;
            (c, m.next_offset)
        }
        None => (Cluster::new(), 0),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let writable = std::fs::create_dir_all(dir).is_ok();
    let (file_len, file_mtime_ns) = identity(r.get_ref());
    while c.applied_index < at {
        let Some(body) = next_event(&mut r, offset)? else {
            bail!(
                "event {at} is past the end of the log (event {})",
                c.applied_index
            );
        };
        let env = codec::decode(&body)
            .map_err(|e| anyhow!("the event at byte {offset} does not decode: {e}"))?;
        orrery_events::try_apply(&mut c, &env).map_err(|e| anyhow!("event {}: {e}", env.index))?;
        stats.events_applied += 1;
        let last_offset = offset;
        offset += 4 + body.len() as u64;
        let index = c.applied_index;
        if writable && every > 0 && index % every == 0 && !meta_path(dir, index).exists() {
            let meta = Meta {
                index,
                last_offset,
                next_offset: offset,
                last_sha256: hex(&Sha256::digest(&body)),
                file_len,
                file_mtime_ns,
            };
            std::fs::write(state_path(dir, index), snapshot::encode(&c))
                .and_then(|()| {
                    std::fs::write(
                        meta_path(dir, index),
                        serde_json::to_vec(&meta).unwrap_or_default(),
                    )
                })
                .with_context(|| format!("writing a checkpoint in {}", dir.display()))?;
            stats.checkpoints_written += 1;
        }
    }
    Ok((c, stats))
}

// --- a stopped master's data dir ------------------------------------------------

/// A checkpoint of a data dir's history: the state after event `index`, the
/// last event of raft entry `raft_index` of term `raft_term`. Raft's log
/// matching makes (raft_index, raft_term) name one history: a log that holds
/// that entry with that term holds the same events up to it.
#[derive(Debug, Serialize, Deserialize)]
struct RaftMeta {
    index: u64,
    raft_index: u64,
    raft_term: u64,
}

fn raft_meta_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("raft-{index:020}.json"))
}

fn raft_state_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("raft-{index:020}.pb"))
}

/// Where checkpoints of `data_dir` go by default: next to it, never in it.
pub fn default_dir_for_data(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .into_os_string();
    name.push(".replay-checkpoints");
    PathBuf::from(name)
}

/// The state after event `at` of a stopped master's `data_dir`: from the
/// newest checkpoint (or the master's snapshot) at or before it whose raft
/// entry the log still holds with the same term, then the events after it.
pub async fn state_at_data_dir(
    data_dir: &Path,
    at: u64,
    dir: &Path,
    every: u64,
) -> Result<(Cluster, Stats)> {
    let r = orrery_storage::raft::offline::Reader::open(data_dir)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut stats = Stats::default();
    // The start: the snapshot, or the beginning of the log.
    let (mut c, mut raft_index, mut next) = match &r.snapshot {
        Some(s) if s.last_event_index <= at => (
            snapshot::decode(&s.app_state).map_err(|e| {
                anyhow!(
                    "the snapshot in {} does not decode: {e}",
                    data_dir.display()
                )
            })?,
            r.snapshot_raft_index + 1,
            s.last_event_index + 1,
        ),
        Some(s) => {
            let first = r.first_event_index().map_err(|e| anyhow!("{e}"))?;
            if first > 1 || at < s.last_event_index && r.first_raft_index > 1 {
                bail!(
                    "event {at} is before the events this data dir still holds (from event {first}; its snapshot is at event {})",
                    s.last_event_index
                );
            }
            (Cluster::new(), r.first_raft_index, 1)
        }
        None => (Cluster::new(), r.first_raft_index, 1),
    };
    // A newer checkpoint of the same history?
    let mut metas: Vec<RaftMeta> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("raft-"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<RaftMeta>(&b).ok())
        .filter(|m| {
            m.index <= at && m.index >= c.applied_index && m.raft_index >= r.first_raft_index
        })
        .collect();
    metas.sort_by_key(|m| std::cmp::Reverse(m.index));
    for m in metas {
        if r.entry_term(m.raft_index) != Some(m.raft_term) {
            continue;
        }
        let Ok(bytes) = std::fs::read(raft_state_path(dir, m.index)) else {
            continue;
        };
        if let Ok(cp) = snapshot::decode(&bytes) {
            if cp.applied_index == m.index {
                c = cp;
                raft_index = m.raft_index + 1;
                next = m.index + 1;
                stats.from_checkpoint = m.index;
                break;
            }
        }
    }
    let writable = std::fs::create_dir_all(dir).is_ok();
    let mut last_cp = c.applied_index;
    const ENTRIES: u64 = 1_000;
    while c.applied_index < at {
        if raft_index > r.committed_raft_index {
            bail!(
                "event {at} is past the end of the log (event {})",
                c.applied_index
            );
        }
        let got = r
            .events_from(raft_index, next, at, ENTRIES)
            .map_err(|e| anyhow!("{e}"))?;
        raft_index += ENTRIES;
        for e in got {
            let env = codec::decode(&e.event.payload)
                .map_err(|err| anyhow!("event {} does not decode: {err}", e.event.index))?;
            orrery_events::try_apply(&mut c, &env)
                .map_err(|err| anyhow!("event {}: {err}", env.index))?;
            next = c.applied_index + 1;
            stats.events_applied += 1;
            let due = every > 0 && c.applied_index / every > last_cp / every;
            if writable && e.last_in_entry && due {
                let meta = RaftMeta {
                    index: c.applied_index,
                    raft_index: e.raft_index,
                    raft_term: e.event.term,
                };
                std::fs::write(raft_state_path(dir, meta.index), snapshot::encode(&c))
                    .and_then(|()| {
                        std::fs::write(
                            raft_meta_path(dir, meta.index),
                            serde_json::to_vec(&meta).unwrap_or_default(),
                        )
                    })
                    .with_context(|| format!("writing a checkpoint in {}", dir.display()))?;
                stats.checkpoints_written += 1;
                last_cp = c.applied_index;
            }
        }
    }
    Ok((c, stats))
}

/// A data dir's files as they are on disk: each file's path, length and
/// modification time, hashed. Stat calls only: no file is opened.
fn fingerprint(data_dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let meta = e
                .metadata()
                .with_context(|| format!("reading {}", e.path().display()))?;
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            files.push(format!("{}\t{}\t{mtime}", e.path().display(), meta.len()));
        }
    }
    files.sort();
    Ok(hex(&Sha256::digest(files.join("\n").as_bytes())))
}

/// The state at event `at` of a stopped master's data dir, through a cached
/// export of its log.
///
/// Opening the raft log reads every chunk of it (seconds for a 10M-event
/// log), so the first query exports the whole log once to `DIR/log.export`
/// (the format of `orrery replay export`) with the data dir's fingerprint
/// (every file's path, length and mtime); later queries check the
/// fingerprint with stat calls alone and answer from the export and its
/// checkpoints. A data dir that changed (a master ran on it) has another
/// fingerprint: the export is made again, never trusted stale. A data dir
/// whose oldest events were purged behind a snapshot cannot be exported
/// from the start; it is read directly ([`state_at_data_dir`]).
pub async fn state_at_data_dir_cached(
    data_dir: &Path,
    at: u64,
    dir: &Path,
    every: u64,
) -> Result<(Cluster, Stats)> {
    let export = dir.join("log.export");
    let fp_path = dir.join("log.export.fingerprint");
    let cps = dir.join("log.export.checkpoints");
    let fp = fingerprint(data_dir)?;
    let fresh = export.exists() && std::fs::read_to_string(&fp_path).is_ok_and(|s| s.trim() == fp);
    if !fresh {
        let log = orrery_storage::raft::offline::read(data_dir)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let from_start = log
            .events
            .first()
            .map_or(log.snapshot.is_none(), |e| e.index == 1);
        if !from_start {
            return state_at_data_dir(data_dir, at, dir, every).await;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("log.export.tmp");
        {
            use std::io::Write;
            let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = std::io::BufWriter::new(f);
            for e in &log.events {
                w.write_all(&(e.payload.len() as u32).to_le_bytes())
                    .and_then(|()| w.write_all(&e.payload))
                    .with_context(|| format!("writing {}", tmp.display()))?;
            }
            w.flush()
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        let _ = std::fs::remove_dir_all(&cps);
        std::fs::rename(&tmp, &export).with_context(|| format!("writing {}", export.display()))?;
        // The fingerprint after the read: what later queries will see.
        std::fs::write(&fp_path, fingerprint(data_dir)?)
            .with_context(|| format!("writing {}", fp_path.display()))?;
    }
    state_at(&export, at, &cps, every)
}
