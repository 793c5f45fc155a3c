//! Liveness on every link, with real processes: a leader frozen (SIGSTOP —
//! a hung machine, a VM pause, a cut without a reset) must cost no task.
//! Agents notice the silence by their ping timeout, find the new leader
//! among all masters and reregister with their tasks before its
//! reregistration deadline; the CLI answers within its deadline with one
//! master frozen; resuming the old leader changes nothing. Also here: a
//! second agent process under a live agent's id is refused by name.

mod common;

#[path = "../../gateway/tests/common/framework.rs"]
mod framework;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agent::{pids_in, AgentProc};
use common::*;
use framework::eventually;
use orrery_events::pb::{envelope::Payload, TaskState};
use serde_json::Value;

type Cli = dyn Fn(&[&str]) -> (Option<i32>, String, String);

/// Pings every 1 s, 3 missed make an agent's ping timeout (3 s); a new
/// leader waits 5 s for agents to reregister.
fn flags() -> Vec<&'static str> {
    vec![
        "--allocation-interval",
        "100ms",
        "--agent-ping-timeout",
        "1s",
        "--max-agent-ping-timeouts",
        "3",
        "--agent-reregister-timeout",
        "5s",
        "--default-refuse",
        "0s",
    ]
}
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const REREGISTER_TIMEOUT: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(40);

fn agent_state(http: &str) -> Value {
    try_http(http, "GET", "/state", "")
        .and_then(|r| serde_json::from_str(body_of(&r)).ok())
        .unwrap_or_default()
}

