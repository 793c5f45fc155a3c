//! What the raft backend does with a damaged log on disk: a torn record at
//! the tail (a crash mid-write) is truncated and everything acknowledged is
//! still there; a corrupt record in the middle stops the replica with an
//! error naming the log and how to rebuild it — never a silent skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orrery_storage::conformance::CheckingMachine;
use orrery_storage::raft::{RaftConfig, RaftNode};
use orrery_storage::{EventLog, Fatal};

fn config(dir: &Path) -> RaftConfig {
    let port = orrery_storage::ports::free_port().expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let mut c = RaftConfig::new(
        1,
        addr.parse().unwrap(),
        BTreeMap::from([(1, addr)]),
        dir.to_path_buf(),
    );
    c.election_timeout_ms = 300;
    c.heartbeat_ms = 50;
    c
}

async fn start(dir: &Path) -> Result<RaftNode<CheckingMachine>, Fatal> {
    let node = RaftNode::start(config(dir), CheckingMachine::default()).await?;
    node.wait_for_leader(Duration::from_secs(10)).await?;
    Ok(node)
}

/// Writes 50 events and stops; returns the last chunk file.
async fn written_log(dir: &Path) -> PathBuf {
    let node = start(dir).await.expect("start");
    for i in 0..50u64 {
        node.append(vec![format!("event-{i}").into_bytes()])
            .await
            .expect("append");
    }
    node.shutdown().await;
    drop(node);
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(dir.join("raft"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    chunks.sort();
    chunks.pop().expect("a chunk file")
}

async fn applied_after_restart(dir: &Path) -> u64 {
    let node = start(dir).await.expect("restart after a torn tail");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.last_applied() < 50 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = node.read(1, u64::MAX, 100).await.expect("read");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.payload, format!("event-{i}").into_bytes());
    }
    let n = node.last_applied();
    node.shutdown().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_partial_record_at_the_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = written_log(dir.path()).await;
    let good = std::fs::metadata(&chunk).unwrap().len();
    // The start of a record whose body never reached the disk.
    let bytes = std::fs::read(&chunk).unwrap();
    let mut torn = bytes[..12.min(bytes.len())].to_vec();
    torn.truncate(7);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&chunk)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    assert!(
        applied_after_restart(dir.path()).await >= 50,
        "every acknowledged event survives"
    );
    assert_eq!(
        std::fs::metadata(&chunk).unwrap().len(),
        good,
        "the torn bytes were cut off, and only they"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_zeros_at_the_tail_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = written_log(dir.path()).await;
    let good = std::fs::metadata(&chunk).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&chunk)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
    drop(f);
    assert!(applied_after_restart(dir.path()).await >= 50);
    assert_eq!(std::fs::metadata(&chunk).unwrap().len(), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_stops_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = written_log(dir.path()).await;
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    bytes[mid + 1] ^= 0x55;
    std::fs::write(&chunk, &bytes).unwrap();
    let err = match start(dir.path()).await {
        Ok(node) => {
            node.shutdown().await;
            panic!("a replica with a corrupt log must not start");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("corrupt raft log"), "{err}");
    assert!(
        err.contains(&dir.path().join("raft").display().to_string()),
        "the error names the log: {err}"
    );
    assert!(
        err.contains("--rebuild"),
        "the error says how to recover: {err}"
    );
}
