//! The TiKV backend: the same conformance suite as the raft backend, and its
//! failure behaviour (TiKV unreachable, a lease lost, fencing).
//!
//! Against a real TiKV when `ORRERY_TIKV_PD` names its PD (`host:port`;
//! README, "TiKV backend"); otherwise against the in-process PD + TiKV
//! **test double** (`orrery_storage::tikv::double`), so `.ci/run` exercises
//! the backend's own code and tikv-client's gRPC calls on every run. The
//! failure tests switch the double off, so they run on the double only.

use std::time::Duration;

use orrery_storage::conformance::{self, CheckingMachine, Harness};
use orrery_storage::tikv::double::TikvTestDouble;
use orrery_storage::tikv::{TikvConfig, TikvLog};
use orrery_storage::{AppendError, EventLog};

struct TikvHarness {
    cfg: TikvConfig,
    _double: Option<TikvTestDouble>,
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("orrery-test/{test}/{}-{nanos}", std::process::id())
}

fn config(pd: &str, test: &str, node_id: u64) -> TikvConfig {
    let mut cfg = TikvConfig::from_url(
        &format!("tikv://{pd}/{}", unique_prefix(test)),
        node_id,
        format!("master-{node_id}:7000"),
    )
    .expect("a valid store URL");
    // Short leases keep the failover tests quick.
    cfg.lease_ttl = Duration::from_millis(900);
    cfg.poll = Duration::from_millis(20);
    cfg.request_timeout = Duration::from_millis(800);
    cfg
}

impl TikvHarness {
    async fn new(test: &str) -> Self {
        match std::env::var("ORRERY_TIKV_PD") {
            Ok(pd) if !pd.is_empty() => Self {
                cfg: config(&pd, test, 1),
                _double: None,
            },
            _ => {
                let double = TikvTestDouble::start()
                    .await
                    .expect("start the test double");
                Self {
                    cfg: config(&double.pd_endpoint(), test, 1),
                    _double: Some(double),
                }
            }
        }
    }
}

impl Harness for TikvHarness {
    type Log = TikvLog<CheckingMachine>;

    async fn open(&mut self) -> Self::Log {
        let log = TikvLog::open(self.cfg.clone(), CheckingMachine::default())
            .await
            .expect("open the TiKV log");
        log.wait_leader(Duration::from_secs(10))
            .await
            .expect("lead the log");
        log
    }

    async fn crash(&mut self, log: Self::Log) {
        drop(log);
    }
}

#[tokio::test]
async fn tikv_gap_free_indexes() {
    conformance::gap_free_indexes(&mut TikvHarness::new("gap-free").await).await;
}

#[tokio::test]
async fn tikv_read_your_writes() {
    conformance::read_your_writes(&mut TikvHarness::new("ryw").await).await;
}

#[tokio::test]
async fn tikv_subscribe_resumes_exactly() {
    conformance::subscribe_resumes_exactly(&mut TikvHarness::new("subscribe").await).await;
}

#[tokio::test]
async fn tikv_snapshot_plus_tail() {
    conformance::snapshot_plus_tail_equals_full_replay(&mut TikvHarness::new("snapshot").await)
        .await;
}

#[tokio::test]
async fn tikv_acknowledged_appends_survive_restart() {
    conformance::acknowledged_appends_survive_restart(&mut TikvHarness::new("durable").await).await;
}

async fn double_and_leader(
    test: &str,
    snapshot_every: u64,
) -> (TikvTestDouble, TikvConfig, TikvLog<CheckingMachine>) {
    let double = TikvTestDouble::start()
        .await
        .expect("start the test double");
    let mut cfg = config(&double.pd_endpoint(), test, 1);
    cfg.snapshot_every = snapshot_every;
    let log = TikvLog::open(cfg.clone(), CheckingMachine::default())
        .await
        .expect("open");
    log.wait_leader(Duration::from_secs(10))
        .await
        .expect("lead");
    (double, cfg, log)
}

