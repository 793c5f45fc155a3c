//! Masters joining and leaving a running group, with real `orrery master`
//! processes on loopback: grow 3 -> 5 and shrink 5 -> 3 under a stream of
//! appends with no acknowledged event lost; replace a master whose disk is
//! gone (remove it, join a new id); a promotion cut short by kill -9 of the
//! leader completes or rolls back cleanly. Each checks the refusals it meets
//! on the way and that the log records the changes. Children are killed when
//! a test ends, pass or fail (see common.rs).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use orrery_events::pb::envelope::Payload;

/// Bootstraps masters 1, 2 and 3 (of however many `m` has room for) and
/// returns their leader.
async fn start_three(m: &Masters) -> u64 {
    let first = [1, 2, 3];
    for id in first {
        m.spawn(
            id,
            m.command_with(&["master"], id, &m.peers_of(&first), &[]),
        );
    }
    m.leader_among(&first, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()))
        .0
}

/// `orrery --master .. ARGS` off the async workers: (code, stdout, stderr).
async fn run_cli(m: &Masters, masters: &[u64], args: &[&str]) -> (Option<i32>, String, String) {
    let list = masters
        .iter()
        .map(|id| m.addrs[id].clone())
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_at(list)(&args)
    })
    .await
    .expect("the cli thread")
}

