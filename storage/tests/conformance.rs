//! The conformance suite against every backend in this crate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use orrery_storage::conformance::{self, CheckingMachine, Harness};
use orrery_storage::memory::MemoryLog;
use orrery_storage::raft::{RaftConfig, RaftNode};

// --- memory -------------------------------------------------------------

#[derive(Default)]
struct MemoryHarness {
    stashed: Option<MemoryLog<CheckingMachine>>,
}

#[derive(Clone)]
struct SharedMemory(std::sync::Arc<tokio::sync::Mutex<Option<MemoryLog<CheckingMachine>>>>);

// MemoryLog is not Clone (it owns its simulated disk); the suite clones
// logs to share them between tasks, so wrap it.
impl orrery_storage::EventLog for SharedMemory {
    async fn append(
        &self,
        events: Vec<Vec<u8>>,
    ) -> Result<orrery_storage::AppendedRange, orrery_storage::AppendError> {
        self.0
            .lock()
            .await
            .as_ref()
            .expect("open")
            .append(events)
            .await
    }
    async fn read(
        &self,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<orrery_storage::LoggedEvent>, orrery_storage::ReadError> {
        self.0
            .lock()
            .await
            .as_ref()
            .expect("open")
            .read(from, to, max)
            .await
    }
    fn subscribe(&self, from: u64) -> orrery_storage::Subscription {
        self.0
            .try_lock()
            .expect("not contended")
            .as_ref()
            .expect("open")
            .subscribe(from)
    }
    fn last_applied(&self) -> u64 {
        self.0
            .try_lock()
            .expect("not contended")
            .as_ref()
            .expect("open")
            .last_applied()
    }
    fn leader(&self) -> orrery_storage::LeaderInfo {
        self.0
            .try_lock()
            .expect("not contended")
            .as_ref()
            .expect("open")
            .leader()
    }
    async fn snapshot_now(&self) -> Result<u64, orrery_storage::Fatal> {
        self.0
            .lock()
            .await
            .as_ref()
            .expect("open")
            .snapshot_now()
            .await
    }
    async fn digest(&self) -> Vec<u8> {
        self.0.lock().await.as_ref().expect("open").digest().await
    }
}

impl Harness for MemoryHarness {
    type Log = SharedMemory;

    async fn open(&mut self) -> SharedMemory {
        let log = match self.stashed.take() {
            Some(old) => old.reopen(CheckingMachine::default()).expect("reopen"),
            None => MemoryLog::new(CheckingMachine::default()),
        };
        SharedMemory(std::sync::Arc::new(tokio::sync::Mutex::new(Some(log))))
    }

    async fn crash(&mut self, log: SharedMemory) {
        self.stashed = log.0.lock().await.take();
    }
}

#[tokio::test]
async fn memory_gap_free_indexes() {
    conformance::gap_free_indexes(&mut MemoryHarness::default()).await;
}
#[tokio::test]
async fn memory_read_your_writes() {
    conformance::read_your_writes(&mut MemoryHarness::default()).await;
}
#[tokio::test]
async fn memory_subscribe_resumes_exactly() {
    conformance::subscribe_resumes_exactly(&mut MemoryHarness::default()).await;
}
#[tokio::test]
async fn memory_snapshot_plus_tail() {
    conformance::snapshot_plus_tail_equals_full_replay(&mut MemoryHarness::default()).await;
}
#[tokio::test]
async fn memory_acknowledged_appends_survive_restart() {
    conformance::acknowledged_appends_survive_restart(&mut MemoryHarness::default()).await;
}

// --- raft (one replica, real disk, real tonic on loopback) ----------------

struct RaftHarness {
    dir: tempfile::TempDir,
    port: u16,
}

fn free_port() -> u16 {
    orrery_storage::ports::free_port().expect("a free port")
}

impl RaftHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
        }
    }

    fn config(&self) -> RaftConfig {
        let addr = format!("127.0.0.1:{}", self.port);
        let mut c = RaftConfig::new(
            1,
            addr.parse().expect("addr"),
            BTreeMap::from([(1, addr)]),
            PathBuf::from(self.dir.path()),
        );
        c.election_timeout_ms = 300;
        c.heartbeat_ms = 50;
        c
    }
}

impl Harness for RaftHarness {
    type Log = RaftNode<CheckingMachine>;

    async fn open(&mut self) -> RaftNode<CheckingMachine> {
        let node = RaftNode::start(self.config(), CheckingMachine::default())
            .await
            .expect("start");
        node.wait_for_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        // A restarted leader re-applies committed entries before serving.
        let mut rx = node.raft().metrics();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = rx.borrow_and_update().clone();
                if m.state == openraft::ServerState::Leader
                    && m.last_applied.map(|l| l.index) >= m.last_log_index
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        node
    }

    async fn crash(&mut self, log: RaftNode<CheckingMachine>) {
        log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_gap_free_indexes() {
    conformance::gap_free_indexes(&mut RaftHarness::new()).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_read_your_writes() {
    conformance::read_your_writes(&mut RaftHarness::new()).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_subscribe_resumes_exactly() {
    conformance::subscribe_resumes_exactly(&mut RaftHarness::new()).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_snapshot_plus_tail() {
    conformance::snapshot_plus_tail_equals_full_replay(&mut RaftHarness::new()).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_acknowledged_appends_survive_restart() {
    conformance::acknowledged_appends_survive_restart(&mut RaftHarness::new()).await;
}
