//! The agent's checkpoint files under `--work-dir`/meta.
//!
//! Two kinds of file:
//! - whole records (`agent.pb`, `task.pb`, `executor.pb`), replaced
//!   atomically: temp file, fsync, rename, fsync of the directory
//!   (`orrery_storage`'s `write_atomically`, shared with the log's
//!   snapshots);
//! - append-only streams (`updates.log`, `executor.log`): each record is
//!   `[length u32 LE][crc32 u32 LE][protobuf]`, fsynced before the append
//!   returns. A torn last record (a crash mid-append) is reported as
//!   `torn_at` and cut off; a bad record with more after it is corruption,
//!   reported with the file and byte offset and never skipped silently.
//!
//! crc32fast is the checksum: maintained, and the same CRC-32 every tool
//! can check.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use orrery_proto::checkpoint as cp;
use prost::Message;

pub use orrery_storage::raft::state_machine::write_atomically;

/// The most a single record may be (a status message is cut at 4 KiB).
pub const RECORD_BYTES_MAX: usize = 1 << 20;

/// A checkpoint that cannot be read as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub file: PathBuf,
    pub offset: u64,
    pub detail: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "corrupt checkpoint {} at byte {}: {}",
            self.file.display(),
            self.offset,
            self.detail
        )
    }
}

/// Writes a whole-record file atomically.
pub fn write_message(path: &Path, msg: &impl Message) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    write_atomically(dir, name, &msg.encode_to_vec())
}

/// Reads a whole-record file: `Ok(None)` when it does not exist.
pub fn read_message<M: Message + Default>(path: &Path) -> Result<Option<M>, Corrupt> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Corrupt {
                file: path.to_owned(),
                offset: 0,
                detail: format!("cannot read it: {e}"),
            })
        }
    };
    M::decode(bytes.as_slice()).map(Some).map_err(|e| Corrupt {
        file: path.to_owned(),
        offset: 0,
        detail: format!("it does not decode: {e}"),
    })
}

/// Appends one record and fsyncs it.
pub fn append(path: &Path, record: &cp::StreamRecord) -> io::Result<()> {
    let body = record.encode_to_vec();
    let mut buf = Vec::with_capacity(body.len() + 8);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// What reading a stream file found.
#[derive(Debug, Default)]
pub struct Stream {
    /// Every good record, with the offset just past it.
    pub records: Vec<(cp::StreamRecord, u64)>,
    /// The offset of a torn last record (everything from there is garbage
    /// left by a crash mid-append).
    pub torn_at: Option<u64>,
    /// A bad record with data after it.
    pub corrupt: Option<Corrupt>,
}

/// Reads a stream file from `from` (a byte offset past a good record).
pub fn read_stream(path: &Path, from: u64) -> io::Result<Stream> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stream::default()),
        Err(e) => return Err(e),
    }
    let mut out = Stream::default();
    let len = bytes.len() as u64;
    let mut at = from.min(len);
    while at < len {
        let rest = &bytes[at as usize..];
        if rest.len() < 8 {
            out.torn_at = Some(at);
            break;
        }
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if n > RECORD_BYTES_MAX {
            out.corrupt = Some(Corrupt {
                file: path.to_owned(),
                offset: at,
                detail: format!("a record claims {n} bytes (the limit is {RECORD_BYTES_MAX})"),
            });
            break;
        }
        if rest.len() < 8 + n {
            out.torn_at = Some(at);
            break;
        }
        let body = &rest[8..8 + n];
        let end = at + 8 + n as u64;
        if crc32fast::hash(body) != crc {
            if end == len {
                out.torn_at = Some(at);
            } else {
                out.corrupt = Some(Corrupt {
                    file: path.to_owned(),
                    offset: at,
                    detail: "the record's checksum does not match".into(),
                });
            }
            break;
        }
        match cp::StreamRecord::decode(body) {
            Ok(r) => out.records.push((r, end)),
            Err(e) => {
                out.corrupt = Some(Corrupt {
                    file: path.to_owned(),
                    offset: at,
                    detail: format!("the record does not decode: {e}"),
                });
                break;
            }
        }
        at = end;
    }
    Ok(out)
}

/// Cuts a stream file back to `offset` (a torn tail) and fsyncs it.
pub fn truncate(path: &Path, offset: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(offset)?;
    f.sync_all()
}

/// The files of one task under meta/.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPaths {
    pub dir: PathBuf,
    pub sandbox: PathBuf,
}

impl TaskPaths {
    pub fn new(work_dir: &Path, framework_id: &str, task_id: &str) -> Self {
        Self {
            dir: work_dir
                .join("meta")
                .join("tasks")
                .join(framework_id)
                .join(task_id),
            sandbox: work_dir.join("sandboxes").join(framework_id).join(task_id),
        }
    }
    pub fn task(&self) -> PathBuf {
        self.dir.join("task.pb")
    }
    pub fn executor(&self) -> PathBuf {
        self.dir.join("executor.pb")
    }
    pub fn executor_log(&self) -> PathBuf {
        self.dir.join("executor.log")
    }
    pub fn updates(&self) -> PathBuf {
        self.dir.join("updates.log")
    }
}

pub fn agent_file(work_dir: &Path) -> PathBuf {
    work_dir.join("meta").join("agent.pb")
}

pub fn heartbeat_file(work_dir: &Path) -> PathBuf {
    work_dir.join("meta").join("heartbeat")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(uuid: &str) -> cp::StreamRecord {
        cp::StreamRecord {
            record: Some(cp::stream_record::Record::Update(cp::StatusRecord {
                uuid: uuid.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn streams_read_back_cut_torn_tails_and_name_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.log");
        for u in ["a", "b", "c"] {
            append(&p, &update(u)).unwrap();
        }
        let s = read_stream(&p, 0).unwrap();
        assert_eq!(s.records.len(), 3);
        assert!(s.torn_at.is_none() && s.corrupt.is_none());
        // Resume from the middle.
        let from = s.records[0].1;
        assert_eq!(read_stream(&p, from).unwrap().records.len(), 2);

        // A torn tail: half a record.
        let good = fs::metadata(&p).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let s = read_stream(&p, 0).unwrap();
        assert_eq!((s.records.len(), s.torn_at), (3, Some(good)));
        truncate(&p, good).unwrap();
        assert!(read_stream(&p, 0).unwrap().torn_at.is_none());

        // A flipped byte in the middle record: corruption at its offset.
        let mut bytes = fs::read(&p).unwrap();
        let second = s.records[0].1 as usize;
        bytes[second + 9] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        let s = read_stream(&p, 0).unwrap();
        assert_eq!(s.records.len(), 1);
        let c = s.corrupt.expect("corruption found");
        assert_eq!(c.offset, second as u64);
        assert!(
            c.to_string().contains("s.log") && c.to_string().contains(&format!("byte {second}"))
        );
    }

    #[test]
    fn whole_records_are_replaced_atomically_and_absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.pb");
        assert_eq!(read_message::<cp::AgentCheckpoint>(&p).unwrap(), None);
        let a = cp::AgentCheckpoint {
            agent_id: "S1".into(),
            boot_id: "b".into(),
        };
        write_message(&p, &a).unwrap();
        assert_eq!(read_message::<cp::AgentCheckpoint>(&p).unwrap(), Some(a));
        fs::write(&p, [0xff, 0xff, 0xff]).unwrap();
        let e = read_message::<cp::AgentCheckpoint>(&p).unwrap_err();
        assert!(e.to_string().contains("agent.pb"));
    }
}