/// `orrery masters list --json`, parsed.
async fn group(m: &Masters, masters: &[u64]) -> serde_json::Value {
    let (code, out, err) = run_cli(m, masters, &["--json", "masters", "list"]).await;
    assert_eq!(code, Some(0), "masters list: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn roles(g: &serde_json::Value) -> Vec<(u64, String)> {
    g["masters"]
        .as_array()
        .expect("masters")
        .iter()
        .map(|x| {
            (
                x["id"].as_u64().expect("id"),
                x["role"].as_str().expect("role").to_owned(),
            )
        })
        .collect()
}

fn voters(g: &serde_json::Value) -> BTreeSet<u64> {
    roles(g)
        .into_iter()
        .filter(|(_, r)| r != "learner")
        .map(|(id, _)| id)
        .collect()
}

/// Starts master `id` with `orrery master join`, reaching the group by
/// `via`, and waits until the group lists it as a learner and the log
/// has recorded the change.
async fn join(m: &Masters, id: u64, via: &[u64]) {
    m.spawn(
        id,
        m.command_with(&["master", "join"], id, &m.peers_of(via), &[]),
    );
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let g = group(m, via).await;
        if roles(&g).contains(&(id, "learner".into())) && g["pending"] == "" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "master {id} did not join: {g}\n{}",
            m.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `orrery masters add ID`, retried while the learner catches up.
async fn promote(m: &Masters, id: u64, via: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = run_cli(m, via, &["masters", "add", &id.to_string()]).await;
        if code == Some(0) {
            assert!(out.contains("voter") || out.contains("leader"), "{out}");
            return;
        }
        assert!(
            err.contains("not_caught_up") && Instant::now() < deadline,
            "promoting master {id}: {err}\n{}",
            m.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn remove(m: &Masters, id: u64, via: &[u64]) {
    let (code, out, err) = run_cli(m, via, &["masters", "remove", &id.to_string()]).await;
    assert_eq!(code, Some(0), "removing master {id}: {err}\n{}", m.logs());
    assert!(!out.contains(&format!("\n{id} ")), "{out}");
}

/// The masters' group events in the log, in order.
fn group_events(events: &[orrery_proto::raft::LoggedEvent]) -> Vec<Payload> {
    events
        .iter()
        .filter_map(|e| orrery_events::codec::decode(&e.payload).ok())
        .filter_map(|env| env.payload)
        .filter(|p| {
            matches!(
                p,
                Payload::MastersChangeRequested(_) | Payload::MastersChanged(_)
            )
        })
        .collect()
}

fn payload_ids(events: &[orrery_proto::raft::LoggedEvent]) -> BTreeSet<u64> {
    events
        .iter()
        .filter_map(|e| orrery_events::codec::decode(&e.payload).ok())
        .filter(|env| matches!(env.payload, Some(Payload::RoleWeightsSet(_))))
        .map(|env| env.proposed_at_ms)
        .collect()
}

async fn leader_of(m: &Masters, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let g = group(m, ids).await;
        if let Some(l) = g["leader_id"].as_u64().filter(|l| *l != 0) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader among {ids:?}\n{}", m.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_3_to_5_and_shrink_to_3_under_appends_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let m = Arc::new(Masters::new(5, &[]));
    let first = [1, 2, 3];
    start_three(&m).await;
    let ids = Arc::new(Mutex::new(first.to_vec()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = spawn_writer(m.clone(), ids.clone(), stop.clone(), acked.clone(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new master cannot bootstrap its way in: it must join.
    let (status, err) = run_to_exit(
        &mut m.command_with(&["master"], 4, &m.peers_of(&[1, 2, 3, 4, 5]), &[]),
        Duration::from_secs(20),
    );
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(err.contains("orrery master join"), "{err}");
    std::fs::remove_dir_all(m.data_dir(4)).ok();

    // Grow: each joins as a learner, catches up, then is promoted.
    for id in [4, 5] {
        join(&m, id, &first).await;
        // A learner's promotion is refused while it lags; a second join of
        // the same id is refused (it is in the group).
        promote(&m, id, &first).await;
        ids.lock().unwrap().push(id);
        let (code, _, err) = run_cli(&m, &first, &["masters", "add", &id.to_string()]).await;
        assert_ne!(code, Some(0));
        assert!(err.contains("already_voter"), "{err}");
    }
    let all = [1, 2, 3, 4, 5];
    let g = group(&m, &all).await;
    assert_eq!(voters(&g), BTreeSet::from(all), "{g}");
    assert!(!g["joint"].as_bool().unwrap(), "{g}");
    let before = acked.lock().unwrap().len();

    // The leader cannot remove itself.
    let leader = leader_of(&m, &all).await;
    let (code, _, err) = run_cli(&m, &all, &["masters", "remove", &leader.to_string()]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("leader_removal"), "{err}");

    // Shrink: remove two voters that do not lead, then stop them.
    let gone: Vec<u64> = all
        .iter()
        .copied()
        .filter(|i| *i != leader)
        .take(2)
        .collect();
    for id in &gone {
        remove(&m, *id, &all).await;
        ids.lock().unwrap().retain(|i| i != id);
        m.kill9(*id);
    }
    let rest: Vec<u64> = all.iter().copied().filter(|i| !gone.contains(i)).collect();
    let g = group(&m, &rest).await;
    assert_eq!(voters(&g), rest.iter().copied().collect(), "{g}");
    let retired: BTreeSet<u64> = g["retired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(retired, gone.iter().copied().collect(), "{g}");

    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    assert!(
        acked.len() > before,
        "appends went on after the group grew ({before} -> {})",
        acked.len()
    );
    let n = m
        .converged(&rest, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
    let log = m.read_all(leader).await;
    let lost: Vec<u64> = acked.difference(&payload_ids(&log)).copied().collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    // The log tells the story: 4 requests (join 4, add 4, join 5, add 5)
    // and 2 removals, each followed by the group raft committed.
    let story = group_events(&log);
    let requests = story
        .iter()
        .filter(|p| matches!(p, Payload::MastersChangeRequested(_)))
        .count();
    assert_eq!(requests, 6, "{story:?}");
    assert!(
        story.windows(2).step_by(2).all(|w| matches!(
            (&w[0], &w[1]),
            (Payload::MastersChangeRequested(_), Payload::MastersChanged(c)) if c.outcome.is_empty()
        )),
        "{story:?}"
    );
    // `orrery replay` shows them.
    let (code, out, err) = run_cli(&m, &rest, &["replay", "log"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("MastersChanged") && out.contains("voters"),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );
    eprintln!(
        "grew to 5 and shrank to {rest:?}; {} acknowledged, {n} events in the log",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_disk_is_gone_is_replaced_by_a_new_id() {
    let _serial = SERIAL.lock().await;
    // Snapshots every 10 entries, 5 kept: the new master must catch up from
    // a snapshot, not the log.
    let m = Masters::new(4, &["--snapshot-every", "10", "--keep-after-snapshot", "5"]);
    let first = [1, 2, 3];
    let leader = start_three(&m).await;
    for n in 0..20 {
        m.append_via_leader(vec![event(n)], Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
    }
    let purged = m
        .status(leader)
        .await
        .and_then(|s| s.purged)
        .map_or(0, |p| p.index);
    assert!(purged > 0, "the leader purged its log\n{}", m.logs());
    // A follower's disk is lost.
    let lost = *first.iter().find(|i| **i != leader).unwrap();
    let others: Vec<u64> = first.iter().copied().filter(|i| *i != lost).collect();
    m.kill9(lost);
    std::fs::remove_dir_all(m.data_dir(lost)).unwrap();
    // It may not come back empty under its old id as a plain member...
    let (status, err) = run_to_exit(
        &mut m.command_with(&["master"], lost, &m.peers_of(&first), &[]),
        Duration::from_secs(20),
    );
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(err.contains("--rebuild"), "{err}");
    // ...nor join under it while it is a voter.
    let (status, err) = run_to_exit(
        &mut m.command_with(&["master", "join"], lost, &m.peers_of(&others), &[]),
        Duration::from_secs(20),
    );
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(err.contains("already counts master"), "{err}");
    std::fs::remove_dir_all(m.data_dir(lost)).ok();

    remove(&m, lost, &others).await;
    // Its id is retired.
    let (status, err) = run_to_exit(
        &mut m.command_with(&["master", "join"], lost, &m.peers_of(&others), &[]),
        Duration::from_secs(30),
    );
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(err.contains("never used again"), "{err}");
    std::fs::remove_dir_all(m.data_dir(lost)).ok();

    // The replacement: a new id joins, catches up (by snapshot if the log
    // was purged) and is promoted.
    join(&m, 4, &others).await;
    promote(&m, 4, &others).await;
    let st = m.status(4).await.expect("master 4 answers");
    assert!(
        st.snapshot_last_log_id.is_some_and(|l| l.index > 0),
        "master 4 caught up from a snapshot: {st:?}"
    );
    let now: Vec<u64> = others.iter().copied().chain([4]).collect();
    let g = group(&m, &now).await;
    assert_eq!(voters(&g), now.iter().copied().collect(), "{g}");
    m.converged(&now, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));

    // A removal that would leave no quorum that answers is refused: with
    // one of the three down, removing another voter leaves one of two.
    let leader = leader_of(&m, &now).await;
    let follower = *now.iter().find(|i| **i != leader).unwrap();
    let other = *now
        .iter()
        .find(|i| **i != leader && **i != follower)
        .unwrap();
    m.kill9(follower);
    let (code, _, err) = run_cli(&m, &now, &["masters", "remove", &other.to_string()]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("no_quorum"), "{err}");
    let g = group(&m, &[leader, other]).await;
    assert_eq!(voters(&g), now.iter().copied().collect(), "{g}");
    assert_eq!(g["pending"], "", "{g}");
}

/// One promotion of learner 4 cut short by kill -9 of the leader: `pause`
/// holds the change at a step (see orrery_gateway::masters), or "" kills
/// at a moment of the test's choosing. Returns whether it completed.
async fn promotion_cut_short(pause: &str, kill_after: Duration) -> bool {
    let m = Masters::new(4, &[]);
    let first = [1, 2, 3];
    for id in first {
        let mut cmd = m.command_with(&["master"], id, &m.peers_of(&first), &[]);
        cmd.env("ORRERY_TEST_MEMBERSHIP_PAUSE", pause);
        m.spawn(id, cmd);
    }
    let (leader, _) = m
        .leader_among(&first, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    join(&m, 4, &first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = first.map(|id| m.addrs[&id].clone()).join(",");
    let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env("ORRERY_INSECURE", "1")
        .args(["--master", &list, "masters", "add", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the cli");
    if pause == "before-raft" {
        // While that change is held, a second one is refused by name.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, _, err) = run_cli(&m, &first, &["masters", "remove", "4"]).await;
        assert_ne!(code, Some(0));
        assert!(err.contains("change_in_progress"), "{err}");
    }
    tokio::time::sleep(kill_after).await;
    m.kill9(leader);
    let add_status =
        tokio::task::spawn_blocking(move || wait_exit(&mut add, Duration::from_secs(30)))
            .await
            .unwrap();
    let survivors: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != leader).collect();
    // Whatever the CLI saw, the group settles: no joint configuration, no
    // pending request, and the log's last record matches raft.
    let deadline = Instant::now() + Duration::from_secs(30);
    let g = loop {
        let (code, out, _) = run_cli(&m, &survivors, &["--json", "masters", "list"]).await;
        if code == Some(0) {
            let g: serde_json::Value = serde_json::from_str(&out).unwrap();
            if !g["joint"].as_bool().unwrap() && g["pending"] == "" {
                break g;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle ({pause:?}): {out}\n{}",
            m.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let v = voters(&g);
    let completed = v == BTreeSet::from([1, 2, 3, 4]);
    assert!(
        completed || v == BTreeSet::from([1, 2, 3]),
        "neither the old nor the new group ({pause:?}): {g}"
    );
    let new_leader = g["leader_id"].as_u64().unwrap();
    let log = m.read_all(new_leader).await;
    let story = group_events(&log);
    let Some(Payload::MastersChanged(last)) = story.last() else {
        panic!("the change was not settled in the log ({pause:?}): {story:?}");
    };
    let recorded: BTreeSet<u64> = last
        .members
        .iter()
        .filter(|x| x.voter)
        .map(|x| x.node_id)
        .collect();
    assert_eq!(recorded, v, "{story:?}");
    if !pause.is_empty() {
        // The old leader died with the request pending: the new one said
        // what became of it.
        let want = if completed {
            "settled by master"
        } else {
            "rolled back"
        };
        assert!(last.outcome.contains(want), "{pause:?}: {story:?}");
    }
    eprintln!(
        "{pause:?}: the cut-short promotion {} (outcome {:?}; the CLI exited {add_status:?})",
        if completed {
            "completed"
        } else {
            "rolled back"
        },
        last.outcome
    );
    // The old leader comes back and the group converges, writes and all.
    m.spawn(
        leader,
        m.command_with(&["master"], leader, &m.peers_of(&first), &[]),
    );
    m.append_via_leader(vec![event(7)], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
    m.converged(&[1, 2, 3, 4], Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
    completed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_cut_short_by_kill9_of_the_leader_completes_or_rolls_back() {
    let _serial = SERIAL.lock().await;
    // Killed after the request was recorded, before raft heard of it: the
    // next leader records it as rolled back.
    assert!(!promotion_cut_short("before-raft", Duration::from_millis(1000)).await);
    // Killed after raft committed the new group, before it was recorded:
    // the next leader records it as done.
    assert!(promotion_cut_short("before-record", Duration::from_millis(1000)).await);
    // Killed at once, wherever the change is (a joint configuration is
    // completed by the next leader): either ending is clean.
    promotion_cut_short("", Duration::from_millis(5)).await;
}
