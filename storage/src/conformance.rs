//! One conformance suite for every backend (openraft's habit: the same
//! tests hold every storage implementation to the same contract).
//!
//! A backend provides a [`Harness`] that opens its log over durable state
//! and can "crash" it (drop it without a clean shutdown) and open it again.
//! Each check panics with a message naming what broke.
//!
//! The checks: gap-free indexes under concurrent appends; read-your-writes
//! after commit; a subscription resumes exactly where asked; snapshot + tail
//! equals full replay (same digest); every acknowledged append survives a
//! crash and restart.

use std::future::Future;

use crate::api::{EventLog, ReadError, StateMachine};
use crate::LoggedEvent;

/// A state machine that checks what storage feeds it: indexes must arrive
/// gap-free, and its digest is a hash chain over every (index, payload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckingMachine {
    pub last_index: u64,
    pub count: u64,
    pub chain: u64,
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl StateMachine for CheckingMachine {
    fn apply(&mut self, e: &LoggedEvent) -> Result<(), String> {
        if e.index != self.last_index + 1 {
            return Err(format!(
                "gap: expected event {}, got {}",
                self.last_index + 1,
                e.index
            ));
        }
        self.last_index = e.index;
        self.count += 1;
        self.chain = fnv(
            fnv(self.chain ^ 0xcbf2_9ce4_8422_2325, &e.index.to_le_bytes()),
            &e.payload,
        );
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        [self.last_index, self.count, self.chain]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() != 24 {
            return Err(format!(
                "a CheckingMachine snapshot is 24 bytes, not {}",
                bytes.len()
            ));
        }
        let word =
            |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        self.last_index = word(0);
        self.count = word(1);
        self.chain = word(2);
        Ok(())
    }

    fn digest(&self) -> Vec<u8> {
        self.snapshot()
    }
}

/// How the suite drives one backend.
pub trait Harness {
    type Log: EventLog + Clone;
    /// Opens the log over this harness's durable state (fresh the first
    /// time, recovered after a crash).
    fn open(&mut self) -> impl Future<Output = Self::Log>;
    /// Drops the log without a clean shutdown.
    fn crash(&mut self, log: Self::Log) -> impl Future<Output = ()>;
}

fn payload(tag: &str, i: u64) -> Vec<u8> {
    format!("{tag}-{i}").into_bytes()
}

async fn read_all<L: EventLog>(log: &L, from: u64) -> Vec<LoggedEvent> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = log.read(next, u64::MAX, 1000).await.expect("read");
        if batch.is_empty() {
            return out;
        }
        next = batch.last().expect("non-empty").index + 1;
        out.extend(batch);
    }
}

/// Concurrent appends get disjoint ranges that tile 1..=N with no gap, and
/// each index holds what its appender wrote.
pub async fn gap_free_indexes<H: Harness>(h: &mut H) {
    let log = h.open().await;
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..20u64 {
                let n = 1 + (w + i) % 5;
                let batch: Vec<Vec<u8>> =
                    (0..n).map(|k| payload(&format!("w{w}-{i}"), k)).collect();
                let range = log.append(batch.clone()).await.expect("append");
                assert_eq!(
                    range.clone().count() as u64,
                    n,
                    "a batch of {n} got range {range:?}"
                );
                acked.push((range, batch));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("appender task"));
    }
    acked.sort_by_key(|(r, _)| *r.start());
    let mut expect = 1;
    for (r, _) in &acked {
        assert_eq!(
            *r.start(),
            expect,
            "ranges must tile the log with no gap or overlap"
        );
        expect = r.end() + 1;
    }
    let events = read_all(&log, 1).await;
    assert_eq!(
        events.len() as u64,
        expect - 1,
        "read returns every committed event"
    );
    for (r, batch) in &acked {
        for (k, idx) in r.clone().enumerate() {
            let e = &events[(idx - 1) as usize];
            assert_eq!(e.index, idx, "read returns events in index order");
            assert_eq!(
                e.payload, batch[k],
                "event {idx} holds what its appender wrote"
            );
        }
    }
    assert_eq!(log.last_applied(), expect - 1);
    h.crash(log).await;
}