/// TiKV unreachable: appends fail with Unavailable, health says why, and
/// nothing acknowledged before is lost; once TiKV is back, appends go on
/// after the last acknowledged index.
#[tokio::test]
async fn tikv_unreachable_fails_appends_with_unavailable() {
    let (double, cfg, log) = double_and_leader("unreachable", 0).await;
    for i in 0..10u8 {
        log.append(vec![vec![i]]).await.expect("append");
    }
    assert!(log.health().is_none(), "healthy: {:?}", log.health());
    double.set_down(true);
    let down = std::time::Instant::now();
    // No renewal succeeds: the replica stops leading within two thirds of
    // the TTL (600 ms) of its last renewal, before its lease could expire
    // for the others (900 ms after that renewal).
    while log.leader().is_leader {
        assert!(
            down.elapsed() < Duration::from_millis(700),
            "still leading {:?} after TiKV went away",
            down.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = log.append(vec![b"lost?".to_vec()]).await.expect_err("down");
    match &err {
        // Unavailable, or (if the lease lapsed first) no longer the leader.
        AppendError::Unavailable(_) | AppendError::NotLeader { .. } => {}
        other => panic!("TiKV down must fail the append as Unavailable, not {other:?}"),
    }
    let why = log.health().expect("health names the problem");
    assert!(why.contains("TiKV"), "health: {why}");
    double.set_down(false);
    // The replica leads again (its own lease, a new term) and goes on.
    log.wait_leader(Duration::from_secs(10))
        .await
        .expect("lead again");
    let r = log
        .append(vec![b"after".to_vec()])
        .await
        .expect("append after");
    assert!(
        *r.start() == 11 || *r.start() == 12,
        "appends go on after the acknowledged ones (the failed one may have committed): {r:?}"
    );
    assert!(log.health().is_none(), "healthy again: {:?}", log.health());
    drop(log);
    // A fresh replica sees every acknowledged event.
    let again = TikvLog::open(cfg, CheckingMachine::default())
        .await
        .expect("reopen");
    let events = again.read(1, u64::MAX, 100).await.expect("read");
    for i in 0..10u8 {
        assert_eq!(
            events[i as usize].payload,
            vec![i],
            "acknowledged event {i}"
        );
    }
    assert_eq!(
        events.last().map(|e| e.payload.clone()),
        Some(b"after".to_vec())
    );
}

/// Two replicas on one log: one leads, the other follows and applies what
/// it commits; when the leader stops renewing, the other takes over at a
/// higher term, and the old leader has stepped down before that.
#[tokio::test]
async fn tikv_lease_failover_and_followers() {
    let (double, cfg_a, a) = double_and_leader("failover", 8).await;
    let mut cfg_b = cfg_a.clone();
    cfg_b.node_id = 2;
    cfg_b.addr = "master-2:7000".into();
    let b = TikvLog::open(cfg_b, CheckingMachine::default())
        .await
        .expect("open b");
    for i in 0..20u8 {
        a.append(vec![vec![i]]).await.expect("append on the leader");
    }
    // b follows: same state, knows who leads, refuses appends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.last_applied() < 20 {
        assert!(std::time::Instant::now() < deadline, "b never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.digest().await, b.digest().await, "follower digest");
    // Snapshots every 8 events: the leader purges, and the follower drops
    // what the snapshot covers from its memory too.
    while a.latest_snapshot().is_none() || b.latest_snapshot().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshots: leader {:?}, follower {:?}",
            a.latest_snapshot().map(|s| s.0),
            b.latest_snapshot().map(|s| s.0)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match b.read(1, u64::MAX, 10).await {
        Err(orrery_storage::ReadError::Compacted { first_available }) => {
            assert!(first_available > 8, "{first_available}")
        }
        other => panic!("the follower's early events are covered by a snapshot: {other:?}"),
    }
    let first_key = [cfg_a.prefix.as_bytes(), b"/L", &1u64.to_be_bytes()].concat();
    assert!(
        !double.dump().iter().any(|(k, _)| *k == first_key),
        "event 1 was purged from TiKV"
    );
    let term_a = a.leader().term;
    match b.append(vec![b"x".to_vec()]).await {
        Err(AppendError::NotLeader {
            leader_id: Some(1),
            leader_addr: Some(addr),
        }) => assert_eq!(addr, "master-1:7000"),
        other => panic!("a follower must redirect to the leader, got {other:?}"),
    }
    // a stops renewing (closed: its lease lapses); b takes over.
    a.close();
    assert!(!a.leader().is_leader, "a closed replica steps down at once");
    let term_b = b
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("b leads");
    assert!(
        term_b > term_a,
        "a takeover moves the term ({term_a} -> {term_b})"
    );
    let r = b.append(vec![b"b".to_vec()]).await.expect("append on b");
    assert_eq!(*r.start(), 21);
    match a.append(vec![b"late".to_vec()]).await {
        Err(AppendError::NotLeader { .. }) => {}
        other => panic!("the old leader must refuse, got {other:?}"),
    }
    drop(double);
}

/// Fencing: a deposed leader that still believes it leads cannot commit,
/// because the new leader moved the tail to its term.
#[tokio::test]
async fn tikv_deposed_leader_cannot_commit() {
    let (double, cfg_a, a) = double_and_leader("fencing", 0).await;
    a.append(vec![b"one".to_vec()]).await.expect("append");
    // Someone else takes the lease and fences the tail behind a's back (as
    // a replica whose clock ran fast would).
    let mut cfg_b = cfg_a.clone();
    cfg_b.node_id = 2;
    let prefix = cfg_a.prefix.clone();
    let tail_key = [prefix.as_bytes(), b"/T"].concat();
    let lease_key = [prefix.as_bytes(), b"/E"].concat();
    use prost::Message;
    let tail = orrery_proto::tikvlog::Tail::decode(
        double
            .dump()
            .iter()
            .find(|(k, _)| *k == tail_key)
            .expect("a tail")
            .1
            .as_slice(),
    )
    .expect("tail decodes");
    let higher = tail.term + 10;
    double.put_raw(
        lease_key,
        orrery_proto::tikvlog::Lease {
            holder_id: 2,
            holder_addr: "master-2:7000".into(),
            term: higher,
            expires_unix_ms: u64::MAX / 2,
        }
        .encode_to_vec(),
    );
    double.put_raw(
        tail_key,
        orrery_proto::tikvlog::Tail {
            term: higher,
            last_index: tail.last_index,
        }
        .encode_to_vec(),
    );
    match a.append(vec![b"two".to_vec()]).await {
        Err(AppendError::NotLeader { .. }) => {}
        other => panic!("a fenced leader must not commit, got {other:?}"),
    }
    assert!(!a.leader().is_leader, "and it steps down");
    let b = TikvLog::open(cfg_b, CheckingMachine::default())
        .await
        .expect("open b");
    assert_eq!(b.last_applied(), 1, "\"two\" never committed");
}

/// Corrupt bytes under the prefix stop the replica with an error naming the
/// key; nothing is skipped.
#[tokio::test]
async fn tikv_corrupt_entry_is_named_not_skipped() {
    let (double, cfg, a) = double_and_leader("corrupt", 0).await;
    a.append(vec![b"one".to_vec(), b"two".to_vec()])
        .await
        .expect("append");
    drop(a);
    let mut key = format!("{}/L", cfg.prefix).into_bytes();
    key.extend_from_slice(&2u64.to_be_bytes());
    double.put_raw(key, vec![0xff, 0xff, 0xff]);
    let err = TikvLog::open(cfg, CheckingMachine::default())
        .await
        .expect_err("a corrupt entry must stop the replica");
    let text = err.to_string();
    assert!(
        text.contains("corrupt log entry") && text.contains("/L/2"),
        "names the entry: {text}"
    );
}

/// A clean shutdown hands the lease back: the other replica takes over
/// without waiting out the TTL.
#[tokio::test]
async fn tikv_clean_shutdown_hands_the_lease_over() {
    let double = TikvTestDouble::start()
        .await
        .expect("start the test double");
    let mut cfg_a = config(&double.pd_endpoint(), "handover", 1);
    // A lease long enough that waiting it out (at least 5 s - 5/3 s since
    // the last renewal) is told apart from a handover (at most one
    // acquisition round, 5/3 s, plus a poll).
    cfg_a.lease_ttl = Duration::from_secs(5);
    let a = TikvLog::open(cfg_a.clone(), CheckingMachine::default())
        .await
        .expect("open a");
    a.wait_leader(Duration::from_secs(10))
        .await
        .expect("a leads");
    a.append(vec![b"one".to_vec()]).await.expect("append");
    let mut cfg_b = cfg_a.clone();
    cfg_b.node_id = 2;
    let b = TikvLog::open(cfg_b, CheckingMachine::default())
        .await
        .expect("open b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!b.leader().is_leader, "b follows while a holds the lease");
    let t = std::time::Instant::now();
    a.shutdown().await;
    b.wait_leader(Duration::from_secs(10))
        .await
        .expect("b leads");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a handed-back lease is taken within one acquisition round: {:?}",
        t.elapsed()
    );
    assert_eq!(b.last_applied(), 1);
}
