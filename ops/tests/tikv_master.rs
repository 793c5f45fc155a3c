//! `orrery master --store tikv://…` as real processes: two masters share one
//! log kept in TiKV (here the in-process PD + TiKV **test double**, as in
//! `.ci/run`; see storage/tests/tikv.rs for the backend's own suite). One
//! leads; after kill -9 the other takes the lease over and serves the same
//! state; with TiKV unreachable, /health says so.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use orrery_storage::tikv::double::TikvTestDouble;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(id: u64, store: &str, http: &str, dir: &std::path::Path) -> Proc {
    let log = std::fs::File::create(dir.join(format!("m{id}.log"))).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env("ORRERY_INSECURE", "1")
        .args([
            "master",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--store",
            store,
            "--http",
            http,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn orrery master");
    Proc(child)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The id (1 or 2) whose /metrics says it leads, once /health is OK there.
async fn leader(https: &[(u64, String)], within: Duration) -> Option<(u64, f64)> {
    leader_past(https, -1.0, within).await
}

/// As [`leader`], once its commit index is past `index` (a new leader's
/// gauge follows its log a moment after it starts serving).
async fn leader_past(https: &[(u64, String)], index: f64, within: Duration) -> Option<(u64, f64)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for (id, h) in https {
            let Some(m) = try_http(h, "GET", "/metrics", "") else {
                continue;
            };
            if metric(&m, "orrery_is_leader") == Some(1.0)
                && try_http(h, "GET", "/health", "").is_some_and(|r| r.ends_with("OK\n"))
            {
                let at = metric(&m, "orrery_commit_index").unwrap_or(0.0);
                if at > index {
                    return Some((*id, at));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn logs(dir: &std::path::Path) -> String {
    (1..=2)
        .map(|id| std::fs::read_to_string(dir.join(format!("m{id}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_on_tikv_fail_over_and_report_an_unreachable_store() {
    let _serial = SERIAL.lock().await;
    let double = TikvTestDouble::start()
        .await
        .expect("start the test double");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("tikv://{}/orrery-test/masters", double.pd_endpoint());
    let https: Vec<(u64, String)> = (1..=2)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let mut procs: Vec<Option<Proc>> = https
        .iter()
        .map(|(id, h)| Some(start(*id, &store, h, dir.path())))
        .collect();
    let (first, index) = leader(&https, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no master led within 30 s:\n{}", logs(dir.path())));
    assert!(index >= 1.0, "the leader committed its election: {index}");
    let keys = double.dump();
    assert!(
        keys.iter()
            .any(|(k, _)| k.starts_with(b"orrery-test/masters/L")),
        "the events are in TiKV under the prefix"
    );
    // kill -9 the leader: the other takes over once the lease lapses.
    procs[(first - 1) as usize] = None;
    let rest: Vec<(u64, String)> = https
        .iter()
        .filter(|(id, _)| *id != first)
        .cloned()
        .collect();
    // The new leader has the old log and its own election on top.
    let (second, _) = leader_past(&rest, index, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no takeover past the old log (index {index}) within 30 s:\n{}",
                logs(dir.path())
            )
        });
    assert_ne!(second, first);
    // TiKV unreachable: /health says why.
    let h = &rest[0].1;
    double.set_down(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let said = loop {
        let r = try_http(h, "GET", "/health", "").unwrap_or_default();
        if r.contains("503") && r.contains("TiKV") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "/health never reported TiKV down: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(said.contains("tikv://"), "names the store: {said}");
    double.set_down(false);
    leader(&rest, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no leader once TiKV is back:\n{}", logs(dir.path())));
    drop(procs);
}

#[test]
fn bad_store_flags_are_refused_with_the_flag_named() {
    for (args, says) in [
        (vec!["--store", "etcd://x:1/p"], "expected raft or tikv://"),
        (vec!["--store", "tikv://pd:2379"], "no key prefix"),
        (
            vec!["--store", "tikv://pd:2379/p", "--peers", "1=127.0.0.1:1"],
            "--peers applies to --store raft only",
        ),
        (vec!["--store", "raft"], "--peers is required"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .env("ORRERY_INSECURE", "1")
            .args(["master", "--id", "1", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run orrery master");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
