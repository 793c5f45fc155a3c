//! The agent with real processes: an `orrery master`, `orrery agent`
//! processes killed with SIGKILL and restarted, real `sleep` tasks under
//! `orrery executor`, and a framework client speaking the scheduler API.
//!
//! Every test kills, when it ends (passing or not), every process whose
//! command line or working directory lies under its temp dirs: the agent,
//! its executors (which outlive it by design) and their tasks.

mod common;

#[path = "../../gateway/tests/common/framework.rs"]
mod framework;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::*;
use common::*;
use framework::*;
use orrery_events::pb::{self, FrameworkCapability, TaskReason, TaskState};
use orrery_proto::scheduler as sp;

const WAIT: Duration = Duration::from_secs(20);

async fn one_master(extra: &[&str]) -> Masters {
    let m = Masters::new(1, extra);
    m.start_all();
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    m
}

fn addrs(m: &Masters) -> Vec<String> {
    m.addrs.values().cloned().collect()
}

fn argv_launch(offer: &sp::Offer, task_id: &str, argv: &[&str]) -> sp::call::Call {
    let mut call = launch(offer, task_id, 100, Some(0.0));
    if let sp::call::Call::Accept(a) = &mut call {
        let port = offer
            .resources
            .as_ref()
            .and_then(|r| r.ports.first())
            .map(|p| p.begin);
        if let (Some(port), Some(r)) = (port, a.launches[0].resources.as_mut()) {
            r.ports = vec![pb::PortRange {
                begin: port,
                end: port,
            }];
        }
        a.launches[0].command = Some(pb::CommandInfo {
            shell: String::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            environment: vec![],
        });
    }
    call
}

fn shell_launch(offer: &sp::Offer, task_id: &str, shell: &str) -> sp::call::Call {
    let mut call = launch(offer, task_id, 100, Some(0.0));
    if let sp::call::Call::Accept(a) = &mut call {
        a.launches[0].command = Some(pb::CommandInfo {
            shell: shell.into(),
            argv: vec![],
            environment: vec![],
        });
    }
    call
}

/// Launches `call`-made tasks on the next offers until each is accepted.
async fn launch_each(
    fw: &mut Framework,
    tasks: &[&str],
    make: impl Fn(&sp::Offer, &str) -> sp::call::Call,
) {
    let mut i = 0;
    while i < tasks.len() {
        for offer in fw.offers(WAIT).await {
            if i < tasks.len() && fw.call(make(&offer, tasks[i])).await.is_ok() {
                i += 1;
            }
        }
    }
}

async fn update_for(fw: &mut Framework, task: &str, state: TaskState) -> sp::TaskStatus {
    let what = format!("{} for {task}", state.as_str_name());
    fw.next(&what, WAIT, |e| match e {
        sp::event::Event::Update(u) => u
            .status
            .filter(|s| s.task_id == task && s.state == state as i32),
        _ => None,
    })
    .await
}

async fn ack(fw: &Framework, s: &sp::TaskStatus) {
    fw.call(sp::call::Call::Acknowledge(sp::Acknowledge {
        task_id: s.task_id.clone(),
        uuid: s.uuid.clone(),
    }))
    .await
    .expect("acknowledged");
}

async fn agent_state(m: &Masters) -> Option<String> {
    let ms = addrs(m);
    let s = eventually_state(&ms).await;
    s.agents.first().map(|a| a.state.clone())
}