/// After an append returns, a read sees exactly what it wrote.
pub async fn read_your_writes<H: Harness>(h: &mut H) {
    let log = h.open().await;
    for i in 0..50u64 {
        let p = payload("ryw", i);
        let r = log.append(vec![p.clone()]).await.expect("append");
        let got = log.read(*r.start(), r.end() + 1, 10).await.expect("read");
        assert_eq!(got.len(), 1, "read after append {i}");
        assert_eq!(got[0].payload, p);
        assert_eq!(got[0].index, *r.start());
    }
    h.crash(log).await;
}

/// A subscription yields exactly from where it was asked, then waits for
/// and yields new events, never skipping one.
pub async fn subscribe_resumes_exactly<H: Harness>(h: &mut H) {
    let log = h.open().await;
    for i in 0..100u64 {
        log.append(vec![payload("sub", i)]).await.expect("append");
    }
    let mut sub = log.subscribe(37);
    for want in 37..=100u64 {
        let e = sub.next().await.expect("next");
        assert_eq!(e.index, want, "subscription from 37");
        assert_eq!(e.payload, payload("sub", want - 1));
    }
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 100..110u64 {
                log.append(vec![payload("sub", i)]).await.expect("append");
            }
        })
    };
    for want in 101..=110u64 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .expect("a new event within 10 s")
            .expect("next");
        assert_eq!(e.index, want, "subscription continues with new events");
    }
    writer.await.expect("writer");
    h.crash(log).await;
}

/// Snapshot, more appends, crash, reopen: the state equals the live one,
/// and what the snapshot compacted is reported as such, not skipped.
pub async fn snapshot_plus_tail_equals_full_replay<H: Harness>(h: &mut H) {
    let log = h.open().await;
    for i in 0..200u64 {
        log.append(vec![payload("snap", i)]).await.expect("append");
    }
    let covered = log.snapshot_now().await.expect("snapshot");
    assert!(
        covered >= 200,
        "the snapshot covers what was applied ({covered})"
    );
    for i in 200..300u64 {
        log.append(vec![payload("snap", i)]).await.expect("append");
    }
    let live = log.digest().await;
    let mut full = CheckingMachine::default();
    for i in 0..300u64 {
        full.apply(&LoggedEvent {
            index: i + 1,
            term: 0,
            payload: payload("snap", i),
        })
        .expect("apply");
    }
    assert_eq!(live, full.digest(), "the live state equals a full replay");
    h.crash(log).await;
    let log = h.open().await;
    assert_eq!(
        log.last_applied(),
        300,
        "restart replays the snapshot and the tail"
    );
    assert_eq!(
        log.digest().await,
        full.digest(),
        "snapshot + tail equals full replay"
    );
    match log.read(1, u64::MAX, 10).await {
        Ok(events) => assert_eq!(events.first().map(|e| e.index), Some(1)),
        Err(ReadError::Compacted { first_available }) => {
            assert!(
                first_available <= 201,
                "only what the snapshot covers is compacted ({first_available})"
            )
        }
        Err(e) => panic!("read after restart: {e}"),
    }
    let tail = read_all(&log, 201).await;
    assert_eq!(tail.len(), 100, "the tail after the snapshot is readable");
    h.crash(log).await;
}

/// Every acknowledged append is there after a crash and restart.
pub async fn acknowledged_appends_survive_restart<H: Harness>(h: &mut H) {
    let log = h.open().await;
    let mut acked = Vec::new();
    for i in 0..120u64 {
        let batch = vec![payload("dur", i), payload("dur2", i)];
        let r = log.append(batch.clone()).await.expect("append");
        acked.push((r, batch));
    }
    h.crash(log).await;
    let log = h.open().await;
    let events = read_all(&log, 1).await;
    for (r, batch) in &acked {
        for (k, idx) in r.clone().enumerate() {
            let e = events
                .iter()
                .find(|e| e.index == idx)
                .unwrap_or_else(|| panic!("acknowledged event {idx} is missing after restart"));
            assert_eq!(e.payload, batch[k]);
        }
    }
    // And the log goes on where it stopped.
    let r = log
        .append(vec![b"after".to_vec()])
        .await
        .expect("append after restart");
    assert_eq!(*r.start(), *acked.last().expect("acked").0.end() + 1);
    h.crash(log).await;
}
