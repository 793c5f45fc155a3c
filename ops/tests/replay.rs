//! `orrery replay` against a real master process: the state it rebuilds at
//! a past index equals what the master reported at that index (online and
//! from the stopped master's data dir), and `replay check` fails loudly on
//! a log edited to break an invariant.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use orrery_events::pb::{self, envelope::Payload};
use orrery_gateway::client::with_leader;
use orrery_proto::agent::{self as ap, agent_link_client::AgentLinkClient};
use orrery_proto::operator::{self as op, operator_client::OperatorClient};

fn orrery(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env("ORRERY_INSECURE", "1")
        .args(args)
        .output()
        .expect("run the cli");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The parts of a state both views agree on: agents and tasks.
fn essence(v: &serde_json::Value) -> (serde_json::Value, serde_json::Value, u64) {
    (
        v["agents"].clone(),
        v["tasks"].clone(),
        v["commit_index"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_past_states_and_check_catches_an_edited_log() {
    let m = Masters::new(1, &[]);
    m.start_all();
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .expect("a leader");
    let addrs: Vec<String> = m.addrs.values().cloned().collect();
    let master = addrs.join(",");
    let patience = Duration::from_secs(20);

    // An agent (registered, never attached) and a job of 2 instances: the
    // launches stay STAGING on it.
    with_leader(
        &orrery_gateway::client::Transport::Plain,
        &addrs,
        patience,
        |ch| async move {
            AgentLinkClient::new(ch)
                .register(ap::RegisterRequest {
                    version: String::new(),
                    incarnation: String::new(),
                    agent_id: String::new(),
                    info: Some(ap::AgentInfo {
                        hostname: "host-r".into(),
                        ip: "127.0.0.1".into(),
                        resources: Some(pb::Resources {
                            cpus_milli: 4000,
                            mem_mb: 4096,
                            disk_mb: 0,
                            ports: vec![],
                            ..Default::default()
                        }),
                        attributes: vec![],
                        domain: None,
                    }),
                    tasks: vec![],
                })
                .await
        },
    )
    .await
    .expect("registered");
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("svc.toml");
    std::fs::write(
        &job,
        "role = \"www\"\nenv = \"prod\"\nname = \"svc\"\ninstances = 2\nargv = [\"sleep\", \"1000\"]\n\
         [resources]\ncpus = 1\nmem = 16\n",
    )
    .unwrap();
    let (code, out, err) = orrery(&["--master", &master, "job", "create", job.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let state = || {
        let addrs = addrs.clone();
        async move {
            let (s, _) = with_leader(
                &orrery_gateway::client::Transport::Plain,
                &addrs,
                patience,
                |ch| async move {
                    OperatorClient::new(ch)
                        .get_state(op::GetStateRequest {})
                        .await
                        .map(|r| r.into_inner())
                },
            )
            .await
            .expect("state");
            s
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let then = loop {
        let s = state().await;
        if s.tasks.len() == 2 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "2 launches: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let then_json = orrery_gateway::http::state_json(&then);
    let at = then.commit_index.to_string();

    // More happens after that moment: a drain of the host kills the tasks.
    let (code, _, err) = orrery(&[
        "--master",
        &master,
        "host",
        "maintenance",
        "start",
        "host-r",
    ]);
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(state().await.commit_index > then.commit_index);

    // Online: the state at that index is the one reported then.
    let (code, out, err) = orrery(&[
        "--master", &master, "--json", "replay", "state", "--at", &at,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let online: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(essence(&online), essence(&then_json));
    let (code, out, err) = orrery(&["--master", &master, "replay", "check"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("equal to the live state's digest"), "{out}");
    // The agent reports both tasks killed: the host goes DRAINED, then DOWN
    // by itself; then it comes back UP.
    for t in &then.tasks {
        let u = ap::StatusUpdate {
            agent_id: t.agent_id.clone(),
            framework_id: t.framework_id.clone(),
            task_id: t.task_id.clone(),
            state: pb::TaskState::TaskKilled as i32,
            uuid: format!("kill-{}", t.task_id),
            reason: pb::TaskReason::ReasonHostMaintenance as i32,
            message: String::new(),
            source: pb::StatusSource::SourceExecutor as i32,
            exit_code: None,
            healthy: None,
        };
        with_leader(
            &orrery_gateway::client::Transport::Plain,
            &addrs,
            patience,
            |ch| {
                let u = u.clone();
                async move { AgentLinkClient::new(ch).update_status(u).await }
            },
        )
        .await
        .expect("status update");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = orrery(&[
            "--master",
            &master,
            "host",
            "query",
            "--states",
            "HOST_STATE_DOWN",
        ]);
        if out.contains("host-r") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "host-r DOWN");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, err) = orrery(&[
        "--master",
        &master,
        "host",
        "maintenance",
        "complete",
        "host-r",
    ]);
    assert_eq!(code, Some(0), "{err}");
    // Every transition of the host is in its history.
    let (code, out, _) = orrery(&["--master", &master, "replay", "history", "host-r"]);
    assert_eq!(code, Some(0));
    let order: Vec<usize> = [
        "AgentRegistered",
        "MaintenanceScheduleUpdated",
        "HostDrainStarted",
        "HostDrained",
        "HostDown",
        "HostUp",
    ]
    .iter()
    .map(|needle| {
        out.find(needle)
            .unwrap_or_else(|| panic!("history of host-r shows {needle}: {out}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {out}");
    // The job's instances wait, and why: its only agent went with the host.
    let (code, out, _) = orrery(&["--master", &master, "replay", "why-pending", "www/prod/svc"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("instance 0: pending: no offers") && out.contains("S1 (host-r) GONE"),
        "{out}"
    );

    // Offline, from the stopped master's data dir: the same.
    m.kill9(1);
    let data = m.data_dir(1);
    let data = data.to_str().unwrap();
    let (code, out, err) = orrery(&["--json", "replay", "--data-dir", data, "state", "--at", &at]);
    assert_eq!(code, Some(0), "{err}");
    let offline: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(essence(&offline), essence(&then_json));
    // With checkpoints every 2 events: written the first time, used after.
    let cps = dir.path().join("cps");
    for round in 0..2 {
        let (code, out, err) = orrery(&[
            "--json",
            "replay",
            "--data-dir",
            data,
            "--checkpoints",
            cps.to_str().unwrap(),
            "--checkpoint-every",
            "2",
            "state",
            "--at",
            &at,
        ]);
        assert_eq!(code, Some(0), "round {round}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(essence(&v), essence(&then_json), "round {round}");
    }
    assert!(
        std::fs::read_dir(cps.join("log.export.checkpoints")).map_or(0, |d| d.count()) >= 2,
        "checkpoints of the data dir's export"
    );
    // The data dir's log is exported once, with its fingerprint; a data dir
    // that changes (here: a file rewritten, so its mtime moves) is exported
    // again, never answered from a stale export.
    let fp_path = cps.join("log.export.fingerprint");
    let fp = std::fs::read_to_string(&fp_path).expect("the export's fingerprint");
    assert!(cps.join("log.export").exists());
    let some_file = walk(std::path::Path::new(data))
        .into_iter()
        .next()
        .expect("a file in the data dir");
    let bytes = std::fs::read(&some_file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&some_file, &bytes).unwrap();
    let (code, out, err) = orrery(&[
        "--json",
        "replay",
        "--data-dir",
        data,
        "--checkpoints",
        cps.to_str().unwrap(),
        "state",
        "--at",
        &at,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(essence(&v), essence(&then_json));
    assert_ne!(
        std::fs::read_to_string(&fp_path).unwrap(),
        fp,
        "a changed data dir is exported again"
    );
    let (code, out, _) = orrery(&["replay", "--data-dir", data, "diff", &at, "1000000"]);
    assert_eq!(code, Some(1), "past the end is refused: {out}");

    // An exported log, edited so that the agent is smaller than its tasks:
    // check names the event and the invariant, and fails.
    let file = dir.path().join("log.bin");
    let (code, _, err) = orrery(&[
        "replay",
        "--data-dir",
        data,
        "export",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = orrery(&["replay", "--log-file", file.to_str().unwrap(), "check"]);
    assert_eq!(code, Some(0), "the export replays: {out}{err}");
    // From checkpoints (one every 3 events): the same past state, the first
    // time (writing them) and the second (starting from one).
    for round in 0..2 {
        let (code, out, err) = orrery(&[
            "--json",
            "replay",
            "--log-file",
            file.to_str().unwrap(),
            "--checkpoint-every",
            "3",
            "state",
            "--at",
            &at,
        ]);
        assert_eq!(code, Some(0), "round {round}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(essence(&v), essence(&then_json), "round {round}");
    }
    let cps = format!("{}.checkpoints", file.display());
    assert!(
        std::fs::read_dir(&cps).map_or(0, |d| d.count()) >= 2,
        "checkpoints written in {cps}"
    );
    let bytes = std::fs::read(&file).unwrap();
    let mut edited = Vec::new();
    let mut at_byte = 0;
    let mut changed = false;
    while at_byte < bytes.len() {
        let len = u32::from_le_bytes(bytes[at_byte..at_byte + 4].try_into().unwrap()) as usize;
        let mut env = orrery_events::codec::decode(&bytes[at_byte + 4..at_byte + 4 + len]).unwrap();
        if let Some(Payload::AgentRegistered(a)) = env.payload.as_mut() {
            a.resources.as_mut().unwrap().cpus_milli = 500;
            changed = true;
        }
        let body = orrery_events::codec::encode(&env);
        edited.extend_from_slice(&(body.len() as u32).to_le_bytes());
        edited.extend_from_slice(&body);
        at_byte += 4 + len;
    }
    assert!(changed);
    std::fs::write(&file, edited).unwrap();
    // The edited file's history differs: its checkpoints (made from the
    // original) are not trusted, and the state shows the edit.
    let (code, out, err) = orrery(&[
        "--json",
        "replay",
        "--log-file",
        file.to_str().unwrap(),
        "--checkpoint-every",
        "3",
        "state",
        "--at",
        &at,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"cpus\":0.5"), "the edited agent: {out}");
    let (code, out, err) = orrery(&["replay", "--log-file", file.to_str().unwrap(), "check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("replay check FAILED") && err.contains("over-committed"),
        "{err}"
    );
}

/// Every file under `dir`, in a stable order.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