async fn eventually_state(ms: &[String]) -> orrery_proto::operator::State {
    orrery_gateway::client::with_leader(
        &orrery_gateway::client::Transport::Plain,
        ms,
        PATIENCE,
        |ch| async move {
            orrery_proto::operator::operator_client::OperatorClient::new(ch)
                .get_state(orrery_proto::operator::GetStateRequest {})
                .await
                .map(|r| r.into_inner())
        },
    )
    .await
    .expect("state")
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_survives_ten_agent_kill9s_without_a_second_copy() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let mut fw = Framework::subscribe(addrs(&m), framework_info("svc", "svc", &[]), true).await;
    launch_each(&mut fw, &["t1"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    update_for(&mut fw, "t1", TaskState::TaskRunning).await;
    let sandbox = agent.sandbox("F1", "t1");
    let pids = pids_in(&sandbox);
    assert_eq!(
        pids.len(),
        1,
        "one task process: {pids:?}\n{}",
        agent.logs()
    );
    // Limits: the task is in an Orrery cgroup, or the executor said why not.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap_or_default();
    let said = std::fs::read_to_string(sandbox.join("executor.stderr")).unwrap_or_default();
    assert!(
        cgroup.contains("/orrery/") || said.contains("resource limits are not enforced"),
        "cgroup: {cgroup}\nexecutor: {said}"
    );
    // The task's environment names it and its sandbox.
    let env = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap_or_default();
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.contains("ORRERY_TASK_ID=t1")
            && env.contains("ORRERY_SANDBOX=")
            && env.contains("PORT0="),
        "{env}"
    );
    for round in 0..10 {
        agent.kill9();
        assert_eq!(
            pids_in(&sandbox),
            pids,
            "round {round}: the task outlives the agent"
        );
        agent.start(&[], &[]);
        let reconnected = agent.starts;
        eventually(
            "the agent back and the task RUNNING on the master",
            WAIT,
            || {
                let ms = addrs(&m);
                let logs = agent.logs();
                async move {
                    let s = eventually_state(&ms).await;
                    let registered = s.agents.first().is_some_and(|a| a.state == "REGISTERED");
                    let running = task_state(&s, "F1", "t1") == Some(TaskState::TaskRunning);
                    let recovered = logs.matches("reconnected to a running executor").count()
                        as u32
                        >= reconnected - 1;
                    (registered && running && recovered).then_some(())
                }
            },
        )
        .await;
        assert_eq!(
            pids_in(&sandbox),
            pids,
            "round {round}: the same single process runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_while_the_agent_is_down_is_reported_once_with_its_exit_code() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let mut fw = Framework::subscribe(addrs(&m), framework_info("batch", "b", &[]), true).await;
    launch_each(&mut fw, &["t1"], |o, t| {
        shell_launch(o, t, "sleep 1; exit 3")
    })
    .await;
    let running = update_for(&mut fw, "t1", TaskState::TaskRunning).await;
    ack(&fw, &running).await;
    agent.kill9();
    // The task exits while no agent runs; its executor records it.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(pids_in(&agent.sandbox("F1", "t1")).is_empty());
    agent.start(&[], &[]);
    let failed = update_for(&mut fw, "t1", TaskState::TaskFailed).await;
    assert_eq!(failed.exit_code, Some(3), "{failed:?}");
    ack(&fw, &failed).await;
    // Delivered once: no second FAILED for it, and the agent's checkpoint
    // of the task is gone once acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, fw.events.recv()).await {
        if let Some(sp::event::Event::Update(u)) = ev.event {
            let s = u.status.unwrap();
            assert!(s.task_id != "t1", "a second update for t1: {s:?}");
        }
    }
    let dir = agent.task_dir("F1", "t1");
    eventually("the task's checkpoint removed after the ack", WAIT, || {
        let gone = !dir.exists();
        async move { gone.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_refused_when_strict_and_isolated_when_not() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let mut fw = Framework::subscribe(addrs(&m), framework_info("svc", "svc", &[]), true).await;
    launch_each(&mut fw, &["ta", "tb"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    for t in ["ta", "tb"] {
        let s = update_for(&mut fw, t, TaskState::TaskRunning).await;
        ack(&fw, &s).await;
    }
    // The agent appends the ack after the master answers: wait for both.
    let ta_updates = agent.task_dir("F1", "ta").join("updates.log");
    eventually("ta's stream has its update and ack", WAIT, || {
        let n = orrery_actors::agent::checkpoint::read_stream(&ta_updates, 0)
            .map(|s| s.records.len())
            .unwrap_or(0);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    agent.kill9();
    let before_a = pids_in(&agent.sandbox("F1", "ta"));
    let before_b = pids_in(&agent.sandbox("F1", "tb"));
    assert_eq!((before_a.len(), before_b.len()), (1, 1));
    // Flip a byte inside ta's first record (not the last one: corruption,
    // not a torn tail).
    let mut bytes = std::fs::read(&ta_updates).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&ta_updates, &bytes).unwrap();

    agent.start(&["--strict", "true"], &[]);
    let code = agent.wait_exit(WAIT);
    assert_eq!(code, Some(1), "{}", agent.logs());
    let logs = agent.logs();
    assert!(
        logs.contains(&ta_updates.display().to_string()) && logs.contains("at byte 0"),
        "{logs}"
    );
    assert_eq!(
        pids_in(&agent.sandbox("F1", "ta")),
        before_a,
        "strict kills nothing"
    );
    assert_eq!(
        pids_in(&agent.sandbox("F1", "tb")),
        before_b,
        "strict kills nothing"
    );

    agent.start(&["--strict", "false"], &[]);
    let lost = update_for(&mut fw, "ta", TaskState::TaskLost).await;
    assert!(lost.message.contains("corrupt"), "{lost:?}");
    let ms = addrs(&m);
    eventually("tb still RUNNING on the recovered agent", WAIT, || {
        let ms = ms.clone();
        async move {
            let s = eventually_state(&ms).await;
            (task_state(&s, "F1", "tb") == Some(TaskState::TaskRunning)
                && s.agents.first().is_some_and(|a| a.state == "REGISTERED"))
            .then_some(())
        }
    })
    .await;
    assert_eq!(pids_in(&agent.sandbox("F1", "tb")), before_b);
    let sandbox_a = agent.sandbox("F1", "ta");
    eventually("the LOST task's process stopped", WAIT, || {
        let empty = pids_in(&sandbox_a).is_empty();
        async move { empty.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_cleanup_kills_the_old_tasks_and_exits() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let mut fw = Framework::subscribe(addrs(&m), framework_info("svc", "svc", &[]), true).await;
    launch_each(&mut fw, &["t1"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    update_for(&mut fw, "t1", TaskState::TaskRunning).await;
    agent.kill9();
    assert_eq!(pids_in(&agent.sandbox("F1", "t1")).len(), 1);
    agent.start(&["--recover", "cleanup"], &[]);
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.logs());
    assert!(
        pids_in(&agent.sandbox("F1", "t1")).is_empty(),
        "the task was killed"
    );
    assert!(pids_naming(&agent.work()).is_empty(), "no executor is left");
    assert!(!agent.work().join("meta").join("tasks").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_down_past_the_ping_budget_is_unreachable_then_reconciled() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&[
        "--allocation-interval",
        "100ms",
        "--agent-ping-timeout",
        "200ms",
        "--max-agent-ping-timeouts",
        "3",
    ])
    .await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let mut fw = Framework::subscribe(
        addrs(&m),
        framework_info("aware", "a", &[FrameworkCapability::PartitionAware]),
        true,
    )
    .await;
    launch_each(&mut fw, &["t1"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    update_for(&mut fw, "t1", TaskState::TaskRunning).await;
    let pids = pids_in(&agent.sandbox("F1", "t1"));
    agent.kill9();
    let u = update_for(&mut fw, "t1", TaskState::TaskUnreachable).await;
    assert_eq!(u.reason, TaskReason::ReasonAgentUnreachable as i32);
    assert_eq!(agent_state(&m).await.as_deref(), Some("UNREACHABLE"));
    agent.start(&[], &[]);
    update_for(&mut fw, "t1", TaskState::TaskRunning).await;
    assert_eq!(agent_state(&m).await.as_deref(), Some("REGISTERED"));
    assert_eq!(
        pids_in(&agent.sandbox("F1", "t1")),
        pids,
        "the same process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_left_past_the_recovery_timeout_kills_its_task_and_exits() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&["--recovery-timeout", "1s"], &[]);
    let mut fw = Framework::subscribe(addrs(&m), framework_info("svc", "svc", &[]), true).await;
    launch_each(&mut fw, &["t1"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    update_for(&mut fw, "t1", TaskState::TaskRunning).await;
    agent.kill9();
    let sandbox = agent.sandbox("F1", "t1");
    let work = agent.work();
    eventually("the task and its executor gone", WAIT, || {
        let gone = pids_in(&sandbox).is_empty() && pids_naming(&work).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    // The next agent delivers what the executor recorded.
    agent.start(&[], &[]);
    let killed = update_for(&mut fw, "t1", TaskState::TaskKilled).await;
    assert_eq!(
        killed.reason,
        TaskReason::ReasonExecutorRecoveryTimeout as i32,
        "{killed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_recording_and_spawning_ends_in_one_process_or_a_definite_failure() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut fw = Framework::subscribe(addrs(&m), framework_info("svc", "svc", &[]), true).await;

    // Crash after the launch record, before the executor: never ran.
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[("ORRERY_FAILPOINT", "launch-recorded")]);
    launch_each(&mut fw, &["t1"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    assert_eq!(agent.wait_exit(WAIT), Some(86), "{}", agent.logs());
    assert!(pids_in(&agent.sandbox("F1", "t1")).is_empty());
    agent.start(&[], &[]);
    let failed = update_for(&mut fw, "t1", TaskState::TaskFailed).await;
    assert!(failed.message.contains("never ran"), "{failed:?}");
    assert!(
        pids_in(&agent.sandbox("F1", "t1")).is_empty(),
        "and nothing runs"
    );
    agent.kill9();

    // Crash right after spawning the executor: it runs, once.
    agent.start(&[], &[("ORRERY_FAILPOINT", "executor-spawned")]);
    launch_each(&mut fw, &["t2"], |o, t| {
        argv_launch(o, t, &["sleep", "1000"])
    })
    .await;
    assert_eq!(agent.wait_exit(WAIT), Some(86), "{}", agent.logs());
    agent.start(&[], &[]);
    update_for(&mut fw, "t2", TaskState::TaskRunning).await;
    let ms = addrs(&m);
    eventually("t2 RUNNING on the master", WAIT, || {
        let ms = ms.clone();
        async move {
            (task_state(&eventually_state(&ms).await, "F1", "t2") == Some(TaskState::TaskRunning))
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pids_in(&agent.sandbox("F1", "t2")).len(),
        1,
        "exactly one process for t2"
    );
}

#[test]
fn bad_agent_flags_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orrery"));
        cmd.env("ORRERY_INSECURE", "1");
        cmd.args(["--master", "127.0.0.1:1", "agent", "--work-dir"])
            .arg(&work)
            .args(args);
        let (status, err) = run_to_exit(&mut cmd, Duration::from_secs(20));
        (status.and_then(|s| s.code()), err)
    };
    for (args, says) in [
        (vec!["--resources", "cpus:lots"], "--resources"),
        (
            vec!["--resources", "cpus(web):4"],
            "reserved for role `web`",
        ),
        (
            vec!["--resources", "gpus:1;gpus:2"],
            "`gpus` is given twice",
        ),
        (vec!["--resources", ""], "offers no cpus and no mem"),
        (vec!["--resources", ";;;"], "offers no cpus and no mem"),
        (vec!["--attributes", "rack"], "--attributes"),
        (vec!["--domain", "{"], "--domain is not JSON"),
        (
            vec!["--domain", r#"{"fault_domain":{"region":{"name":"r1"}}}"#],
            "zone",
        ),
        (vec!["--strict", "maybe"], "--strict"),
        (vec!["--recovery-timeout", "soon"], "--recovery-timeout"),
        (vec!["--ip", "not-an-ip"], "--ip"),
        (vec!["--http", "localhost"], "--http"),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _) = run(&["--recover", "sometimes"]);
    assert_eq!(code, Some(2), "a bad enum value is bad usage");
    // A master address with a scheme: refused at once, by name, not after
    // a DNS lookup's timeout.
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env("ORRERY_INSECURE", "1")
        .args(["--master", "http://127.0.0.1:5050", "agent", "list"])
        .output()
        .expect("run the cli");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not HOST:PORT"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn orrery_dev_runs_a_master_and_an_agent_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env_remove("ORRERY_INSECURE")
        .args(["dev", "--exit-after", "5s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn orrery dev");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) > 0 {
        text.push_str(&line);
        if line.starts_with("Stop with") {
            break;
        }
        line.clear();
    }
    let grpc = text
        .lines()
        .find(|l| l.contains("gRPC"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("the master's address is printed: {text}"))
        .to_owned();
    let data = text
        .lines()
        .next()
        .and_then(|l| l.split("data in ").nth(1))
        .unwrap_or_else(|| panic!("the data dir is printed: {text}"))
        .to_owned();
    // TLS is on with a throwaway CA: the CLI uses the operator
    // certificate dev wrote; with no credentials, or plain TCP, it gets
    // nothing.
    let tls = format!("{data}/tls");
    let cli = |creds: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orrery"));
        c.env_remove("ORRERY_INSECURE")
            .args(["--master", &grpc, "--json", "agent", "list"]);
        if creds {
            c.env("ORRERY_CA", format!("{tls}/ca.pem"))
                .env("ORRERY_CERT", format!("{tls}/operator.pem"))
                .env("ORRERY_KEY", format!("{tls}/operator.key"));
        }
        c
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let o = cli(true).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v[0]["state"] == "REGISTERED" || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listed[0]["state"], "REGISTERED", "{listed}");
    let o = cli(false).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no credentials"), "{err}");
    let o = cli(false).arg("--insecure").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "plain TCP to a TLS master");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!Path::new(&data).exists(), "the temp dir {data} is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_domain_exits_when_a_domain_less_master_refuses_it() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(
        &[
            "--domain",
            r#"{"fault_domain":{"region":{"name":"r1"},"zone":{"name":"z1"}}}"#,
        ],
        &[],
    );
    assert_eq!(agent.wait_exit(WAIT), Some(1), "{}", agent.logs());
    assert!(agent.logs().contains("no fault domain"), "{}", agent.logs());
    let master = std::fs::read_to_string(m.log_path(1)).unwrap_or_default();
    assert!(
        master.contains("refused an agent's registration"),
        "{master}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_real_processes_restart_failures_and_are_killed() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let orrery = cli(&m);
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.toml");
    std::fs::write(
        &web,
        "role = \"www\"\nenv = \"prod\"\nname = \"web\"\ninstances = 2\nargv = [\"sleep\", \"1000\"]\n\
         constraints = [[\"hostname\", \"MAX_PER\", \"2\"]]\n[resources]\ncpus = 0.1\nmem = 16\n",
    )
    .unwrap();
    let crashy = dir.path().join("crashy.toml");
    std::fs::write(
        &crashy,
        "role = \"www\"\nenv = \"prod\"\nname = \"crashy\"\ninstances = 1\ncommand = \"exit 7\"\n\
         [resources]\ncpus = 0.1\nmem = 16\n",
    )
    .unwrap();
    let (code, out, err) = orrery(&["job", "create", web.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = orrery(&["job", "create", web.to_str().unwrap()]);
    assert_eq!(code, Some(1), "a second create is refused");
    assert!(err.contains("www/prod/web"), "{err}");
    let (code, out, err) = orrery(&["job", "create", crashy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");

    eventually("both web instances RUNNING as processes", WAIT, || {
        let (_, out, _) = orrery(&["--json", "job", "status", "www/prod/web"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let running = v["instances"].as_array().map_or(0, |a| {
            a.iter().filter(|i| i["state"] == "TASK_RUNNING").count()
        });
        async move { (running == 2).then_some(()) }
    })
    .await;
    let (_, table, _) = orrery(&["job", "status", "www/prod/web"]);
    assert!(
        table.contains("INSTANCE") && table.contains("host-1"),
        "{table}"
    );
    for i in 0..2 {
        let sandbox = agent.sandbox("F1", &format!("www.prod.web.{i}.1"));
        assert_eq!(
            pids_in(&sandbox).len(),
            1,
            "instance {i} runs in {}",
            sandbox.display()
        );
    }
    // The crashing job is restarted with backoff: attempts 1, 2, 3 ...
    eventually("crashy restarted twice", WAIT, || {
        let ok = agent.sandbox("F1", "www.prod.crashy.0.3").exists();
        async move { ok.then_some(()) }
    })
    .await;
    let (_, list, _) = orrery(&["job", "list"]);
    assert!(
        list.contains("www/prod/web") && list.contains("www/prod/crashy"),
        "{list}"
    );

    let (code, _, err) = orrery(&["job", "kill", "www/prod/web"]);
    assert_eq!(code, Some(0), "{err}");
    let sandboxes: Vec<PathBuf> = (0..2)
        .map(|i| agent.sandbox("F1", &format!("www.prod.web.{i}.1")))
        .collect();
    eventually("the web processes killed", WAIT, || {
        let gone = sandboxes.iter().all(|s| pids_in(s).is_empty());
        async move { gone.then_some(()) }
    })
    .await;
    let (code, _, err) = orrery(&["job", "status", "www/prod/web"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("www/prod/web"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_job_task_is_killed_and_replaced() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let masters = m.addrs.values().cloned().collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sick.toml");
    // Healthy only while a file named `ok` exists in the sandbox: never.
    std::fs::write(
        &file,
        "role = \"www\"\nenv = \"prod\"\nname = \"sick\"\ninstances = 1\nargv = [\"sleep\", \"1000\"]\n\
         [resources]\ncpus = 0.1\nmem = 16\n\
         [health_check]\nkind = \"command\"\ncommand = \"test -f ok\"\ninterval = \"200ms\"\n\
         timeout = \"1s\"\ngrace_period = \"0s\"\nconsecutive_failures = 2\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .env("ORRERY_INSECURE", "1")
        .args(["--master", &masters, "job", "create"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = agent.sandbox("F1", "www.prod.sick.0.1");
    let second = agent.sandbox("F1", "www.prod.sick.0.2");
    eventually("the unhealthy task replaced", WAIT, || {
        let ok = second.exists();
        async move { ok.then_some(()) }
    })
    .await;
    eventually("the unhealthy task's process killed", WAIT, || {
        let gone = pids_in(&first).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    let ms = addrs(&m);
    let s = eventually_state(&ms).await;
    let t = s
        .tasks
        .iter()
        .find(|t| t.task_id == "www.prod.sick.0.1")
        .expect("the first task is recorded");
    assert_eq!(t.state, TaskState::TaskKilled as i32, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_failing_its_health_check_rolls_back_by_itself() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let job = |check: &str| {
        format!(
            "role = \"www\"\nenv = \"prod\"\nname = \"svc\"\ninstances = 2\nargv = [\"sleep\", \"1000\"]\n\
             [resources]\ncpus = 0.1\nmem = 16\n\
             [health_check]\nkind = \"command\"\ncommand = \"{check}\"\ninterval = \"200ms\"\n\
             timeout = \"1s\"\nconsecutive_failures = 2\n\
             [update_strategy]\nbatch_size = 1\nwatch = \"300ms\"\n"
        )
    };
    let v1 = dir.path().join("v1.toml");
    let v2 = dir.path().join("v2.toml");
    std::fs::write(&v1, job("true")).unwrap();
    std::fs::write(&v2, job("false")).unwrap();
    let run_cli = cli(&m);
    let orrery = |args: &[&str]| {
        let (code, out, _) = run_cli(args);
        (code == Some(0), out)
    };
    assert!(orrery(&["job", "create", v1.to_str().unwrap()]).0);
    let status = || {
        let (_, out) = orrery(&["--json", "job", "status", "www/prod/svc"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
    };
    let running = |v: &serde_json::Value| {
        v["instances"].as_array().map_or(0, |a| {
            a.iter().filter(|i| i["state"] == "TASK_RUNNING").count()
        })
    };
    eventually("v1 running", WAIT, || {
        let v = status();
        async move { (running(&v) == 2).then_some(()) }
    })
    .await;
    assert!(orrery(&["job", "update", v2.to_str().unwrap()]).0);
    // v2's first instance turns unhealthy, is killed, and the job goes
    // back to v1's spec (version 3) with both instances running and healthy.
    let v = eventually("rolled back", Duration::from_secs(40), || {
        let v = status();
        async move { (v["version"] == 3 && v["updating"] == false && running(&v) == 2).then_some(v) }
    })
    .await;
    assert_eq!(v["instances"].as_array().map(Vec::len), Some(2));
    let ms = addrs(&m);
    let st = eventually_state(&ms).await;
    let v2_tasks: Vec<_> = st
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::TaskKilled as i32 && t.message.contains("killed"))
        .collect();
    assert!(
        !v2_tasks.is_empty(),
        "the unhealthy v2 task was killed: {:?}",
        st.tasks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_endpoints_and_host_commands() {
    let _serial = SERIAL.lock().await;
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut flags = master_flags();
    flags.extend(["--http", http_addr.as_str()]);
    let m = one_master(&flags).await;
    let mut agent = AgentProc::new(&m);
    agent.start(&[], &[]);
    let run_cli = cli(&m);
    let orrery = |args: &[&str]| {
        let (code, out, err) = run_cli(args);
        (code == Some(0), out, err)
    };
    eventually("the agent registered", WAIT, || {
        let (_, out, _) = orrery(&["--json", "host", "query"]);
        async move { out.contains("host-1").then_some(()) }
    })
    .await;

    // A malformed schedule is refused, naming the field; the master stays up.
    let r = http(
        &http_addr,
        "POST",
        "/maintenance/schedule",
        r#"{"windows":[{"machine_ids":[{"hostname":"host-1"}],"unavailability":{"start":{"nanoseconds":"soon"}}}]}"#,
    );
    assert!(
        r.contains(" 400 ") && r.contains("windows[0].unavailability.start.nanoseconds"),
        "{r}"
    );
    assert!(http(&http_addr, "GET", "/health", "").ends_with("OK\n"));

    // A schedule in Mesos' JSON, read back.
    let schedule = r#"{"windows":[{"machine_ids":[{"hostname":"host-1","ip":"127.0.0.1"}],"unavailability":{"start":{"nanoseconds":1000000000},"duration":{"nanoseconds":3600000000000}}}]}"#;
    let r = http(&http_addr, "POST", "/maintenance/schedule", schedule);
    assert!(r.contains(" 200 "), "{r}");
    let r = http(&http_addr, "GET", "/maintenance/schedule", "");
    assert!(
        r.contains("\"hostname\":\"host-1\"") && r.contains("3600000000000"),
        "{r}"
    );

    // Peloton's CLI: drain, query, complete.
    let (ok, _, err) = orrery(&["host", "maintenance", "start", "host-1"]);
    assert!(ok, "{err}");
    let (_, out, _) = orrery(&[
        "host",
        "query",
        "--states",
        "HOST_STATE_DRAINING,HOST_STATE_DRAINED,HOST_STATE_DOWN",
    ]);
    assert!(out.contains("host-1"), "{out}");
    // With no task on it, the host drains at once and goes DOWN by itself.
    eventually("host-1 DOWN", WAIT, || {
        let (_, out, _) = orrery(&["host", "query", "--states", "HOST_STATE_DOWN"]);
        async move { out.contains("host-1").then_some(()) }
    })
    .await;
    let r = http(&http_addr, "GET", "/maintenance/status", "");
    assert!(
        r.contains("\"down_machines\":[{\"hostname\":\"host-1\""),
        "{r}"
    );
    let (ok, _, err) = orrery(&["host", "query", "--states", "HOST_STATE_SIDEWAYS"]);
    assert!(!ok && err.contains("not a host state"), "{err}");
    let (ok, _, err) = orrery(&["host", "maintenance", "complete", "host-1"]);
    assert!(ok, "{err}");
    let (_, out, _) = orrery(&["--json", "host", "query"]);
    assert!(out.contains("HOST_STATE_UP"), "{out}");
    // The agent waited out the DOWN host (it did not exit) and comes back.
    eventually("the agent registered again", WAIT, || {
        let ms = addrs(&m);
        async move {
            let s = eventually_state(&ms).await;
            s.agents
                .iter()
                .any(|a| a.hostname == "host-1" && a.state == "REGISTERED")
                .then_some(())
        }
    })
    .await;
    assert!(
        agent
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none()),
        "the agent still runs"
    );
}

/// RUNNING instances of job www/prod/svc per host, from `orrery job status`.
fn svc_running(
    orrery: &impl Fn(&[&str]) -> (Option<i32>, String, String),
) -> BTreeMap<String, usize> {
    let (_, out, _) = orrery(&["--json", "job", "status", "www/prod/svc"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut per_host = BTreeMap::new();
    for i in v["instances"].as_array().into_iter().flatten() {
        if i["state"] == "TASK_RUNNING" {
            *per_host
                .entry(i["hostname"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    per_host
}

/// Job www/prod/svc (`instances` sleeps, max_unavailable 1) RUNNING on
/// host-1's agent, then host-2's agent registered: the start of a drain.
async fn svc_on_host_1_then_host_2(m: &Masters, instances: usize) -> (AgentProc, AgentProc) {
    let mut a = AgentProc::on_host(m, "host-1");
    a.start(&[], &[]);
    let orrery = cli(m);
    let job = a.dir.path().join("svc.toml");
    std::fs::write(
        &job,
        format!(
            "role = \"www\"\nenv = \"prod\"\nname = \"svc\"\ninstances = {instances}\n\
             argv = [\"sleep\", \"1000\"]\nmax_unavailable = 1\n[resources]\ncpus = 0.1\nmem = 16\n"
        ),
    )
    .unwrap();
    let (code, out, err) = orrery(&["job", "create", job.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually("every instance on host-1", WAIT, || {
        let n = svc_running(&orrery).get("host-1").copied().unwrap_or(0);
        async move { (n == instances).then_some(()) }
    })
    .await;
    let mut b = AgentProc::on_host(m, "host-2");
    b.start(&[], &[]);
    eventually("host-2 registered", WAIT, || {
        let ms = addrs(m);
        async move {
            let s = eventually_state(&ms).await;
            s.agents
                .iter()
                .any(|x| x.hostname == "host-2" && x.state == "REGISTERED")
                .then_some(())
        }
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_started_while_the_agent_is_down_goes_on_when_it_restarts() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let (mut a, b) = svc_on_host_1_then_host_2(&m, 2).await;
    let orrery = cli(&m);
    let sandboxes: Vec<PathBuf> = (0..2)
        .map(|i| a.sandbox("F1", &format!("www.prod.svc.{i}.1")))
        .collect();

    // host-1's agent dies (its executors and tasks live on); the drain is
    // asked for while it is away, and nothing can reach its tasks.
    a.kill9();
    let (code, _, err) = orrery(&["host", "maintenance", "start", "host-1"]);
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        sandboxes.iter().all(|s| pids_in(s).len() == 1),
        "both tasks still run while the agent is away"
    );
    // It restarts, recovers its tasks and reregisters: the drain goes on.
    a.start(&[], &[]);
    eventually("both instances moved to host-2", WAIT, || {
        let n = svc_running(&orrery).get("host-2").copied().unwrap_or(0);
        async move { (n == 2).then_some(()) }
    })
    .await;
    eventually("the old processes killed", WAIT, || {
        let gone = sandboxes.iter().all(|s| pids_in(s).is_empty());
        async move { gone.then_some(()) }
    })
    .await;
    eventually("host-1 DOWN", WAIT, || {
        let (_, out, _) = orrery(&["host", "query", "--states", "HOST_STATE_DOWN"]);
        async move { out.contains("host-1").then_some(()) }
    })
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_health_state_and_metrics() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut agent = AgentProc::new(&m);
    agent.start(&["--http", &http_addr], &[]);
    let orrery = cli(&m);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("one.toml");
    std::fs::write(
        &job,
        "role = \"www\"\nenv = \"prod\"\nname = \"one\"\ninstances = 1\nargv = [\"sleep\", \"1000\"]\n\
         [resources]\ncpus = 0.1\nmem = 16\n",
    )
    .unwrap();
    let (code, out, err) = orrery(&["job", "create", job.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually("the task RUNNING on the agent's /state", WAIT, || {
        let r = std::net::TcpStream::connect(&http_addr)
            .ok()
            .map(|_| http(&http_addr, "GET", "/state", ""))
            .unwrap_or_default();
        async move { (r.contains("www.prod.one.0.1") && r.contains("TASK_RUNNING")).then_some(()) }
    })
    .await;
    let r = http(&http_addr, "GET", "/health", "");
    assert!(r.contains(" 200 ") && r.ends_with("OK\n"), "{r}");
    let r = http(&http_addr, "GET", "/metrics", "");
    assert!(
        r.contains("orrery_agent_tasks{state=\"TASK_RUNNING\"} 1")
            && r.contains("orrery_agent_attached 1"),
        "{r}"
    );
    let r = http(&http_addr, "GET", "/vars.json", "");
    assert!(
        r.contains("\"orrery_agent_tasks_state_TASK_RUNNING\":1"),
        "{r}"
    );
    // The master goes away: the agent says it is not attached.
    m.kill9(1);
    eventually("/health 503", WAIT, || {
        let r = http(&http_addr, "GET", "/health", "");
        async move { (r.contains(" 503 ") && r.contains("not attached")).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_three_real_instances_never_takes_more_than_one_down() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let (_a, b) = svc_on_host_1_then_host_2(&m, 3).await;
    let orrery = cli(&m);
    // (RUNNING instances, of them on host-1).
    let running = || {
        let per_host = svc_running(&orrery);
        (
            per_host.values().sum::<usize>(),
            per_host.get("host-1").copied().unwrap_or(0),
        )
    };
    let (code, _, err) = orrery(&["host", "maintenance", "start", "host-1"]);
    assert_eq!(code, Some(0), "{err}");
    // Sampled as fast as the CLI answers: never fewer than 2 running.
    let deadline = std::time::Instant::now() + WAIT;
    let mut fewest = 3;
    loop {
        let (up, on_1) = running();
        fewest = fewest.min(up);
        if up == 3 && on_1 == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drain did not finish: {up} running, {on_1} on host-1"
        );
    }
    assert!(
        fewest >= 2,
        "at most one instance down at a time, saw {fewest} running"
    );
    eventually("host-1 DOWN", WAIT, || {
        let (_, out, _) = orrery(&["host", "query", "--states", "HOST_STATE_DOWN"]);
        async move { out.contains("host-1").then_some(()) }
    })
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_of_a_drain_and_an_update_print_the_plan_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let m = one_master(&master_flags()).await;
    let (a, b) = svc_on_host_1_then_host_2(&m, 2).await;
    let orrery = cli(&m);
    let status = || orrery(&["--json", "job", "status", "www/prod/svc"]).1;
    let before = status();

    let (code, out, err) = orrery(&[
        "host",
        "maintenance",
        "start",
        "host-1",
        "--dry-run",
        "--task-start",
        "5s",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("dry run: draining host-1"), "{out}");
    for i in 0..2 {
        assert!(
            out.contains(&format!(
                "www/prod/svc #{i} (task www.prod.svc.{i}.1) on host-1"
            )),
            "{out}"
        );
    }
    assert_eq!(out.matches("-> host-2").count(), 2, "{out}");
    assert!(out.contains("host-1: HOST_STATE_DRAINED"), "{out}");
    assert!(out.contains("below SLA:\n  none"), "{out}");
    assert!(out.contains("done after "), "{out}");
    // Nothing changed: host-1 is UP and both instances still run there.
    let (_, hosts, _) = orrery(&["host", "query", "--states", "HOST_STATE_UP"]);
    assert!(hosts.contains("host-1"), "{hosts}");
    assert_eq!(svc_running(&orrery).get("host-1"), Some(&2));
    assert_eq!(status(), before, "the job is as it was");

    // The update, as JSON.
    let job = a.dir.path().join("svc2.toml");
    std::fs::write(
        &job,
        "role = \"www\"\nenv = \"prod\"\nname = \"svc\"\ninstances = 2\n\
         argv = [\"sleep\", \"2000\"]\nmax_unavailable = 1\n[resources]\ncpus = 0.1\nmem = 16\n",
    )
    .unwrap();
    let (code, out, err) = orrery(&[
        "--json",
        "job",
        "update",
        job.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(v["outcome"], "finished", "{v:#}");
    assert_eq!(v["moves"].as_array().map(Vec::len), Some(2), "{v:#}");
    assert!(v["moves"][0]["why"] == "replaced by the update", "{v:#}");
    assert_eq!(v["done"], true);
    assert_eq!(status(), before, "the dry run did not update the job");

    // What the real call refuses, the dry run refuses; bad flags are named.
    let (code, _, err) = orrery(&["host", "maintenance", "start", "nohost", "--dry-run"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("nohost"), "{err}");
    let (code, _, err) = orrery(&["host", "maintenance", "start", "host-1", "--horizon", "1h"]);
    assert_eq!(code, Some(2), "--horizon without --dry-run: {err}");
    assert!(err.contains("--dry-run"), "{err}");
    let (code, _, err) = orrery(&[
        "host",
        "maintenance",
        "start",
        "host-1",
        "--dry-run",
        "--horizon",
        "48h",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--horizon"), "{err}");
    drop(b);
}