fn running(orrery: &Cli) -> Vec<String> {
    let (_, out, _) = orrery(&["--json", "job", "status", "www/prod/web"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    let mut ids: Vec<String> = v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["state"] == "TASK_RUNNING")
                .map(|i| i["task_id"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Creates the job `www/prod/web` (`instances` of `sleep 1000`, plus the
/// TOML `more`) and waits until that many instances run; their task ids.
async fn create_web(orrery: &Cli, instances: usize, more: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("web.toml");
    std::fs::write(
        &job,
        format!(
            "role = \"www\"\nenv = \"prod\"\nname = \"web\"\ninstances = {instances}\n\
             argv = [\"sleep\", \"1000\"]\n{more}[resources]\ncpus = 0.1\nmem = 16\n"
        ),
    )
    .unwrap();
    let (code, out, err) = orrery(&["job", "create", job.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    eventually(&format!("{instances} instance(s) RUNNING"), WAIT, || {
        let r = running(orrery);
        async move { (r.len() == instances).then_some(r) }
    })
    .await
}

/// The task processes under the agents' sandboxes.
fn task_pids(agents: &[AgentProc]) -> BTreeSet<u32> {
    agents
        .iter()
        .flat_map(|a| pids_in(&a.work().join("sandboxes")))
        .collect()
}

/// Events in the log that would mean a task was lost or replaced.
async fn losses(m: &Masters, from: u64) -> Vec<String> {
    let mut out = Vec::new();
    for e in m.read_all(from).await {
        let Ok(env) = orrery_events::codec::decode(&e.payload) else {
            continue;
        };
        match env.payload {
            Some(Payload::AgentUnreachable(u)) => {
                out.push(format!("AgentUnreachable {}", u.agent_id))
            }
            Some(Payload::TaskStatusUpdated(u))
                if u.state != TaskState::TaskRunning as i32
                    && u.state != TaskState::TaskStarting as i32
                    && u.state != TaskState::TaskStaging as i32 =>
            {
                out.push(format!("{} {}", u.task_id, u.state().as_str_name()))
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_for_three_reregistration_timeouts_loses_no_task() {
    let _serial = SERIAL.lock().await;
    let m = Masters::new(3, &flags());
    let http: Vec<String> = free_ports(3)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    for id in 1..=3u64 {
        m.start(id, &["--http", &http[id as usize - 1]]);
    }
    let (first, _) = m
        .leader_among(&[1, 2, 3], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let webs: Vec<String> = free_ports(2)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut agents: Vec<AgentProc> = (1..=2)
        .map(|i| AgentProc::on_host(&m, &format!("host-{i}")))
        .collect();
    for (a, web) in agents.iter_mut().zip(&webs) {
        a.start(&["--http", web], &[]);
    }
    let orrery = cli(&m);
    let tasks = create_web(&orrery, 2, "constraints = [[\"hostname\", \"UNIQUE\"]]\n").await;
    let pids = eventually("the two task processes", WAIT, || {
        let p = task_pids(&agents);
        async move { (p.len() == 2).then_some(p) }
    })
    .await;

    // A client that declares a body and never sends it, held open on a
    // master that stays up: the master closes it after its body timeout
    // (10 s), well within this test.
    let silent_master = [1u64, 2, 3]
        .into_iter()
        .find(|i| *i != first)
        .expect("another master");
    let mut silent = std::net::TcpStream::connect(&http[silent_master as usize - 1]).unwrap();
    std::io::Write::write_all(
        &mut silent,
        b"POST /api/v1/scheduler HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
    )
    .unwrap();
    let silent_since = Instant::now();

    // A framework subscribed to the leader over gRPC: its stream must end
    // by keepalive once the leader freezes, and it resubscribes elsewhere.
    let all_masters: Vec<String> = m.addrs.values().cloned().collect();
    let info = framework::framework_info("watcher", "watch", &[]);
    let transport = orrery_gateway::client::Transport::Plain;
    let (mut events, subscribed) = framework::subscribe_once(&transport, &all_masters, &info)
        .await
        .expect("subscribed");
    let stream_end = tokio::spawn(async move {
        let started = Instant::now();
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                _ => return started.elapsed(),
            }
        }
    });

    // Freeze the leader: its kernel still holds every connection open.
    let frozen_at = Instant::now();
    m.signal(first, "-STOP");
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
    let (leader, _) = m
        .leader_among(&others, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no new leader\n{}", m.logs()));
    let elected = frozen_at.elapsed();
    let new_addr = m.addrs[&leader].clone();
    let reattached = eventually("both agents on the new leader's stream", WAIT, || {
        let on_new = webs
            .iter()
            .all(|w| agent_state(w)["master"].as_str() == Some(new_addr.as_str()));
        async move { on_new.then(|| frozen_at.elapsed()) }
    })
    .await;
    eprintln!("leader {first} frozen: master {leader} elected after {elected:?}, both agents reattached after {reattached:?}");
    // The ping timeout, then an election (already over) and a registration.
    assert!(
        reattached < PING_TIMEOUT + elected.max(PING_TIMEOUT) + Duration::from_secs(2)
            && reattached < REREGISTER_TIMEOUT + elected,
        "agents took {reattached:?} to find the new leader (elected after {elected:?})\n{}",
        agents.iter().map(|a| a.logs()).collect::<String>()
    );

    let ended = tokio::time::timeout(Duration::from_secs(15), stream_end)
        .await
        .expect("the framework's stream to the frozen leader ended")
        .expect("the watcher ran");
    assert!(
        ended < Duration::from_secs(10),
        "the stream ended only after {ended:?}"
    );
    let mut again = info.clone();
    again.framework_id = subscribed.framework_id.clone();
    let (_events, resubscribed) = framework::subscribe_once(&transport, &all_masters, &again)
        .await
        .expect("resubscribed with the new leader");
    assert_eq!(resubscribed.framework_id, subscribed.framework_id);
    eprintln!("the framework's stream ended {ended:?} after the freeze; resubscribed");

    // The CLI, given all three masters (the frozen one first in its list),
    // answers within its call deadline.
    let all = m.addrs.values().cloned().collect::<Vec<_>>();
    let mut listed = vec![m.addrs[&first].clone()];
    listed.extend(all.iter().filter(|a| **a != m.addrs[&first]).cloned());
    let frozen_first = cli_at(listed.join(","));
    let asked = Instant::now();
    let (code, out, err) = frozen_first(&["--call-timeout", "2s", "--json", "agent", "list"]);
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("host-1") && out.contains("host-2"), "{out}");
    assert!(
        took < Duration::from_secs(3),
        "agent list took {took:?} with a master frozen"
    );

    // Frozen for three reregistration timeouts in all.
    let until = frozen_at + 3 * REREGISTER_TIMEOUT;
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    assert_eq!(running(&orrery), tasks, "the same two tasks RUNNING");
    assert_eq!(task_pids(&agents), pids, "the same two processes");
    let lost = losses(&m, leader).await;
    assert!(
        lost.is_empty(),
        "tasks or agents lost while the leader was frozen: {lost:?}"
    );
    // The never-sent body: answered 408 and closed by now.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let read = std::io::Read::read_to_string(&mut silent, &mut answer);
    assert!(
        read.is_ok(),
        "the connection with a never-sent body is still open after {:?}: {read:?}",
        silent_since.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // The old leader resumes: it steps down, and nothing changes.
    m.signal(first, "-CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (now_leads, _) = m
        .leader_among(&[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader");
    assert_ne!(now_leads, first, "the resumed old leader must not lead");
    assert_eq!(
        running(&orrery),
        tasks,
        "the same two tasks RUNNING after SIGCONT"
    );
    assert_eq!(
        task_pids(&agents),
        pids,
        "the same two processes after SIGCONT"
    );
    for w in &webs {
        assert_eq!(
            agent_state(w)["master"].as_str(),
            Some(m.addrs[&now_leads].as_str()),
            "{w} attached to the leader"
        );
    }
    let lost = losses(&m, now_leads).await;
    assert!(lost.is_empty(), "lost after SIGCONT: {lost:?}");
    m.converged(&[1, 2, 3], Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_a_live_agents_id_or_hostname_is_refused_by_name() {
    let _serial = SERIAL.lock().await;
    let m = Masters::new(1, &flags());
    let web = format!("127.0.0.1:{}", free_port());
    m.start(1, &["--http", &web]);
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let mut first = AgentProc::on_host(&m, "host-1");
    first.start(&[], &[]);
    let orrery = cli(&m);
    let agent_ids = |orrery: &Cli| {
        let (_, out, _) = orrery(&["--json", "agent", "list"]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap_or("?").to_owned(),
                    a["state"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let id = eventually("the first agent registered", WAIT, || {
        let ids = agent_ids(&orrery);
        async move { (ids.len() == 1).then(|| ids[0].0.clone()) }
    })
    .await;
    // Its work dir copied to a second machine (same hostname, same id).
    let copy = AgentProc::on_host(&m, "host-1");
    std::fs::create_dir_all(copy.work().join("meta")).unwrap();
    copy_dir(&first.work().join("meta"), &copy.work().join("meta")).unwrap();
    let mut copy = copy;
    copy.start(&[], &[]);
    let refused = eventually("the copy refused by name", WAIT, || {
        let l = copy.logs();
        async move { l.contains("agent_id_in_use").then_some(l) }
    })
    .await;
    assert!(refused.contains(&id), "{refused}");
    // A while later: still one agent, the first, registered; no flapping.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = agent_ids(&orrery);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].0, id);
    assert!(now[0].1.contains("REGISTERED"), "{now:?}");
    // A second agent (its own, fresh work dir) claiming the live agent's
    // hostname: refused by name too, and the first is not evicted.
    let mut second = AgentProc::on_host(&m, "host-1");
    second.start(&[], &[]);
    let refused = eventually("the second agent on host-1 refused by name", WAIT, || {
        let l = second.logs();
        async move { l.contains("hostname_in_use").then_some(l) }
    })
    .await;
    assert!(refused.contains("already runs live agent"), "{refused}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = agent_ids(&orrery);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].0, id);
    assert!(now[0].1.contains("REGISTERED"), "{now:?}");
    let metrics = http(&web, "GET", "/metrics", "");
    for reason in ["agent_id_in_use", "hostname_in_use"] {
        assert!(
            metrics.contains(&format!(
                "orrery_agent_registrations_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if e.file_name() != "lock" {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Each direction of the agent's link to the master cut alone, through a
/// proxy, healed before and after the ping budget (Mesos'
/// `OneWayPartitionTest`). The job's partition policy waits 60 s, longer
/// than any cut: the same task keeps running, one process, never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_cuts_of_the_agent_link_heal_with_no_task_lost_or_duplicated() {
    let _serial = SERIAL.lock().await;
    let m = Masters::new(1, &flags());
    m.start_all();
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let orrery = cli(&m);
    // Serving first: a master that is not yet names itself as the leader,
    // by its own address, and the agent would follow that past the proxy.
    eventually("the master serving", WAIT, || {
        let (code, _, _) = orrery(&["agent", "list"]);
        async move { (code == Some(0)).then_some(()) }
    })
    .await;
    let proxy = common::proxy::Proxy::start(m.addrs[&1].clone()).await;
    let web = format!("127.0.0.1:{}", free_port());
    let mut agent = AgentProc::on_host(&m, "host-1");
    agent.masters = proxy.addr.clone();
    agent.start(&["--http", &web], &[]);
    eventually("the agent attached through the proxy", WAIT, || {
        let through = agent_state(&web)["master"].as_str() == Some(proxy.addr.as_str());
        async move { through.then_some(()) }
    })
    .await;
    let tasks = create_web(&orrery, 1, "[partition_policy]\ndelay = \"60s\"\n").await;
    let agents = [agent];
    let pids = eventually("its process", WAIT, || {
        let p = task_pids(&agents);
        async move { (p.len() == 1).then_some(p) }
    })
    .await;
    let cuts = [
        (
            "master -> agent",
            &proxy.down_cut,
            Duration::from_millis(1500),
        ),
        ("master -> agent", &proxy.down_cut, Duration::from_secs(8)),
        (
            "agent -> master",
            &proxy.up_cut,
            Duration::from_millis(1500),
        ),
        ("agent -> master", &proxy.up_cut, Duration::from_secs(8)),
    ];
    for (what, cut, long) in cuts {
        cut.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(long).await;
        cut.store(false, std::sync::atomic::Ordering::SeqCst);
        eventually(
            &format!("after a {long:?} cut of {what}: the agent attached, its task RUNNING"),
            WAIT,
            || {
                let attached = agent_state(&web)["attached"] == true;
                let r = running(&orrery);
                let want = tasks.clone();
                async move { (attached && r == want).then_some(()) }
            },
        )
        .await;
        assert_eq!(
            task_pids(&agents),
            pids,
            "after a {long:?} cut of {what}: the same one process"
        );
        let (_, out, _) = orrery(&["--json", "job", "status", "www/prod/web"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(
            v["instances"].as_array().map_or(0, |a| a.len()),
            1,
            "after a {long:?} cut of {what}: {out}"
        );
    }
    // The long cuts passed the ping budget: the master marked the agent
    // unreachable and took it back, and no task ended on the way.
    let events = m.read_all(1).await;
    let names: Vec<String> = events
        .iter()
        .filter_map(|e| orrery_events::codec::decode(&e.payload).ok())
        .filter_map(|env| {
            env.payload
                .map(|p| orrery_events::codec::event_name(&p).to_owned())
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "AgentUnreachable"),
        "a cut past the ping budget marks the agent unreachable: {names:?}"
    );
    let lost = losses(&m, 1).await;
    assert!(
        lost.iter()
            .all(|l| l.starts_with("AgentUnreachable") || l.ends_with("TASK_UNREACHABLE")),
        "no task ended: {lost:?}"
    );
}

/// Kill -9 an agent, wipe its work dir, start it again with the same flags:
/// it registers as a new agent and the instance is replaced — and the old
/// executor and its task do not run on, unknown, beside the replacement
/// (the executor sees its task dir gone; the new agent stops executors its
/// checkpoint does not know).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_work_dir_leaves_no_second_copy_of_a_task_running() {
    let _serial = SERIAL.lock().await;
    let m = Masters::new(1, &flags());
    m.start_all();
    m.leader_among(&[1], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", m.logs()));
    let mut agent = AgentProc::on_host(&m, "host-1");
    agent.start(&[], &[]);
    let orrery = cli(&m);
    let first = create_web(&orrery, 1, "").await;
    let agents = [agent];
    eventually("its process", WAIT, || {
        let p = pids_in(agents[0].dir.path());
        async move { (!p.is_empty()).then_some(()) }
    })
    .await;
    let [mut agent] = agents;
    agent.kill9();
    std::fs::remove_dir_all(agent.work()).unwrap();
    agent.start(&[], &[]);
    let second = eventually("a replacement RUNNING", WAIT, || {
        let r = running(&orrery);
        let first = first.clone();
        async move { (r.len() == 1 && r != first).then_some(r) }
    })
    .await;
    // One process of the instance under the agent's dir: the replacement's.
    let agents = [agent];
    eventually("exactly one task process under the agent", WAIT, || {
        let sleeping: Vec<u32> = pids_in(agents[0].dir.path())
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("sleep"))
            })
            .collect();
        async move { (sleeping.len() == 1).then_some(()) }
    })
    .await;
    let old_executors = orrery_actors::agent::procinfo::find_by_cmdline(&first[0]);
    assert!(
        old_executors.is_empty(),
        "the old task's executor still runs: {old_executors:?} (new task {second:?})"
    );
}
