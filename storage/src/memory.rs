//! The `memory` backend: a single-replica log held in memory, for tests of
//! everything above storage. "Durable" means: it survives [`MemoryLog::reopen`]
//! (a simulated process restart that keeps the simulated disk), not a real
//! crash. It is held to the same conformance suite as `raft`.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::api::{
    check_batch, AppendError, AppendedRange, EventLog, Fatal, LeaderInfo, LoggedEvent, ReadError,
    StateMachine,
};
use crate::subscription::{EventSource, Subscription};

struct Disk {
    /// Events after the snapshot, in index order.
    events: Vec<LoggedEvent>,
    /// (last event index, bytes) of the latest snapshot.
    snapshot: Option<(u64, Vec<u8>)>,
}

struct Inner<S> {
    disk: Mutex<Disk>,
    machine: Mutex<S>,
    applied: watch::Sender<u64>,
    term: u64,
}

/// A single-replica in-memory log.
pub struct MemoryLog<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> std::fmt::Debug for MemoryLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("applied", &*self.inner.applied.borrow())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere already failed the process's
    // test; continuing with the data is what the other backends would do.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: StateMachine> crate::api::StateAccess<S> for MemoryLog<S> {
    fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&lock(&self.inner.machine))
    }
}

impl<S: StateMachine> MemoryLog<S> {
    pub fn new(machine: S) -> Self {
        Self::from_disk(
            Disk {
                events: Vec::new(),
                snapshot: None,
            },
            machine,
        )
        .expect("an empty log always opens")
    }

    fn from_disk(disk: Disk, mut machine: S) -> Result<Self, Fatal> {
        let mut applied = 0;
        if let Some((index, bytes)) = &disk.snapshot {
            machine.restore(bytes).map_err(|detail| Fatal::Corrupt {
                what: "snapshot",
                location: "memory".into(),
                detail,
            })?;
            applied = *index;
        }
        for e in &disk.events {
            machine.apply(e).map_err(|detail| Fatal::Apply {
                index: e.index,
                detail,
            })?;
            applied = e.index;
        }
        let (tx, _) = watch::channel(applied);
        Ok(Self {
            inner: Arc::new(Inner {
                disk: Mutex::new(disk),
                machine: Mutex::new(machine),
                applied: tx,
                term: 1,
            }),
        })
    }

    /// Simulates a restart: a fresh state machine rebuilt from the retained
    /// snapshot and events.
    pub fn reopen(self, machine: S) -> Result<Self, Fatal> {
        let inner = Arc::try_unwrap(self.inner)
            .map_err(|_| Fatal::Refused("the log is still in use".into()))?;
        let disk = inner.disk.into_inner().unwrap_or_else(|e| e.into_inner());
        Self::from_disk(disk, machine)
    }
}

impl<S: StateMachine> EventSource for Inner<S> {
    fn read_from(&self, from: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        let disk = lock(&self.disk);
        let first = disk.snapshot.as_ref().map_or(1, |(i, _)| i + 1);
        if from < first {
            return Err(ReadError::Compacted {
                first_available: first,
            });
        }
        let start = (from - first) as usize;
        Ok(disk.events.iter().skip(start).take(max).cloned().collect())
    }

    fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

impl<S: StateMachine> EventLog for MemoryLog<S> {
    async fn append(&self, events: Vec<Vec<u8>>) -> Result<AppendedRange, AppendError> {
        check_batch(&events)?;
        let mut disk = lock(&self.inner.disk);
        let mut machine = lock(&self.inner.machine);
        let first = disk.snapshot.as_ref().map_or(0, |(i, _)| *i) + disk.events.len() as u64 + 1;
        let last = first + events.len() as u64 - 1;
        for (k, payload) in events.into_iter().enumerate() {
            let e = LoggedEvent {
                index: first + k as u64,
                term: self.inner.term,
                payload,
            };
            machine.apply(&e).map_err(|detail| Fatal::Apply {
                index: e.index,
                detail,
            })?;
            disk.events.push(e);
        }
        self.inner.applied.send_replace(last);
        Ok(first..=last)
    }

    async fn read(&self, from: u64, to: u64, max: usize) -> Result<Vec<LoggedEvent>, ReadError> {
        let mut out = self.inner.read_from(from.max(1), max)?;
        out.retain(|e| e.index < to);
        Ok(out)
    }

    fn subscribe(&self, from: u64) -> Subscription {
        Subscription::new(self.inner.clone(), from)
    }

    fn last_applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    fn leader(&self) -> LeaderInfo {
        LeaderInfo {
            term: self.inner.term,
            leader_id: Some(1),
            leader_addr: Some("memory".into()),
            is_leader: true,
            ready: true,
        }
    }

    async fn snapshot_now(&self) -> Result<u64, Fatal> {
        let mut disk = lock(&self.inner.disk);
        let machine = lock(&self.inner.machine);
        let last = self.last_applied();
        let bytes = machine.snapshot();
        disk.events.clear();
        disk.snapshot = Some((last, bytes));
        Ok(last)
    }

    async fn digest(&self) -> Vec<u8> {
        lock(&self.inner.machine).digest()
    }
}
